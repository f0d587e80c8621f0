"""Backpropagation through time: tanh RNN vs GRU vs LSTM on long-range tasks.

For each task, cell and sequence length T one population trains seeds x
{no clipping, global-norm clipping at 1}; separate runs train the LSTM with
truncated BPTT: k1 = k2 shorter than the dependency, and TBPTT(k1, k2) whose
backward window k2 spans it. A member *solves* the task when its
validation-selected checkpoint makes < 1% errors on fresh test sequences
(the criterion of Pascanu, Mikolov & Bengio 2013): temporal order accuracy >
0.99; adding problem: > 99% of sequences with squared error <= 0.04 on the
target (X1 + X2) / 2, i.e. within 0.4 of our target X1 + X2 (Pascanu's code).

Expected (Pascanu et al. 2013; Hochreiter & Schmidhuber 1997): the tanh RNN
fails as T grows unless clipped, and often even then; LSTM and GRU solve;
truncation shorter than the dependency fails whatever the cell.

Gradient flow: at initialisation, ||dL/dh_t|| against the lag T - t for each
cell (and the tanh RNN at several spectral radii) on the longest temporal-order
sequences: the tanh RNN's gradient decays geometrically with the lag below
radius 1 and grows above it; the LSTM's cell path carries it. The same profile
after training, for each cell's best member (by validation loss): what the
learned weights do to the flow, e.g. whether training opened a path back to the
markers.

Our budget is much smaller than the papers' (up to ``epochs x num_train``
sequences, here 1e5 in the full run (3e5 for adding), against Pascanu's several million), so
"fails" means "fails within this budget".
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from research import results
from research.analysis.gradients import carry_gradient_norms, layer_params, step_jacobian_norms
from research.data import load_dataset
from research.experiments import register
from research.experiments.common import train_variant, variant_config, write_report
from research.models import build_model
from research.models.cells import make_cell
from research.tasks import make_task
from research.train import load_trained

SOURCE = 'Pascanu et al. 2013 (criterion < 1% test error; expected outcome, no number)'
CELLS = {'elman': 'tanh RNN', 'gru': 'GRU', 'lstm': 'LSTM'}
SUCCESS_METRIC = {'temporal_order': 'test/accuracy', 'adding': 'test/within_tol'}
BUDGETS = {
    # task -> lengths; truncation runs: (task, T, k1, k2), k2 = 0 meaning k2 = k1
    'full': dict(grid={'temporal_order': (50, 100, 200), 'adding': (100,)},
                 truncation=[('temporal_order', 100, 25, 0), ('temporal_order', 100, 25, 100)],
                 seeds='0,1,2',
                 overrides={'data.num_train': 5000, 'train.epochs': 20, 'train.patience': 0},
                 # At 2000 updates nobody solved adding at T=100: it gets 6000.
                 task_overrides={'adding': {'data.num_train': 10000, 'train.epochs': 30}}),
    'smoke': dict(grid={'temporal_order': (20,), 'adding': (20,)},
                  truncation=[('temporal_order', 20, 5, 0)], seeds='0,1',
                  overrides={'data.num_train': 1000, 'train.epochs': 3, 'train.patience': 0}),
}
HIDDEN = 32


def _arg(task, cell, T, trunc=0, k2=0):
  return f'task={task},cell={cell},T={T},hidden={HIDDEN},trunc={trunc}' + (f',k2={k2}' if k2 else '')


@register('bptt')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  over = dict(b['overrides'], population=f'seed={b["seeds"]} optim.clip_norm=0,1',
              **{'train.progress': budget == 'full'})
  rows, detail, trained = [], [], {}
  t0 = time.time()
  T_max = max(b['grid']['temporal_order'])

  def record(task, cell, T, trunc, out):
    metric = SUCCESS_METRIC[task]
    for clip in (0.0, 1.0):
      ms = [m for m in out['members'] if m['hparams']['optim.clip_norm'] == clip]
      solved = [float(m[metric] > 0.99) for m in ms]  # a diverged member has not solved it
      bptt = 'full BPTT' if not trunc else f'TBPTT {trunc}'
      name = f'{task} T={T} {CELLS[cell]} {"clip 1" if clip else "no clip"} {bptt}'
      rows.append(results.row(name, 'success_rate', solved, None, SOURCE))
      detail.append({'task': task, 'T': T, 'cell': cell, 'clip': clip, 'truncation': trunc,
                     'success_rate': float(np.mean(solved)),
                     'test_metric': [m[metric] for m in ms],
                     'diverged': sum(m['diverged'] for m in ms),
                     'best_epoch': [m['best_epoch'] for m in ms]})

  for task, lengths in b['grid'].items():
    for T in lengths:
      for cell in CELLS:
        wd = workdir / f'{task}_T{T}_{cell}'
        task_over = {**over, **b.get('task_overrides', {}).get(task, {})}
        out = train_variant('configs/synthetic.py', _arg(task, cell, T), wd, **task_over)
        record(task, cell, T, '', out)
        if task == 'temporal_order' and T == T_max:  # reloaded for the trained profiles
          config = variant_config('configs/synthetic.py', _arg(task, cell, T), **task_over)
          trained[CELLS[cell]] = (config, wd, out['members'])
  for task, T, k, k2 in b['truncation']:
    out = train_variant('configs/synthetic.py', _arg(task, 'lstm', T, k, k2),
                        workdir / (f'{task}_T{T}_lstm_trunc{k}' + (f'_k2{k2}' if k2 else '')),
                        **over)
    record(task, 'lstm', T, f'k1={k}, k2={k2}' if k2 else f'k={k}', out)

  profiles = gradient_profiles(T_max)
  after, chosen = trained_profiles(trained)
  jacobians = jacobian_norms(trained, chosen)
  _plot_profiles({'at initialisation': profiles,
                  'after training (best member)': after},
                 T_max, workdir / 'gradient_vs_lag.png')
  _plot_success(detail, workdir / 'success.png')
  wall = time.time() - t0
  out = results.write(workdir / 'results.json', 'bptt', rows, budget=budget, wall_time_s=wall,
                      runs=detail, gradient_profiles={k: v.tolist() for k, v in profiles.items()},
                      trained_gradient_profiles={k: v.tolist() for k, v in after.items()},
                      trained_profile_members=chosen,
                      step_jacobian_norms={k: {w: v.tolist() for w, v in d.items()}
                                           for k, d in jacobians.items()})
  table = _success_table(detail)
  write_report(
      workdir, 'BPTT: tanh RNN, GRU and LSTM on long-range tasks',
      f'Budget `{budget}`: hidden {HIDDEN}, Adam lr 1e-3, batch 50, '
      f'{b["overrides"]["data.num_train"]} training sequences, up to '
      f'{b["overrides"]["train.epochs"]} epochs (task overrides: {b.get("task_overrides", {})}); '
      f'seeds {b["seeds"]}. Success rate = fraction of '
      'seeds whose validation-selected checkpoint makes < 1% test errors (Pascanu et al. 2013). '
      'Cells show success rate (mean test accuracy, or for adding the fraction of sequences '
      'within 0.4 of X1 + X2, Pascanu\'s squared error <= 0.04 on (X1 + X2) / 2).',
      [table, 'Gradient norm ||dL/dh_t|| against the lag T - t on temporal order with '
       f'T = {T_max} (mean over 100 fresh sequences), at initialisation and after training '
       '(per cell the member with the lowest validation loss, at its selected parameters):',
       _lag_table({'init': profiles, 'trained': after}, T_max),
       'Spectral norm of the step Jacobian d carry_t / d carry_(t-1) along one fresh test '
       'sequence (median and max over t; for the LSTM the carry is (c, y)):',
       _jacobian_table(jacobians)],
      {'gradient norm vs lag': 'gradient_vs_lag.png', 'success rates': 'success.png'}, wall)
  print(table)
  return out


def _lag_table(panels: dict[str, dict[str, np.ndarray]], T: int) -> str:
  """||dL/dh_t|| at a few lags, per model and panel."""
  lags = [lag for lag in (0, 10, 50, 100, 150, T - 1) if lag < T]
  lines = ['| model | when | ' + ' | '.join(f'lag {lag}' for lag in lags) + ' |',
           '|---|---|' + '---|' * len(lags)]
  for when, profiles in panels.items():
    for label, g in profiles.items():
      lines.append(f'| {label} | {when} | '
                   + ' | '.join(f'{g[T - 1 - lag]:.1e}' for lag in lags) + ' |')
  return '\n'.join(lines)


def _jacobian_table(jacobians: dict[str, dict]) -> str:
  lines = ['| model | init median | init max | trained median | trained max |',
           '|---|---|---|---|---|']
  for label, d in jacobians.items():
    cells = []
    for when in ('init', 'trained'):
      v = d.get(when)
      cells += ['—', '—'] if v is None else [f'{np.median(v):.3f}', f'{np.max(v):.3f}']
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _success_table(detail: list[dict]) -> str:
  lines = ['| task | T | BPTT | cell | no clip | clip 1 |', '|---|---|---|---|---|---|']
  keys = sorted({(d['task'], d['T'], d['truncation'], d['cell']) for d in detail},
                key=lambda k: (k[0], k[1], k[2], list(CELLS).index(k[3])))
  for task, T, trunc, cell in keys:
    cells = []
    for clip in (0.0, 1.0):
      d = next(d for d in detail if (d['task'], d['T'], d['truncation'], d['cell'], d['clip'])
               == (task, T, trunc, cell, clip))
      cells.append(f'{d["success_rate"]:.2f} ({np.mean(d["test_metric"]):.3f})'
                   + (f', {d["diverged"]} diverged' if d['diverged'] else ''))
    lines.append(f'| {task} | {T} | {trunc or "full"} | {CELLS[cell]} | '
                 + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def gradient_profiles(T: int, radii=(0.8, 1.0, 1.2), batch: int = 100) -> dict[str, np.ndarray]:
  """||dL/dh_t|| (t = 0..T-1) at initialisation for each cell on temporal order
  (for the LSTM h_t is its output y_t; gradients reach it through c as well)."""
  out = {}
  variants = [('lstm', {}, 'LSTM'), ('gru', {}, 'GRU')]
  variants += [('elman', {'spectral_radius': r}, f'tanh RNN, radius {r:g}') for r in radii]
  for cell, options, label in variants:
    c = variant_config('configs/synthetic.py', _arg('temporal_order', cell, T))
    c.model.rnn.cell_options = {**c.model.rnn.cell_options.to_dict(), **options}
    out[label] = _carry_profile(c, batch)
  return out


def trained_profiles(runs: dict[str, tuple], batch: int = 100) -> tuple[dict, dict]:
  """The same profiles for trained runs: {label: (config, workdir, members)} ->
  ({label: (T,) norms}, {label: the member used}). Per run, the member with the lowest
  validation loss (its validation-selected parameters) on fresh sequences."""
  profiles, chosen = {}, {}
  for label, (config, workdir, members) in runs.items():
    ok = [m for m in members if not m['diverged']]
    if not ok:
      continue
    best = min(ok, key=lambda m: m['val/loss'])
    _, _, _, state = load_trained(config, workdir)
    params = jax.tree.map(lambda a: a[best['member']], state.best_params)
    profiles[label] = _carry_profile(config.copy_and_resolve_references(), batch, params)
    chosen[label] = {'member': best['member'], 'hparams': best['hparams'],
                     'val_loss': best['val/loss'], 'test_accuracy': best.get('test/accuracy')}
  return profiles, chosen


def jacobian_norms(runs: dict[str, tuple], chosen: dict[str, dict]) -> dict[str, dict]:
  """Spectral norms of the step Jacobian d carry_t / d carry_{t-1} along one fresh test
  sequence, at initialisation and for the member `trained_profiles` chose:
  {label: {'init': (T,), 'trained': (T,)}}."""
  out = {}
  for label, (config, workdir, _) in runs.items():
    out[label] = {'init': _jacobian_norms(config.copy_and_resolve_references())}
    if label in chosen:
      _, _, _, state = load_trained(config, workdir)
      params = jax.tree.map(lambda a: a[chosen[label]['member']], state.best_params)
      out[label]['trained'] = _jacobian_norms(config.copy_and_resolve_references(), params)
  return out


def _jacobian_norms(c, params=None) -> np.ndarray:
  c.data.num_train, c.data.num_val, c.data.num_test = 1, 0, 1
  ds = load_dataset(c.data)
  x = jnp.asarray(ds.test['x'])
  if params is None:
    params = build_model(c.model, ds.info).init(jax.random.PRNGKey(0), x)['params']
  rnn = c.model.rnn
  cell = make_cell(rnn.cell, rnn.hidden, **rnn.cell_options.to_dict())
  xp, step, carry0 = cell.apply({'params': layer_params(params, 'layer0_fwd')}, x)
  return step_jacobian_norms(step, carry0(1), xp[0])


def _carry_profile(c, batch: int, params=None) -> np.ndarray:
  """Mean over ``batch`` fresh test sequences of ||dL/d h_t|| for each t, with the
  model's initial parameters or ``params``."""
  c.data.num_train, c.data.num_val, c.data.num_test = 1, 0, batch
  c.model.rnn.probe_carry = True
  ds = load_dataset(c.data)
  model = build_model(c.model, ds.info)
  task = make_task(c.task)
  x = jnp.asarray(ds.test['x'])
  variables = model.init(jax.random.PRNGKey(0), x)
  if params is not None:
    variables = {**variables, 'params': params}
  loss = lambda logits: task.per_example(
      logits, {'y': jnp.asarray(ds.test['y'])}, {'task.label_smoothing': 0.0})['loss'].mean()
  norms = carry_gradient_norms(lambda v: model.apply(v, x), variables, loss)
  # The LSTM carry is (c_t, h_t): take h_t, the output the next step and the loss see.
  if c.model.rnn.cell == 'lstm':
    return norms[next(k for k in norms if k.endswith('/1'))]
  return norms[next(iter(norms))]


