"""ASHA inside the population against Optuna's own pruners driving trials one by one.

Successive halving (Jamieson & Talwalkar 2016) and its asynchronous form ASHA
(Li et al. 2020) stop poor trials early: at rungs ``min * eta**k`` evaluations
only the best ``1/eta`` of the trials that got there go on. Our sweeps ask a
batch of trials, train it as the compiled populations `runner.plan_programs`
makes of it, and apply the rule over each program's member axis
(``scripts/sweep.py --pruner=asha``, ``train.prune=asha:...``, `research.pruning`:
synchronous, a program's members reach each rung together).
The usual way is Optuna's: each trial trains alone, reports its value after each
evaluation (``trial.report``) and stops when ``trial.should_prune()`` says so
(``SuccessiveHalvingPruner``, ``HyperbandPruner``), here ``--pruner=optuna_asha``
(`research.sweep.runner.optuna_pruner`: the same min resource and reduction
factor, in epochs).

Arms, over the ``hpo`` space of ``configs/vae_digits.py`` (learning rate, beta,
latent size, hidden size, optimizer, SGD's momentum), each with the same trials
(the sampler seed's planned random draws: every arm trains the same 32
configurations, so the arms differ only in which trials they stop and how they
run them) and the same sweep seeds:

* ``random``: unpruned random search, batches trained as populations;
* ``asha``: the same with ASHA inside each program's population;
* ``optuna_asha``: every trial alone, Optuna's ``SuccessiveHalvingPruner``;
* ``hyperband`` / ``optuna_hyperband``: Hyperband both ways (inside the
  population; Optuna's ``HyperbandPruner`` over trials one by one).

Reported per arm: the best validation negative ELBO of the completed trials
(median and range over sweep seeds) and the test value of that trial; the
trials completed / pruned / failed; member-steps (each trial's own training
steps summed, as the sweep's results.json ``member_steps``; and the rows x steps
the programs computed, ``computed_member_steps``, which counts stopped rows
until compaction drops them); wall time (first trial's start to the last one's
end). Targets (the spec's): in-population ASHA's median best within noise of
Optuna's (noise: the larger of the two arms' ranges over seeds), at most half of
Optuna's wall time, and at most 1/3 of the unpruned sweep's member-steps.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from research import cli, results
from research.experiments import register
from research.experiments.common import variant_config, write_report
from research.sweep import report as sweep_report
from research.sweep import runner

ARMS = {
    'random': 'random search, unpruned (populations)',
    'asha': 'ASHA inside the population',
    'optuna_asha': "Optuna's SuccessiveHalvingPruner, trials one by one",
    'hyperband': 'Hyperband inside the population',
    'optuna_hyperband': "Optuna's HyperbandPruner, trials one by one",
}
PAIRS = (('asha', 'optuna_asha'), ('hyperband', 'optuna_hyperband'))
BUDGETS = {
    'full': dict(trials=32, seeds=(0, 1, 2), epochs=30, eval_every=5, batch=32, eta=3, min=1,
                 arms=('random', 'asha', 'optuna_asha', 'hyperband', 'optuna_hyperband')),
    'smoke': dict(trials=4, seeds=(0,), epochs=3, eval_every=1, batch=4, eta=2, min=1,
                  arms=('random', 'asha', 'optuna_asha', 'hyperband')),
}
TARGETS = {'wall_ratio': 0.5, 'member_steps_ratio': 1 / 3}


def arm_settings(arm: str, b: dict) -> tuple[str, str]:
  """(train.prune, trial_pruner) of an arm under budget ``b``."""
  args = f'eta={b["eta"]},min={b["min"]}'
  if arm == 'random':
    return '', ''
  if arm.startswith('optuna_'):
    return '', f'{arm}:{args}'
  return f'{arm}:{args}', ''


BATCH_FILE = 'batch.json'  # the batch size the workdir's in-population sweeps were asked in


def check_batch(workdir: Path, batch: int) -> None:
  """Records ``batch`` in a new workdir; refuses one whose sweeps were asked in
  another batch size (their trials would resume or be reported as this one's), or
  whose sweeps predate the record. The one-by-one arms do not depend on the batch,
  but their wall times are only compared within one run, so a workdir holds one."""
  marker = workdir / BATCH_FILE
  if marker.exists():
    held = json.loads(marker.read_text())['batch']
    if held != batch:
      raise ValueError(f'{workdir} holds this study with batches of {held} asked trials '
                       f'(--population_size={held}), not {batch}; use --population_size={held} '
                       'to resume it, or another --workdir')
    return
  if any(d.is_dir() and '_seed' in d.name for d in workdir.iterdir()):
    raise ValueError(f'{workdir} holds sweeps whose batch size is not recorded ({BATCH_FILE}); '
                     'use another --workdir')
  marker.write_text(json.dumps({'batch': batch}) + '\n')


def _config(seed: int, b: dict, prune: str):
  return variant_config('configs/vae_digits.py', f'epochs={b["epochs"]},patience=0', seed=seed,
                        population='', **{'train.progress': False,
                                          'train.eval_every': b['eval_every'],
                                          'train.prune': prune})


def sweep_wall(summary: dict) -> float:
  """First trial's start to the last finished trial's end (complete, pruned or failed),
  from the trials' stored times, so a resumed study reports its original timing."""
  walls = [r['wall_s'] for r in summary.get('trials', []) if r.get('wall_s') is not None]
  return float(max(walls)) if walls else float('nan')


def _best_test(summary: dict) -> float:
  return next((r['value'] for r in summary.get('rows', []) if r['metric'].startswith('test_')),
              float('nan'))


def _spread(values) -> float:
  v = np.asarray([x for x in values if np.isfinite(x)], float)
  return float(v.max() - v.min()) if len(v) else float('nan')


def _median(values) -> float:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
  return float(np.median(v)) if len(v) else float('nan')


def _ratio(a, b) -> float:
  return float(a / b) if a is not None and b else float('nan')


def summarize(sweeps: dict[str, list[dict]]) -> tuple[dict, dict]:
  """Per arm (its sweeps' summaries, one per seed): best values, tests, states,
  member-steps, wall times; and the targets of each (in-population, one-by-one) pair
  present, against the unpruned arm."""
  arms: dict[str, dict[str, Any]] = {}
  for arm, runs in sweeps.items():
    best = [s['best']['value'] if s.get('best') else float('nan') for s in runs]
    arms[arm] = {
        'best': best, 'best_median': _median(best), 'best_range': _spread(best),
        'test_of_best': [_best_test(s) for s in runs],
        'complete': [s['states'].get('COMPLETE', 0) for s in runs],
        'pruned': [s['states'].get('PRUNED', 0) for s in runs],
        'failed': [s['states'].get('FAIL', 0) for s in runs],
        'member_steps': [s.get('member_steps') for s in runs],
        'computed_member_steps': [s.get('computed_member_steps') for s in runs],
        'wall_s': [sweep_wall(s) for s in runs],
        'worker_wall_s': [s.get('worker_wall_s') for s in runs],
        'programs': [s.get('programs') for s in runs]}
    for k in ('member_steps', 'computed_member_steps'):
      arms[arm][f'{k}_total'] = (None if any(n is None for n in arms[arm][k])
                                 else int(sum(arms[arm][k])))
    arms[arm]['wall_s_total'] = float(sum(arms[arm]['wall_s']))
  targets = {}
  base = arms.get('random')
  for pop, one in PAIRS:
    if pop not in arms or one not in arms:
      continue
    p, o = arms[pop], arms[one]
    noise = max(_spread(p['best']), _spread(o['best']))
    diff = p['best_median'] - o['best_median']
    t = {'best_difference': diff, 'noise': noise,
         'same_best': bool(abs(diff) <= noise) if np.isfinite(diff) else False,
         'wall_ratio': _ratio(p['wall_s_total'], o['wall_s_total'])}
    t['wall_ok'] = bool(t['wall_ratio'] <= TARGETS['wall_ratio'])
    if base is not None:
      t['regret_vs_unpruned'] = p['best_median'] - base['best_median']
      for k in ('member_steps', 'computed_member_steps'):
        t[f'{k}_ratio'] = _ratio(p[f'{k}_total'], base['member_steps_total'])
        t[f'{one}_{k}_ratio'] = _ratio(o[f'{k}_total'], base['member_steps_total'])
      t['member_steps_ok'] = bool(t['member_steps_ratio'] <= TARGETS['member_steps_ratio'])
    targets[f'{pop} vs {one}'] = t
  return arms, targets


def _space():
  return cli.load_config_module('configs/vae_digits.py').get_search_space('hpo')


@register('asha_compare')
def run(workdir: str | Path, budget: str = 'full', arms: tuple[str, ...] | None = None,
        population_size: int | None = None) -> dict:
  """``population_size``: asked trials per batch of the in-population arms (default:
  the budget's ``batch``; at most the trials; the planner may train a batch as
  several programs). A workdir holds one batch size (`check_batch`)."""
  workdir = Path(workdir)
  b = dict(BUDGETS[budget])
  if population_size is not None:
    if int(population_size) < 1:
      raise ValueError(f'population_size={population_size}: must be at least 1')
    b['batch'] = min(int(population_size), b['trials'])
  arms = tuple(arms or b['arms'])
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise ValueError(f'unknown arm(s) {unknown}; known: {list(ARMS)}')
  workdir.mkdir(parents=True, exist_ok=True)
  check_batch(workdir, b['batch'])
  t0 = time.time()
  space = _space()
  sweeps: dict[str, list[dict]] = {a: [] for a in arms}
  for seed in b['seeds']:
    for arm in arms:
      prune, trial_pruner = arm_settings(arm, b)
      ref = (f'configs/vae_digits.py:epochs={b["epochs"]},patience=0 '
             f'--config.train.eval_every={b["eval_every"]}' +
             (f" --config.train.prune='{prune}'" if prune else ''))
      out = runner.run_sweep(_config(seed, b, prune), space, 'random', b['trials'],
                             workdir / f'{arm}_seed{seed}', batch=b['batch'], seed=seed,
                             config_ref=ref, trial_pruner=trial_pruner)
      sweeps[arm].append(out)
  summary, targets = summarize(sweeps)
  curves = {ARMS[a]: [(np.asarray(s['best_so_far']['trials']),
                       np.asarray(s['best_so_far']['wall_s']),
                       np.asarray(s['best_so_far']['best'])) for s in runs]
            for a, runs in sweeps.items()}
  sweep_report.plot_best_so_far(curves, workdir / 'best_so_far.png',
                                'validation negative ELBO (nats/image)',
                                f'Digits VAE, {b["trials"]} trials per sweep, '
                                f'{len(b["seeds"])} sweep seeds')
  plot_cost(summary, workdir / 'cost.png')
  rows = []
  for a in arms:
    s = summary[a]
    rows.append(results.row(ARMS[a], 'best_val_nelbo', [v for v in s['best'] if np.isfinite(v)]))
    rows.append(results.row(ARMS[a], 'test_nelbo_of_best',
                            [v for v in s['test_of_best'] if np.isfinite(v)]))
    if s['member_steps_total'] is not None:
      rows.append(results.row(ARMS[a], 'member_steps', s['member_steps']))
    rows.append(results.row(ARMS[a], 'wall_s', s['wall_s']))
  for name, t in targets.items():
    for k in ('wall_ratio', 'member_steps_ratio', 'computed_member_steps_ratio'):
      if k in t and np.isfinite(t[k]):
        rows.append(results.row(name, k, [t[k]]))
  wall = time.time() - t0
  out = results.write(workdir / 'results.json', 'asha_compare', rows, budget=budget,
                      wall_time_s=wall, settings={k: v for k, v in b.items() if k != 'arms'},
                      arms=summary, labels={a: ARMS[a] for a in arms}, targets=targets,
                      target_thresholds=TARGETS)
  table = arms_table(summary, arms)
  write_report(
      workdir, 'ASHA inside the population vs Optuna\'s pruners one by one (digits VAE)',
      f'Budget `{budget}`: random search over the `hpo` space, {b["trials"]} trials per sweep '
      f'(the same planned draws in every arm for a sweep seed), sweep seeds '
      f'{list(b["seeds"])}, up to {b["epochs"]} epochs per trial, evaluated every '
      f'{b["eval_every"]} epoch(s); ASHA and Hyperband with eta={b["eta"]}, min={b["min"]} '
      f'evaluation(s) (Optuna: min_resource={b["min"] * b["eval_every"]} epochs, '
      f'reduction_factor={b["eta"]}); batches of {b["batch"]} asked trials, each trained as the '
      'programs `research.sweep.runner.plan_programs` makes of it. Member-steps: '
      'each trial\'s own training steps summed (in brackets: rows x steps the programs '
      'computed, stopped rows included until compaction). Wall: first trial\'s start to the '
      'last one\'s end, per sweep seed.',
      [table, targets_text(targets), results.markdown_table(rows, digits=2)],
      {'best so far': 'best_so_far.png', 'best value against cost': 'cost.png'}, wall)
  print(table)
  print(targets_text(targets))
  return out


def arms_table(summary: dict, arms) -> str:
  lines = ['| arm | best val -ELBO, median (range) | test -ELBO of best (median) | '
           'complete / pruned / failed | member-steps (computed) | wall (s) |',
           '|---|---|---|---|---|---|']
  for a in arms:
    s = summary[a]
    b = np.asarray([v for v in s['best'] if np.isfinite(v)])
    best = f'{np.median(b):.2f} ({b.min():.2f} .. {b.max():.2f})' if len(b) else '—'
    states = ', '.join(f'{c}/{p}/{f}' for c, p, f in zip(s['complete'], s['pruned'], s['failed']))
    steps = ', '.join('—' if n is None else f'{n}' + ('' if m is None else f' ({m})')
                      for n, m in zip(s['member_steps'], s['computed_member_steps']))
    lines.append(f'| {ARMS[a]} | {best} | {_median(s["test_of_best"]):.2f} | {states} | '
                 f'{steps} | {", ".join(f"{w:.0f}" for w in s["wall_s"])} |')
  return '\n'.join(lines)


def targets_text(targets: dict) -> str:
  if not targets:
    return '**Targets**: no (in-population, one-by-one) pair was run.'
  out = ['**Targets** (in-population arm against its one-by-one counterpart and the '
         'unpruned sweep):', '']
  mark = lambda ok: 'met' if ok else 'missed'
  for name, t in targets.items():
    line = (f'- {name}: median best differs by {t["best_difference"]:+.2f} nats (noise '
            f'{t["noise"]:.2f}: {mark(t["same_best"])}); wall time {t["wall_ratio"]:.2f}x '
            f'(target <= {TARGETS["wall_ratio"]:g}: {mark(t["wall_ok"])})')
    if 'member_steps_ratio' in t:
      line += (f'; member-steps {t["member_steps_ratio"]:.2f}x the unpruned sweep\'s (computed '
               f'{t["computed_member_steps_ratio"]:.2f}x; target <= 1/3: '
               f'{mark(t["member_steps_ok"])}); best {t["regret_vs_unpruned"]:+.2f} nats from '
               'the unpruned sweep\'s')
    out.append(line + '.')
  return '\n'.join(out)


def plot_cost(summary: dict, path: Path | None):
  """Best validation value against member-steps and against wall time, one point per
  arm and sweep seed. Returns the Figure."""
  from research.analysis import curves as curves_lib
  fig, axes = curves_lib.new_figure(1, 2, figsize=(11, 4))
  for i, (arm, s) in enumerate(summary.items()):
    steps = [np.nan if n is None else n for n in s['member_steps']]
    for ax, x in ((axes[0], steps), (axes[1], s['wall_s'])):
      ax.scatter(x, s['best'], color=f'C{i}', label=ARMS[arm])
  axes[0].set_xlabel('member-steps (each trial\'s training steps, summed)')
  axes[1].set_xlabel('sweep wall time (s)')
  for ax in axes:
    ax.set_ylabel('best validation -ELBO (nats/image)')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize='small')
  fig.suptitle('Best value against cost, one point per sweep seed')
  return curves_lib.save(fig, path, dpi=110)
