"""Learning curves read back from ``metrics.jsonl``, and their plot."""
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


def plot_curves(runs: dict[str, str | Path], metric: str, path: str | Path,
                title: str = '', scale: float = 1.0, references: dict[str, float] | None = None):
  """One line per run (mean over members, shaded ± std), optional reference levels."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8.5, 4.5))
  for i, (name, wd) in enumerate(runs.items()):
    steps, mean, std = curve(wd, metric)
    color = f'C{i}'
    ax.plot(steps, mean * scale, label=name, color=color)
    ax.fill_between(steps, (mean - std) * scale, (mean + std) * scale, alpha=0.2, color=color)
    if references and references.get(name) is not None:
      ax.axhline(references[name] * scale, color=color, ls=':', lw=1)
  ax.set_xlabel('training step')
  ax.set_ylabel(metric + (' (%)' if scale == 100 else ''))
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc='center left', bbox_to_anchor=(1.01, 0.5), fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
