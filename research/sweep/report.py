"""What a sweep writes: trials table (CSV + Markdown), best-so-far plot,
hyperparameter importance, the best config as a command line, results.json."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import optuna

from research import results
from research.sweep import space as space_lib

TrialState = optuna.trial.TrialState


def _atomic_write(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def trial_records(study: optuna.Study, space: Mapping[str, Any]) -> list[dict[str, Any]]:
  t0 = _start_time(study)
  out = []
  for t in study.get_trials(deepcopy=False):
    if t.state == TrialState.WAITING:
      continue
    done = t.datetime_complete
    out.append({
        'number': t.number, 'state': t.state.name,
        'value': t.value if t.state == TrialState.COMPLETE else None,
        **{f'params.{k}': v for k, v in space_lib.decode(space, t.params).items()},
        **{f'user.{k}': v for k, v in t.user_attrs.items() if k != 'worker'},
        'worker': t.user_attrs.get('worker', ''),
        'wall_s': (done - t0).total_seconds() if done and t0 else None})
  return out


def _start_time(study):
  starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
  return min(starts) if starts else None


def best_so_far(study: optuna.Study) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(trial count, wall seconds, best value so far) over completed trials in
  the order they completed."""
  t0 = _start_time(study)
  done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                key=lambda t: (t.datetime_complete, t.number))
  vals = np.asarray([t.value for t in done], float)
  best = (np.minimum.accumulate(vals) if study.direction == optuna.study.StudyDirection.MINIMIZE
          else np.maximum.accumulate(vals)) if len(vals) else vals
  wall = np.asarray([(t.datetime_complete - t0).total_seconds() for t in done], float)
  return np.arange(1, len(vals) + 1), wall, best


def importance(study: optuna.Study) -> dict[str, Any]:
  """fANOVA importances (Hutter et al. 2014) through Optuna, over completed trials."""
  try:
    imp = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    return {'fanova': {k: float(v) for k, v in imp.items()}}
  except Exception as e:  # noqa: BLE001 - too few trials, a single value, ...
    return {'fanova': {}, 'error': f'{type(e).__name__}: {e}'}


def override_flags(values: Mapping[str, Any]) -> list[str]:
  flags = []
  for k, v in values.items():
    text = repr(v) if isinstance(v, (tuple, list, str)) else f'{v:.6g}' if isinstance(v, float) else str(v)
    flags.append(f"--config.{k}={text!r}" if isinstance(v, (tuple, list)) else f'--config.{k}={text}')
  return flags


def write(study: optuna.Study, workdir: Path, space, config, config_ref: str,
          t_start: float) -> dict:
  workdir = Path(workdir)
  records = trial_records(study, space)
  cols = list(dict.fromkeys(k for r in records for k in r))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols)
  w.writeheader()
  for r in records:
    w.writerow({k: r.get(k, '') for k in cols})
  _atomic_write(workdir / 'trials.csv', buf.getvalue())
  shown = [c for c in cols if c not in ('worker',) and not c.startswith('user.point')]
  lines = ['| ' + ' | '.join(c.replace('params.', '').replace('user.', '') for c in shown) + ' |',
           '|' + '---|' * len(shown)]
  for r in records:
    lines.append('| ' + ' | '.join(_fmt(r.get(c)) for c in shown) + ' |')
  _atomic_write(workdir / 'trials.md', '\n'.join(lines) + '\n')

  counts = {s.name: 0 for s in TrialState}
  for t in study.get_trials(deepcopy=False):
    counts[t.state.name] += 1
  n, wall, best = best_so_far(study)
  imp = importance(study)
  _atomic_write(workdir / 'importance.json', json.dumps(imp, indent=2))
  plot_best_so_far({study.user_attrs.get('method', 'sweep'): [(n, wall, best)]},
                   workdir / 'best_so_far.png', study.user_attrs.get('metric', 'value'),
                   task_kind=getattr(getattr(config, 'task', None), 'kind', None))
  metric = study.user_attrs.get('metric', 'val/value').replace('/', '_')
  rows, best_info = [], None
  if counts['COMPLETE']:
    bt = study.best_trial
    values = space_lib.decode(space, bt.params)
    cmd = ('python scripts/train.py --config=' + (config_ref or '<config file>') +
           ' --workdir=runs/best \\\n    ' + ' \\\n    '.join(override_flags(values)))
    _atomic_write(workdir / 'best_config.txt', cmd + '\n')
    _atomic_write(workdir / 'best_overrides.json', json.dumps(values, indent=2, default=str))
    name = f'{config.experiment} best of {counts["COMPLETE"]} ({study.user_attrs.get("method")})'
    rows.append(results.row(name, metric, [bt.value]))
    test_key = 'test_' + metric.split('_', 1)[1]
    if test_key in bt.user_attrs:
      rows.append(results.row(name, test_key, [bt.user_attrs[test_key]]))
    best_info = {'number': bt.number, 'value': bt.value, 'params': values, 'command': cmd}
  pops, member_steps = programs(study)
  return results.write(
      workdir / 'results.json', f'sweep_{config.experiment}', rows,
      method=study.user_attrs.get('method'), metric=study.user_attrs.get('metric'),
      direction=study.direction.name.lower(), states=counts, best=best_info, importance=imp,
      best_so_far={'trials': n.tolist(), 'wall_s': wall.tolist(), 'best': best.tolist()},
      programs=len(pops), member_steps=member_steps,
      computed_member_steps=computed_steps(pops), populations=pops,
      worker_wall_s=time.time() - t_start,
      trials=[{k: v for k, v in r.items()} for r in records])


