"""Learning curves read back from ``metrics.jsonl``, their plot, and the small
helpers every PNG of the lab is drawn with (axis labels with units, integer ticks
on count axes, figures outside pyplot)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / 'metrics.jsonl'
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def curve(workdir: str | Path, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, mean, std) of ``metric`` over members at each evaluation.

  Steps are those of member 0's clock (members share it unless frozen)."""
  by_epoch: dict[int, list[float]] = defaultdict(list)
  step_of: dict[int, int] = {}
  for r in read_metrics(workdir):
    if metric in r and not r.get('diverged'):
      by_epoch[r['epoch']].append(r[metric])
      step_of.setdefault(r['epoch'], r['step'])
  epochs = sorted(by_epoch)
  vals = [np.asarray(by_epoch[e]) for e in epochs]
  return (np.asarray([step_of[e] for e in epochs]),
          np.asarray([v.mean() for v in vals]), np.asarray([v.std() for v in vals]))


def metric_label(metric: str, scale: float = 1.0, task_kind: str | None = None) -> str:
  """Axis text with units for a ``metrics.jsonl`` key such as ``'val/accuracy'``:
  'validation accuracy (%)' for ``scale=100``; a loss gets the unit of its task kind."""
  split, _, name = metric.rpartition('/')
  text = _NAMES.get(name, name.replace('_', ' '))
  if split:
    text = f'{_SPLITS.get(split, split)} {text}'
  if name in _FRACTIONS:
    unit = '%' if scale == 100 else 'fraction'
  elif name in _ELBO_TERMS:
    unit = 'nats/image'
  elif name == 'loss':
    unit = _LOSS_UNITS.get(task_kind)
  else:
    unit = None
  return f'{text} ({unit})' if unit else text


_SPLITS = {'val': 'validation', 'train': 'training', 'train_eval': 'training (eval mode)',
           'test': 'test'}
_NAMES = {'accuracy': 'accuracy', 'seq_accuracy': 'sequence accuracy', 'nelbo': 'negative ELBO',
          'recon': 'reconstruction -log p(x|z)', 'kl': 'KL', 'mse': 'MSE',
          'within_tol': 'within tolerance', 'loss': 'loss'}
_FRACTIONS = ('accuracy', 'seq_accuracy', 'within_tol')
_ELBO_TERMS = ('nelbo', 'recon', 'kl')
_LOSS_UNITS = {'classify': 'nats/example', 'sequence_classify': 'nats/step',
               'multilabel_sequence': 'nats/frame', 'elbo': 'nats/image'}


def new_figure(nrows: int = 1, ncols: int = 1, **kw):
  """(Figure, axes) outside pyplot's global state, so nothing has to be closed and
  any backend is fine; ``Figure.savefig`` renders PNGs with Agg."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=kw.pop('figsize', None))
  return fig, fig.subplots(nrows, ncols, **kw)


def integer_ticks(axis) -> None:
  """Whole-number ticks only, for an axis that counts (trials, steps, units, lags)."""
  from matplotlib.ticker import MaxNLocator
  axis.set_major_locator(MaxNLocator(integer=True))


def save(fig, path: str | Path | None, dpi: int = 120):
  """Lay out and write ``fig`` to ``path`` (nothing written when ``path`` is None);
  legends placed outside the axes are kept inside the image. Returns ``fig``."""
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=dpi, bbox_inches='tight')
  return fig


def plot_curves(runs: dict[str, str | Path], metric: str, path: str | Path | None = None,
                title: str = '', scale: float = 1.0,
                references: dict[str, float | tuple[float, str | None] | None] | None = None,
                ylabel: str | None = None, reference_label: str = 'published'):
  """One line per run (mean over members, shaded ± std) against training steps, and
  for each run with a reference value, a dotted level in its colour labelled
  '<run>: <reference_label> (<source>)' (``references[name]`` is a value or
  ``(value, source)``). Returns the Figure; writes it to ``path`` when given."""
  fig, ax = new_figure(figsize=(8.5, 5))
  ylabel = ylabel or metric_label(metric, scale)
  lines, levels = [], []
  for i, (name, wd) in enumerate(runs.items()):
    steps, mean, std = curve(wd, metric)
    color = f'C{i}'
    lines += ax.plot(steps, mean * scale, label=name, color=color,
                     marker='o' if len(steps) == 1 else None)
    ax.fill_between(steps, (mean - std) * scale, (mean + std) * scale, alpha=0.2, color=color)
    ref = (references or {}).get(name)
    value, source = ref if isinstance(ref, (tuple, list)) else (ref, None)
    if value is not None:
      levels.append(ax.axhline(value * scale, color=color, ls=':', lw=1.2,
                               label=f'{name}: {reference_label}' +
                               (f' ({source})' if source else '')))
  ax.set_xlabel('training step')
  integer_ticks(ax.xaxis)
  ax.set_ylabel(ylabel)
  ax.set_title(title or f'{ylabel} (mean ± std over members)')
  ax.grid(alpha=0.3)
  if lines:  # below the plot: the runs in the left column, the published levels in the right
    ax.legend(handles=lines + levels, loc='upper center', bbox_to_anchor=(0.5, -0.13),
              ncols=2 if levels else min(3, len(lines)), fontsize='small')
  return save(fig, path)
