"""Grid vs random vs Bayesian search at equal trial budgets on the digits VAE.

Bergstra & Bengio 2012 ("Random Search for Hyper-Parameter Optimization",
JMLR): when few hyperparameters matter, random search at the budget of a grid
finds configurations at least as good, because it tries more distinct values
of the ones that matter. Bayesian optimisation (here Optuna's TPE, Bergstra et
al. 2011) should reach a given ELBO in fewer trials. The space is
`configs/vae_digits.py:get_search_space('hpo')`: learning rate, beta, latent
size, hidden size and optimizer (SGD's momentum conditional). Each method runs
``trials`` trials per sweep seed (the seed drives the sampler and the models'
initialisation; grid points are the same for every seed); the objective is the
validation negative ELBO of each trial's best epoch. With the same sweep seed,
TPE's random start-up trials (the first batch) are the random sweep's first draws: a
paired comparison in which the two differ only where TPE starts to model. Reported: best-so-far
curves (median and range over seeds) against trials and wall time, the best
value at the full budget, the trials needed to come within 1 nat of the best
value any sweep found, fANOVA importances of the random sweeps, and the wall
time saved by training a batch of trials as one vmapped population rather
than one by one (numeric-only space, the same trials both ways).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from research import cli, results
from research.experiments import register
from research.experiments.common import variant_config, write_report
from research.sweep import report as sweep_report
from research.sweep import runner

METHODS = ('grid', 'random', 'bayes')
BUDGETS = {
    'full': dict(trials=32, seeds=(0, 1, 2), epochs=30, batch=8, speed_trials=8),
    'smoke': dict(trials=3, seeds=(0,), epochs=1, batch=3, speed_trials=2),
}
MARGIN = 1.0  # nats above the best value found by any sweep


def _config(seed: int, epochs: int):
  return variant_config('configs/vae_digits.py', f'epochs={epochs},patience=0', seed=seed,
                        population='', **{'train.progress': False})


def trials_to_target(best: list[float], target: float) -> int | None:
  for i, v in enumerate(best):
    if v <= target:
      return i + 1
  return None


def _space(name: str):
  return cli.load_config_module('configs/vae_digits.py').get_search_space(name)


@register('hpo_compare')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  space = _space('hpo')
  sweeps: dict[str, list[dict]] = {m: [] for m in METHODS}
  for seed in b['seeds']:
    for method in METHODS:
      out = runner.run_sweep(_config(seed, b['epochs']), space, method, b['trials'],
                             workdir / f'{method}_seed{seed}', batch=b['batch'], seed=seed,
                             config_ref=f'configs/vae_digits.py:epochs={b["epochs"]},patience=0')
      sweeps[method].append(out)
  finals = {m: [s['best_so_far']['best'][-1] for s in runs if s['best_so_far']['best']]
            for m, runs in sweeps.items()}
  best_any = min(v for vals in finals.values() for v in vals)
  target = best_any + MARGIN
  rows, summary = [], {}
  for m, runs in sweeps.items():
    reach = [trials_to_target(s['best_so_far']['best'], target) for s in runs]
    tests = [next((r['value'] for r in s['rows'] if r['metric'].startswith('test_')), np.nan)
             for s in runs if s['best']]
    rows.append(results.row(f'{m} ({b["trials"]} trials)', 'best_val_nelbo', finals[m]))
    rows.append(results.row(f'{m} ({b["trials"]} trials)', 'test_nelbo_of_best', tests))
    got = [r for r in reach if r is not None]
    if got:
      rows.append(results.row(f'{m} ({b["trials"]} trials)', 'trials_to_target', got))
    summary[m] = {'final_best': finals[m], 'trials_to_target': reach,
                  'failed': [s['states']['FAIL'] for s in runs],
                  'wall_s': [s['worker_wall_s'] for s in runs],
                  'programs': [sweep_programs(s) for s in runs],
                  'member_steps': [s.get('member_steps') for s in runs]}
  imps = [s['importance']['fanova'] for s in sweeps['random'] if s['importance'].get('fanova')]
  keys = sorted({k for i in imps for k in i})
  importance = {k: float(np.mean([i.get(k, 0.0) for i in imps])) for k in keys}
  curves = {m: [(np.asarray(s['best_so_far']['trials']), np.asarray(s['best_so_far']['wall_s']),
                 np.asarray(s['best_so_far']['best'])) for s in runs] for m, runs in sweeps.items()}
  sweep_report.plot_best_so_far(curves, workdir / 'best_so_far.png',
                                'validation negative ELBO (nats/image)',
                                f'Digits VAE, {b["trials"]} trials per sweep, '
                                f'{len(b["seeds"])} sweep seeds')
  speed = _population_speedup(workdir, b)
  rows.append(results.row(f'{b["speed_trials"]} trials as one population vs one by one',
                          'population_speedup', [speed['speedup']]))
  wall = time.time() - t0
  sweeps_wall = float(sum(w for s in summary.values() for w in s['wall_s']))
  totals = {'programs': sum(p for s in summary.values() for p in s['programs']),
            'member_steps': _total([n for s in summary.values() for n in s['member_steps']]),
            'sweeps': sum(len(s['programs']) for s in summary.values()),
            'sweeps_wall_s': sweeps_wall}
  out = results.write(workdir / 'results.json', 'hpo_compare', rows, budget=budget,
                      wall_time_s=wall, target=target, margin=MARGIN, methods=summary,
                      totals=totals, importance=importance, population_speed=speed)
  lines = ['| method | best val -ELBO (median, range) | trials to target (per seed) | '
           'failed trials | programs | member-steps | wall (s) |',
           '|---|---|---|---|---|---|---|']
  for m in METHODS:
    s, f = summary[m], np.asarray(finals[m])
    lines.append(f'| {m} | {np.median(f):.2f} ({f.min():.2f} .. {f.max():.2f}) | '
                 f'{s["trials_to_target"]} | {s["failed"]} | '
                 f'{", ".join(map(str, s["programs"]))} | '
                 f'{", ".join("—" if n is None else str(n) for n in s["member_steps"])} | '
                 f'{", ".join(f"{w:.0f}" for w in s["wall_s"])} |')
  steps = '' if totals['member_steps'] is None else f', {totals["member_steps"]} member-steps'
  write_report(
      workdir, 'Grid vs random vs Bayesian search (digits VAE)',
      f'Budget `{budget}`: {b["trials"]} trials per sweep, sweep seeds {list(b["seeds"])}, '
      f'{b["epochs"]} epochs per trial, batches of {b["batch"]} asked trials, each batch '
      f'trained in as few programs as the cost model finds fastest (trials of different '
      f'latent size, hidden size or optimizer may share one; programs, member-steps and wall '
      f'time per sweep seed in the table). The {totals["sweeps"]} sweeps trained '
      f'{totals["programs"]} programs{steps} in {sweeps_wall:.0f} s of wall time. Target: '
      f'within {MARGIN:g} nat of the best validation value any sweep found ({target:.2f}).',
      ['\n'.join(lines),
       '**fANOVA importance** (mean over the random sweeps): ' +
       ', '.join(f'{k} {v:.2f}' for k, v in sorted(importance.items(), key=lambda kv: -kv[1])),
       f'**Population batching**: {b["speed_trials"]} random trials over (lr, beta) took '
       f'{speed["population_s"]:.0f} s as one population and {speed["one_by_one_s"]:.0f} s one '
       f'by one: {speed["speedup"]:.2f}x.',
       results.markdown_table(rows, digits=2)],
      {'best so far': 'best_so_far.png'}, wall)
  print('\n'.join(lines))
  return out


def sweep_programs(summary: dict) -> int:
  """The training programs a sweep ran: its summary's ``programs``, or (sweeps from
  before programs were counted) the number of populations it lists."""
  n = summary.get('programs')
  return int(n) if isinstance(n, (int, float)) else len(summary.get('populations', []))


def _total(values: list) -> int | None:
  """Sum of ``values``; None when any is unknown."""
  return None if any(v is None for v in values) else int(sum(values))


def _population_speedup(workdir: Path, b) -> dict:
  """The same random trials over a numeric space, batched vs one at a time
  (wall time from the first trial's start to the last one's completion, as the
  study stores it, so a resumed study reports its original timing)."""
  space = _space('small')
  walls = {}
  for name, batch in (('population', b['speed_trials']), ('one_by_one', 1)):
    out = runner.run_sweep(_config(0, b['epochs']), space, 'random', b['speed_trials'],
                           workdir / f'speed_{name}', batch=batch, seed=0)
    walls[name] = out['best_so_far']['wall_s'][-1]  # first start to last completion (stored)
  return {'population_s': walls['population'], 'one_by_one_s': walls['one_by_one'],
          'speedup': walls['one_by_one'] / walls['population'], 'trials': b['speed_trials']}
