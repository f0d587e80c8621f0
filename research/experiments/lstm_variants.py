"""The LSTM search-space study (Greff et al. 2017) on JSB Chorales, as populations.

Greff, Srivastava, Koutník, Steunebrink & Schmidhuber, "LSTM: A Search Space
Odyssey" (IEEE TNNLS 2017) trained 8 variants of the (peephole) LSTM with
random hyperparameter search and compared the best 10% of trials per variant
against vanilla with Welch's t-test; fANOVA attributed the variance of the
result to hyperparameters. Their findings on JSB Chorales (Sec. IV, Fig. 3):
no variant beats vanilla significantly; removing the forget gate (NFG) or the
output activation (NOAF) hurts most; coupling input and forget gate (CIFG) and
dropping peepholes (NP) are harmless; the learning rate matters most.

Here: random trials (learning rate, momentum, input-noise std; hidden size
from a short list) drawn independently per variant, trained with SGD +
momentum. All (variant, hidden size) kinds' trials train as one population of
mixed structure (`research.structure`) in one compiled program, in which each
kind steps at its own shapes (`research.groups`, ``train.groups='kinds'``: on 2
CPU cores faster than the cost model's padded groups, whose mixed cells pay for
gates and activations their members lack);
``max_programs`` trains padded programs instead (one mixed LSTM cell per
program, narrow members zero-padded). Each member ends where its solo run would. Per variant we report
the test NLL of the best 10% of trials by *validation* NLL, but at least 3 (our
12-24 trials per variant are far fewer than Greff's 200, so 10% alone would be 1-2),
Welch's t-test against vanilla on those trials, the epochs the best trials need
to reach a target validation NLL (convergence speed), and fANOVA importances
(Optuna's ``FanovaImportanceEvaluator``) over all trials.

The input gate on a long-range task: vanilla vs NIG vs CIFG on the adding
problem (T = 100), where an LSTM without input gate cannot keep the
irrelevant inputs out of its cell.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from research import results
from research.analysis import curves
from research import structure
from research.experiments import register
from research.experiments.common import train_variant, variant_config, write_report

VARIANTS = ('vanilla', 'NIG', 'NFG', 'NOG', 'NIAF', 'NOAF', 'NP', 'CIFG', 'FGR')
SOURCE = 'Greff et al. 2017, Fig. 3 (JSB): no variant significantly better than vanilla'
ANCHOR = 'Bai et al. 2018, Table 1: LSTM 8.45 (JSB test NLL)'
BUDGETS = {
    # Greff et al. trained to convergence: with 30 epochs (patience 5) the variants that
    # train fastest (NOAF) came out best. Greff drew hidden sizes from 20-200 units; we
    # search two sizes, 12 independent trials each per variant. The adding runs get 6000
    # updates: at 2000 none solved T=100.
    'full': dict(hidden=(32, 64), trials=12, epochs=100, patience=10, variants=VARIANTS,
                 adding=dict(T=100, num_train=10000, epochs=30, seeds='0,1,2')),
    # NOAF has vanilla's parameters, so the cost model puts the two in one (mixed) program.
    'smoke': dict(hidden=(16,), trials=4, epochs=2, patience=0,
                  variants=('vanilla', 'NIG', 'NOAF', 'CIFG'),
                  adding=dict(T=20, num_train=1000, epochs=2, seeds='0,1')),
}
TOP_FRACTION = 0.10  # Greff et al.'s best 10% of trials ...
MIN_TOP = 3  # ... but at least 3, so that Welch's t-test has two variances to compare


def sample_trials(n: int, seed: int = 0) -> list[dict[str, float]]:
  """Greff-style ranges: lr log-uniform [1e-3, 1] (SGD, batch 8), momentum
  1 - log-uniform [0.01, 1] (so 0 to 0.99), input-noise std uniform [0, 0.3]."""
  rng = np.random.default_rng(seed)
  return [{'optim.lr': float(10 ** rng.uniform(-3, 0)),
           'optim.momentum': float(1 - 10 ** rng.uniform(-2, 0)),
           'train.input_noise': float(rng.uniform(0, 0.3))} for _ in range(n)]


HPARAMS = ('optim.lr', 'optim.momentum', 'train.input_noise')
MEMBER_KEYS = (structure.VARIANT_KEY, 'model.rnn.hidden')  # what a kind sets per member


def _kind_trials(b: dict) -> dict[tuple[str, int], list[dict]]:
  """(variant, hidden) -> its trials, each {'seed', hparams...}: independent draws
  per (variant, size), as Greff et al. (fANOVA needs many distinct points). Draws
  and members' seeds both follow the variant's place in VARIANTS, so a variant
  trains the same trials whichever other variants a budget includes."""
  out = {}
  for h_index, hidden in enumerate(b['hidden']):
    for variant in b['variants']:
      v_index = VARIANTS.index(variant)
      sampled = sample_trials(b['trials'], seed=100 * h_index + v_index)
      out[(variant, hidden)] = [{'seed': 1000 * h_index + 100 * v_index + i, **t}
                                for i, t in enumerate(sampled)]
  return out


def _program_population(kinds: list[tuple[str, int]], trials: dict) -> str:
  """population (zip) of one program: every trial of each of ``kinds``, in order."""
  members = [(kind, t) for kind in kinds for t in trials[kind]]
  fmt = lambda v: f'{v:.6g}' if isinstance(v, float) else str(v)
  cols = {'seed': [t['seed'] for _, t in members],
          **{k: [t[k] for _, t in members] for k in HPARAMS},
          structure.VARIANT_KEY: [kind[0] for kind, _ in members],
          'model.rnn.hidden': [kind[1] for kind, _ in members]}
  return ' '.join(f'{k}={",".join(fmt(v) for v in vals)}' for k, vals in cols.items())


def plan_programs(b: dict, data_path: str | None = None,
                  max_programs: int = 0) -> list[list[tuple[str, int]]]:
  """The (variant, hidden) kinds each program holds. ``max_programs=0``: one program
  of every kind, trained with ``train.groups='kinds'`` (`research.groups`: inside it
  each kind steps at its own shapes). ``max_programs > 0``:
  padded programs (every member at its program's widest, mixed shape), as
  `structure.program_groups` partitions the kinds by its cost model (padded
  member-step FLOPs on the music data), merged where that costs least until at most
  ``max_programs`` are left."""
  import jax

  from research.train import load_dataset
  kinds = [(v, h) for h in b['hidden'] for v in b['variants']]
  if not max_programs:
    return [kinds]
  if max_programs >= len(kinds):
    return [[kind] for kind in kinds]
  config = _config(b, kinds, data_path)
  dataset = load_dataset(config.data)
  flops = lambda g: structure.padded_flops(
      config, [dict(zip(MEMBER_KEYS, kinds[i])) for i in g], dataset, keys=MEMBER_KEYS)
  groups = structure.program_groups(kinds, [b['trials']] * len(kinds), flops,
                                    devices=len(jax.devices()),
                                    steps=structure.program_steps(config, dataset),
                                    max_programs=max_programs)
  return [[kinds[i] for i in g] for g in groups]


def _config_args(b: dict, kinds: list[tuple[str, int]], data_path: str | None,
                 trials: dict | None = None) -> tuple[str, dict]:
  """configs/music.py's arg and overrides of the program holding ``kinds``: SGD +
  momentum, batch 8, clip 1 (the config's), the budget's epochs and patience."""
  arg = f'cell=lstm,variant={kinds[0][0]},hidden={max(h for _, h in kinds)}'
  over = {'data.path': data_path, 'optim.name': 'sgd', 'population_mode': 'zip',
          'train.epochs': b['epochs'], 'train.patience': b['patience'],
          'train.progress': b.get('progress', False)}
  if trials is not None:
    over['population'] = _program_population(kinds, trials)
  return arg, over


def _config(b, kinds, data_path, trials=None):
  arg, over = _config_args(b, kinds, data_path, trials)
  return variant_config('configs/music.py', arg, **over)


@register('lstm_variants')
def run(workdir: str | Path, budget: str = 'full', data_path: str | None = None,
        max_programs: int = 0) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = dict(BUDGETS[budget], progress=budget == 'full')
  t0 = time.time()
  kind_trials = _kind_trials(b)
  programs = plan_programs(b, data_path, max_programs)
  trials = []  # one dict per trial: variant, hidden, hparams, val/test NLL, curve
  configs = {}  # program index -> (config, workdir)
  program_info = []
  for k, kinds in enumerate(programs):
    # A capped grouping trains other programs: its own directories, so that runs with
    # and without the cap share a workdir (and each resumes) without colliding.
    wd = workdir / (f'max{max_programs}_program_{k}' if max_programs else 'grouped')
    arg, over = _config_args(b, kinds, data_path, kind_trials)
    if not max_programs:
      over['train.groups'] = 'kinds'
    t_prog = time.time()
    out = train_variant('configs/music.py', arg, wd, **over)
    configs[k] = (variant_config('configs/music.py', arg, **over), wd)
    program_info.append({'program': k, 'workdir': wd.name,
                         'kinds': [{'variant': v, 'hidden': h} for v, h in kinds],
                         'members': sum(len(kind_trials[kind]) for kind in kinds),
                         'wall_time_s': time.time() - t_prog,
                         'member_steps': out.get('member_steps'),
                         # research.groups: which kinds stepped together inside the program
                         'groups': [[{'variant': kinds[i][0], 'hidden': kinds[i][1]}
                                     for i in g['kinds']] for g in out.get('groups') or []]})
    val_curves = _member_curves(wd, 'val/loss')
    slots = [(kind, i, t) for kind in kinds for i, t in enumerate(kind_trials[kind])]
    assert len(out['members']) == len(slots), (wd, len(out['members']), len(slots))
    for m, ((variant, hidden), i, t) in zip(out['members'], slots):
      assert m['hparams'].get('seed', t['seed']) == t['seed'], (wd, m['member'])
      trials.append({'variant': variant, 'hidden': hidden, 'program': k,
                     'member': m['member'], 'trial': i, 'seed': t['seed'],
                     **{key: m['hparams'][key] for key in HPARAMS},
                     **({'num_params': m['num_params']} if 'num_params' in m else {}),
                     'diverged': m['diverged'], 'val_nll': m['val/loss'],
                     'test_nll': m['test/loss'], 'best_epoch': m['best_epoch'],
                     'val_curve': [v for _, v in val_curves.get(m['member'], [])],
                     'val_epochs': [e for e, _ in val_curves.get(m['member'], [])]})
  train_wall = time.time() - t0
  analysis = analyse(trials, b['variants'])
  analysis['gates'] = best_trial_gates(trials, configs)
  adding = _adding_runs(workdir, b['adding'])
  wall = time.time() - t0

  rows = []
  for v in b['variants']:
    a = analysis['variants'][v]
    rows.append(results.row(f'{v} (best {a["n_top"]} of {a["n_trials"]})', 'test_nll',
                            a['top_test_nll'], 8.45 if v == 'vanilla' else None,
                            ANCHOR if v == 'vanilla' else SOURCE))
  for name, vals in adding['rows'].items():
    rows.append(results.row(name, 'adding_test_mse', vals))
  _plot_variants(analysis, b['variants'], workdir / 'variants.png',
                 reference=(8.45, 'Bai et al. 2018, LSTM'))
  last = b['hidden'][-1]
  curves.plot_curves(_variant_curve_dirs(workdir, trials, configs, last), 'val/loss',
                     workdir / 'curves.png',
                     title=f'JSB validation NLL, all trials at hidden {last} (mean ± std)',
                     ylabel='validation NLL (nats/frame)')
  n_kinds = len(b['variants']) * len(b['hidden'])
  member_steps = {k: sum((p['member_steps'] or {}).get(k, 0) for p in program_info)
                  for k in ('computed', 'uncompacted')}
  out = results.write(workdir / 'results.json', 'lstm_variants', rows, budget=budget,
                      wall_time_s=wall, train_wall_time_s=train_wall,
                      num_programs=len(programs), num_kinds=n_kinds, programs=program_info,
                      member_steps=member_steps,
                      analysis=analysis, adding=adding,
                      trials=[{k: v for k, v in t.items() if k not in ('val_curve', 'val_epochs')}
                              for t in trials])
  table = _variants_table(analysis, b['variants'])
  imp = analysis['importance']
  write_report(
      workdir, 'LSTM variants on JSB Chorales (Greff et al. 2017 protocol, scaled down)',
      f'Budget `{budget}`: {b["trials"]} random trials x hidden {list(b["hidden"])} per variant '
      f'(drawn independently per variant), SGD + momentum, batch 8, clip 1, up to '
      f'{b["epochs"]} epochs with early stopping on validation NLL. Test NLL per frame of the '
      f'best {TOP_FRACTION:.0%} (at least {MIN_TOP}) of trials by validation NLL; p: Welch t-test against vanilla '
      f'on those trials; epochs to target: median over them of the first epoch with validation '
      f'NLL <= {analysis["target_val_nll"]:.2f} (5% above vanilla\'s best).',
      [_programs_text(program_info, n_kinds, train_wall),
       table,
       *(['**Within each hidden size** (best trials at that size; p against vanilla at the '
          'same size):\n\n' + _sizes_table(analysis, b['variants'])]
         if 'by_hidden' in analysis else []),
       '**Hyperparameter importance** (fANOVA over all trials, Optuna): ' +
       ', '.join(f'{k} {v:.2f}' for k, v in imp.items()),
       '**Gate activations** of each variant\'s best trial on the test frames: mean '
       '(fraction < 0.1 / fraction > 0.9); a removed gate is constant 1:\n\n'
       + _gates_table(analysis['gates']),
       '**Input gate on a long-range task** (adding problem, test MSE; success = > 99% of '
       'sequences within 0.4 of X1 + X2, Pascanu et al. 2013\'s criterion):\n\n' + adding['table']],
      {'variants': 'variants.png', 'validation curves': 'curves.png'}, wall)
  print(table)
  return out


def _programs_text(program_info: list[dict], n_kinds: int, train_wall: float) -> str:
  """Which (variant, hidden) kinds each training program held, and the wall time."""
  grouped = [p for p in program_info if p.get('groups')]
  how = ('inside it each group of kinds stepped at its own shapes (`research.groups`)'
         if grouped else
         'kinds grouped into padded programs by the cost model '
         '(`research.structure.program_groups`)')
  lines = [f'**Training programs**: the {n_kinds} (variant, hidden) kinds trained as '
           f'{len(program_info)} program(s); {how}; every member ends where its solo run '
           f'(same seed and hyperparameters) ends. JSB training took {train_wall:.0f} s of '
           'wall time in all. Member-steps: computed (after compaction drops stopped members) '
           'and what the same programs would compute without compaction.', '',
           '| program | kinds (variant/hidden) | members | wall time | member-steps computed / uncompacted |',
           '|---|---|---|---|---|']
  fmt = lambda kinds: ', '.join(f'{k["variant"]}/{k["hidden"]}' for k in kinds)
  for p in program_info:
    ms = p.get('member_steps') or {}
    lines.append(f'| {p["workdir"]} | {fmt(p["kinds"])} | {p["members"]} | '
                 f'{p["wall_time_s"]:.0f} s | {ms.get("computed", 0)} / '
                 f'{ms.get("uncompacted", 0)} |')
  for p in grouped:
    lines += ['', f'Groups inside `{p["workdir"]}`: ' +
              '; '.join(f'[{fmt(g)}]' for g in p['groups'])]
  return '\n'.join(lines)


def _variant_curve_dirs(workdir: Path, trials: list[dict], configs: dict,
                        hidden: int) -> dict[str, Path]:
  """Per variant, a folder whose metrics.jsonl holds the records of that variant's
  trials at ``hidden`` (filtered from their programs' metrics.jsonl), for
  `curves.plot_curves`."""
  import json
  out = {}
  for variant in dict.fromkeys(t['variant'] for t in trials):
    mine = {(t['program'], t['member']) for t in trials
            if t['variant'] == variant and t['hidden'] == hidden}
    if not mine:
      continue
    d = workdir / 'curves' / f'{variant}_h{hidden}'
    d.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for k in sorted({p for p, _ in mine})
             for r in curves.read_metrics(configs[k][1]) if (k, r.get('member')) in mine]
    (d / 'metrics.jsonl').write_text(''.join(l + '\n' for l in lines))
    out[variant] = d
  return out


def best_trial_gates(trials: list[dict], configs: dict) -> dict[str, dict]:
  """Gate activation statistics (mean; fractions below 0.1 and above 0.9) of each
  variant's best trial by validation NLL, over the valid frames of the test split.
  The trial's own variables (`Setup.member_variables`: padding and the gates its
  variant lacks cut away) run through its own model (its solo config, with
  ``collect_gates``)."""
  import jax.numpy as jnp

  from research import checkpoint as ckpt_lib
  from research.analysis.gradients import gate_statistics
  from research.masks import length_mask
  from research.models import build_model
  from research.train import setup
  out, runs = {}, {}
  for variant in dict.fromkeys(t['variant'] for t in trials):
    ok = [t for t in trials if t['variant'] == variant and not t['diverged']
          and math.isfinite(t['val_nll'])]
    if not ok:
      continue
    best = min(ok, key=lambda t: t['val_nll'])
    config, wd = configs[best['program']]
    if best['program'] not in runs:
      run_ = setup(config)
      checkpointer = ckpt_lib.Checkpointer(Path(wd) / 'checkpoints', config.train.checkpoint_keep)
      try:
        restored = checkpointer.restore_latest(run_.init_state())
      finally:
        checkpointer.close()
      if restored is None:
        raise FileNotFoundError(f'No checkpoint in {Path(wd) / "checkpoints"}')
      runs[best['program']] = (run_, restored[1])
    run_, state = runs[best['program']]
    i = best['member']
    own = structure.member_config(config, run_.members[i], MEMBER_KEYS)
    own.model.rnn.collect_gates = True
    model = build_model(own.model, run_.dataset.info)
    variables = run_.member_variables(state, i)
    ds = run_.dataset
    x, lengths = jnp.asarray(ds.test['x']), jnp.asarray(ds.test['lengths'])
    _, inter = model.apply(variables, x, lengths=lengths, mutable=['intermediates'])
    mask = np.asarray(length_mask(lengths, x.shape[0], x.shape[1]))
    stats = gate_statistics(inter['intermediates'], mask=mask)  # the one recurrent layer
    out[variant] = {'hidden': best['hidden'], 'program': best['program'], 'member': i,
                    **{k.split('/')[-1]: v for k, v in stats.items()}}
  return out


def _gates_table(gates: dict[str, dict]) -> str:
  lines = ['| variant | input gate i | forget gate f | output gate o |', '|---|---|---|---|']
  for v, g in gates.items():
    cells = [f'{g[k]["mean"]:.2f} ({g[k]["frac_below_0.1"]:.0%} / {g[k]["frac_above_0.9"]:.0%})'
             for k in ('i', 'f', 'o')]
    lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _member_curves(workdir: Path, metric: str) -> dict[int, list[tuple[int, float]]]:
  """Per member, (epoch, value) of ``metric`` at each evaluation (every
  ``train.eval_every`` epochs)."""
  out: dict[int, list[tuple[int, float]]] = {}
  for r in curves.read_metrics(workdir):
    out.setdefault(r['member'], []).append((r['epoch'], r[metric]))
  return out


def analyse(trials: list[dict], variants, importance: bool = True) -> dict:
  """Top-trial statistics per variant, Welch t-tests, convergence speed, fANOVA; with
  several hidden sizes, also the top trials and t-tests within each size."""
  from scipy import stats
  ok = [t for t in trials if not t['diverged'] and math.isfinite(t['val_nll'])]
  by_variant = {v: sorted((t for t in ok if t['variant'] == v), key=lambda t: t['val_nll'])
                for v in variants}
  top = {v: ts[:max(MIN_TOP, math.ceil(TOP_FRACTION * len(ts)))] for v, ts in by_variant.items()}
  ref = [t['test_nll'] for t in top.get('vanilla', [])]
  target = 1.05 * min((t['val_nll'] for t in by_variant.get('vanilla', [])), default=np.inf)
  out = {'variants': {}, 'target_val_nll': float(target)}
  for v in variants:
    vals = [t['test_nll'] for t in top[v]]
    p = float(stats.ttest_ind(vals, ref, equal_var=False).pvalue) \
        if v != 'vanilla' and len(vals) > 1 and len(ref) > 1 else None
    # A trial's curve holds one value per evaluation; 'val_epochs' says at which epochs
    # (evaluations every epoch when absent).
    reach = [next((e for e, x in zip(t.get('val_epochs') or range(1, len(t['val_curve']) + 1),
                                     t['val_curve']) if x <= target), None)
             for t in top[v]]
    reached = [r for r in reach if r is not None]
    out['variants'][v] = {
        'n_trials': sum(t['variant'] == v for t in trials), 'n_top': len(vals),
        'n_diverged': sum(t['variant'] == v and t['diverged'] for t in trials),
        'top_test_nll': vals, 'all_test_nll': [t['test_nll'] for t in by_variant[v]],
        'top_hidden': [t['hidden'] for t in top[v]],
        'welch_p_vs_vanilla': p,
        'epochs_to_target': float(np.median(reached)) if reached else None,
        'reached_target': f'{len(reached)}/{len(reach)}'}
  sizes = sorted({t['hidden'] for t in ok})
  if len(sizes) > 1:  # the same comparison within each size: does width make up for a gate?
    out['by_hidden'] = {}
    for h in sizes:
      sub = analyse([t for t in trials if t['hidden'] == h], variants, importance=False)
      out['by_hidden'][h] = {v: {k: a[k] for k in ('n_top', 'top_test_nll', 'welch_p_vs_vanilla')}
                             for v, a in sub['variants'].items()}
  if importance:
    out['importance'] = fanova_importance(ok)
  return out


def fanova_importance(trials: list[dict]) -> dict[str, float]:
  """fANOVA importances of the hyperparameters (and the variant) for test NLL."""
  import optuna
  from optuna.distributions import CategoricalDistribution, FloatDistribution
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  if len(trials) < 4:
    return {}
  dists = {
      'variant': CategoricalDistribution(sorted({t['variant'] for t in trials})),
      'hidden': CategoricalDistribution(sorted({t['hidden'] for t in trials})),
      'lr': FloatDistribution(1e-3, 1.0, log=True),
      'momentum': FloatDistribution(0.0, 0.99),
      'input_noise': FloatDistribution(0.0, 0.3)}
  study = optuna.create_study(direction='minimize')
  for t in trials:
    params = {'variant': t['variant'], 'hidden': t['hidden'], 'lr': t['optim.lr'],
              'momentum': min(max(t['optim.momentum'], 0.0), 0.99),
              'input_noise': t['train.input_noise']}
    use = {k: d for k, d in dists.items() if len(getattr(d, 'choices', (0, 1))) > 1}
    study.add_trial(optuna.trial.create_trial(
        params={k: params[k] for k in use}, distributions=use, value=t['test_nll']))
  imp = optuna.importance.get_param_importances(
      study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
  return {k: float(v) for k, v in imp.items()}


def _variants_table(analysis: dict, variants) -> str:
  lines = ['| variant | test NLL, best trials | all trials (median) | p vs vanilla | '
           'epochs to target | diverged | hidden of best trials |', '|---|---|---|---|---|---|---|']
  for v in variants:
    a = analysis['variants'][v]
    p = '—' if a['welch_p_vs_vanilla'] is None else f'{a["welch_p_vs_vanilla"]:.3f}'
    e = '—' if a['epochs_to_target'] is None else f'{a["epochs_to_target"]:.0f}'
    median = f'{np.median(a["all_test_nll"]):.2f}' if a['all_test_nll'] else '—'
    lines.append(f'| {v} | {_mean_sd(a["top_test_nll"], 2)} '
                 f'(n={a["n_top"]}) | {median} | {p} | '
                 f'{e} ({a["reached_target"]}) | {a["n_diverged"]} | '
                 f'{", ".join(map(str, a.get("top_hidden", [])))} |')
  return '\n'.join(lines)


def _sizes_table(analysis: dict, variants) -> str:
  sizes = list(analysis['by_hidden'])
  lines = ['| variant | ' + ' | '.join(f'hidden {h}: best trials | p' for h in sizes) + ' |',
           '|---|' + '---|---|' * len(sizes)]
  for v in variants:
    cells = []
    for h in sizes:
      a = analysis['by_hidden'][h][v]
      p = a['welch_p_vs_vanilla']
      cells += [f'{_mean_sd(a["top_test_nll"], 2)} (n={a["n_top"]})',
                '—' if p is None else f'{p:.3f}']
    lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _sd(values) -> float:
  """Sample standard deviation (0 for a single value), as the other reports."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _mean_sd(values, digits: int) -> str:
  """'mean ± sample std' of ``values``; '—' when there are none (all diverged)."""
  if not len(values):
    return '—'
  return f'{np.mean(values):.{digits}f} ± {_sd(values):.{digits}f}'


def _adding_runs(workdir: Path, spec: dict) -> dict:
  rows, lines = {}, ['| LSTM | test MSE | success rate |', '|---|---|---|']
  for variant in ('vanilla', 'NIG', 'CIFG'):
    out = train_variant(
        'configs/synthetic.py', f'task=adding,cell=lstm,variant={variant},T={spec["T"]},hidden=32',
        workdir / f'adding_T{spec["T"]}_{variant}',
        **{'data.num_train': spec['num_train'], 'train.epochs': spec['epochs'],
           'population': f'seed={spec["seeds"]}', 'train.progress': False})
    ms = [m for m in out['members'] if not m['diverged']]
    mse = [m['test/mse'] for m in ms]
    success = np.mean([m['test/within_tol'] > 0.99 for m in ms]) if ms else 0.0
    name = f'adding T={spec["T"]} LSTM {variant}'
    rows[name] = mse
    shown = _mean_sd(mse, 4) if ms else f'— (all {len(out["members"])} members diverged)'
    lines.append(f'| {variant} | {shown} | {success:.2f} |')
  return {'rows': rows, 'table': '\n'.join(lines)}


def _plot_variants(analysis: dict, variants, path: Path | None,
                   reference: tuple[float, str] | None = None):
  """Test NLL of every trial (grey) and of the best trials (blue) per variant, and
  ``reference`` = (value, source) as a dotted level. Returns the Figure."""
  fig, ax = curves.new_figure(figsize=(8, 4))
  for i, v in enumerate(variants):
    a = analysis['variants'][v]
    ax.scatter(np.full(len(a['all_test_nll']), i), a['all_test_nll'], color='0.7', s=12,
               label='all trials' if i == 0 else None)
    ax.scatter(np.full(len(a['top_test_nll']), i), a['top_test_nll'], color='C0', s=18,
               label=f'best {TOP_FRACTION:.0%} (at least {MIN_TOP}) by validation NLL'
               if i == 0 else None)
  lo = min(min(analysis['variants'][v]['all_test_nll'], default=8) for v in variants)
  if reference is not None:
    ax.axhline(reference[0], color='k', ls=':', lw=1,
               label=f'published: {reference[1]} ({reference[0]:g})')
    lo = min(lo, reference[0])
  ax.set_xticks(range(len(variants)), variants)
  ax.set_xlabel('LSTM variant')
  ax.set_ylabel('test NLL (nats/frame)')
  ax.set_title('JSB Chorales: test NLL of every trial per LSTM variant')
  ax.grid(alpha=0.3)
  ax.set_ylim(lo - 0.2, lo + 6)
  ax.legend(fontsize='small', loc='upper right')
  return curves.save(fig, path)