def programs(study: optuna.Study) -> tuple[list[dict[str, Any]], int | None]:
  """The training programs (`train_and_evaluate` runs) the sweep's finished trials
  (complete, pruned or failed) ran in, each run directory once: ``{'run', 'size'
  (members), 'kinds' (distinct structures), 'wall_s', 'member_steps'}`` (the last:
  rows x steps the program computed, stopped rows until they were compacted away;
  None for trials from before it was recorded); and the steps their members
  trained, summed over the trials whose run returned results (None for a study from
  before trials recorded their steps)."""
  pops: dict[str, dict[str, Any]] = {}
  steps, unknown = 0, False
  for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.FAIL)):
    a = t.user_attrs
    if 'run' in a:  # (population_size and population_wall_s: studies from before programs)
      pops[a['run']] = {'run': a['run'],
                        'size': a.get('program_members', a.get('population_size')),
                        'kinds': a.get('program_kinds', 1),
                        'wall_s': a.get('program_wall_s', a.get('population_wall_s')),
                        'member_steps': a.get('program_member_steps')}
    steps += int(a.get('member_steps', 0))
    unknown |= t.state in (TrialState.COMPLETE, TrialState.PRUNED) and 'member_steps' not in a
  return list(pops.values()), None if unknown else steps


def computed_steps(pops: list[dict[str, Any]]) -> int | None:
  """Member-steps the programs computed (`programs`' ``member_steps`` summed), None
  when a program did not record them."""
  if any(p.get('member_steps') is None for p in pops):
    return None
  return int(sum(p['member_steps'] for p in pops))


def _fmt(v) -> str:
  if v is None or v == '':
    return ''
  if isinstance(v, float):
    return f'{v:.4g}' if math.isfinite(v) else str(v)
  return str(v)


def plot_best_so_far(curves: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
                     path: Path | None, metric: str, title: str = '',
                     task_kind: str | None = None):
  """Best value so far against completed trials and against wall time, as steps
  (the best changes only when a trial completes); with several sweeps per method,
  the median and the range over them. ``metric`` is a metrics key ('val/nelbo')
  or a ready axis label. Returns the Figure; writes it to ``path`` when given."""
  from research.analysis import curves as curves_lib
  label = curves_lib.metric_label(metric, task_kind=task_kind) if '/' in metric else metric
  fig, axes = curves_lib.new_figure(1, 2, figsize=(11, 4))
  for i, (name, runs) in enumerate(curves.items()):
    color = f'C{i}'
    runs = [r for r in runs if len(r[0])]
    if not runs:
      continue
    length = min(len(r[0]) for r in runs)
    stack = np.stack([r[2][:length] for r in runs])
    x = np.arange(1, length + 1)
    axes[0].plot(x, np.median(stack, 0), color=color, drawstyle='steps-post',
                 marker='o' if length == 1 else None,
                 label=f'{name} (median of {len(runs)})' if len(runs) > 1 else name)
    if len(runs) > 1:
      axes[0].fill_between(x, stack.min(0), stack.max(0), color=color, alpha=0.2, step='post',
                           label=f'{name} (range)')
    for j, (_, wall, best) in enumerate(runs):
      axes[1].plot(wall, best, drawstyle='steps-post', color=color, alpha=0.8,
                   marker='o' if len(wall) == 1 else None,
                   label=name + (f' ({len(runs)} sweeps)' if len(runs) > 1 else '') if j == 0
                   else f'_{name} sweep {j}')
  axes[0].set_xlabel('trial (completed, in order of completion)')
  curves_lib.integer_ticks(axes[0].xaxis)
  axes[0].set_title('by completed trials')
  axes[1].set_xlabel('wall time (s)')
  axes[1].set_title('by wall time')
  for ax in axes:
    ax.set_ylabel(f'best {label} so far')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a sweep whose trials all failed draws no curve
      ax.legend(fontsize='small')
  fig.suptitle(title or f'Best {label} so far')
  return curves_lib.save(fig, path, dpi=110)