def _plot_profiles(panels: dict[str, dict[str, np.ndarray]], T: int, path: Path | None):
  """||dL/dh_t|| against the lag T - t, one panel per entry of ``panels``, one colour
  per model in every panel. Returns the Figure."""
  from research.analysis import curves
  fig, axes = curves.new_figure(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
  labels = list(dict.fromkeys(k for p in panels.values() for k in p))
  color = {k: f'C{i}' for i, k in enumerate(labels)}  # one colour per model in every panel
  for ax, (title, profiles) in zip(axes[0], panels.items()):
    for label, g in profiles.items():
      lag = T - 1 - np.arange(len(g))
      ax.semilogy(lag, np.maximum(g, 1e-30), label=label, color=color[label])
    ax.set_xlabel('time lag T - t (steps)')
    curves.integer_ticks(ax.xaxis)
    ax.set_ylabel('||dL/dh_t|| (log scale)')
    ax.set_title(f'{title}, temporal order T = {T}', fontsize='medium')
    ax.grid(alpha=0.3, which='both')
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize='small')
  fig.suptitle('Gradient of the loss with respect to the hidden state against time lag')
  return curves.save(fig, path)


def _plot_success(detail: list[dict], path: Path | None):
  """Success rate over seeds against sequence length per task, cell and clipping
  (dashed: no clipping); one legend for all panels. Returns the Figure."""
  from research.analysis import curves
  tasks = sorted({d['task'] for d in detail})
  fig, axes = curves.new_figure(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
  handles = {}
  for ax, task in zip(axes[0], tasks):
    for i, cell in enumerate(CELLS):
      for clip, ls in ((0.0, '--'), (1.0, '-')):
        pts = sorted((d['T'], d['success_rate']) for d in detail if d['task'] == task
                     and d['cell'] == cell and d['clip'] == clip and not d['truncation'])
        if pts:
          label = f'{CELLS[cell]}, {"clip 1" if clip else "no clip"}'
          handles.setdefault(label, ax.plot(*zip(*pts), ls, marker='o', color=f'C{i}',
                                            label=label)[0])
    ax.set_title(f'{task}: success rate', fontsize='medium')
    ax.set_xlabel('sequence length T (steps)')
    curves.integer_ticks(ax.xaxis)
    ax.set_ylabel('success rate (fraction of seeds)')
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
  if handles:  # one legend for every panel: a cell absent from the last panel is still named
    fig.legend(list(handles.values()), list(handles), fontsize='small', loc='center left',
               bbox_to_anchor=(1.0, 0.5))
  return curves.save(fig, path)
