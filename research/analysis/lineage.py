"""The picture of a PBT run (``pbt.png``): each member's explored hyperparameters
against epochs, the copies (donor -> receiver) that changed them, and each
member's validation metric. Drawn from results.json (``hparams_trajectory``,
``pbt_lineage``, ``select_metric``) and the run's metrics.jsonl records."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from research.analysis import curves

COPY = dict(color='0.25', ls='--', lw=0.9, alpha=0.8, marker='o', fillstyle='none',
            markevery=[1], ms=4)
COPY_LABEL = 'copy: from the donor to the receiver (circle)'
_KEY_LABELS = {'optim.lr': 'learning rate', 'optim.weight_decay': 'weight decay',
               'optim.clip_norm': 'clip norm', 'optim.momentum': 'momentum',
               'train.input_noise': 'input noise std'}


def _record_key(select_metric: str) -> str:
  split, _, name = select_metric.partition('/')
  return f'train_eval/{name}' if split == 'train' else select_metric


def plot_pbt(results: dict, records: list[dict], path: str | Path | None = None,
             title: str = ''):
  """One panel per explored key (log scale for positive values): each member's value
  per evaluation (the value it trained with up to that evaluation, a step line), a
  dashed segment from the donor's value to the receiver's new one (circled) at
  each copy; then a panel of each member's validation metric, each copy a segment
  from the donor's value to the receiver's (circled) at that evaluation. Returns the Figure; writes it to ``path``."""
  members = results['members']
  keys = list(members[0].get('final_hparams') or {})
  lineage = results.get('pbt_lineage') or []
  metric = _record_key(results['select_metric'])
  fig, axes = curves.new_figure(len(keys) + 1, 1, figsize=(9, 3.2 * (len(keys) + 1)),
                                sharex=True, squeeze=False)
  axes = axes[:, 0]
  handles = {}
  traj = {m['member']: m.get('hparams_trajectory') or [] for m in members}
  for ax, key in zip(axes, keys):
    values = [t[key] for ts in traj.values() for t in ts]
    log = bool(values) and min(values) > 0
    for i, ts in traj.items():
      if ts:
        (line,) = ax.plot([t['epoch'] for t in ts], [t[key] for t in ts], color=f'C{i % 10}',
                          drawstyle='steps-pre', label=f'member {i}')
        handles.setdefault(line.get_label(), line)
    for n, e in enumerate(lineage):
      (line,) = ax.plot([e['epoch'], e['epoch']], [e['donor_hparams'][key], e['hparams'][key]],
                        label=COPY_LABEL if n == 0 else '_copy', **COPY)
      handles.setdefault(COPY_LABEL, line)
    if log:
      ax.set_yscale('log')
    name = _KEY_LABELS.get(key, key)
    ax.set_ylabel(f'{name} (log scale)' if log else name)
    ax.set_title(f'{name} per member (value trained with up to each evaluation)')
    ax.grid(alpha=0.3)
  ax = axes[-1]
  by_member: dict[int, list[tuple[int, float]]] = {}
  at: dict[tuple[int, int], float] = {}
  for r in records:
    v = r.get(metric)
    if v is not None and np.isfinite(v):
      by_member.setdefault(r['member'], []).append((r['epoch'], v))
      at[(r['member'], r['epoch'])] = v
  for i, pts in sorted(by_member.items()):
    pts.sort()
    (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f'C{i % 10}',
                      label=f'member {i}', marker='.' if len(pts) == 1 else None)
    handles.setdefault(line.get_label(), line)
  first = True
  for e in lineage:
    a, b = at.get((e['member'], e['epoch'])), at.get((e['from'], e['epoch']))
    if a is not None and b is not None:
      (line,) = ax.plot([e['epoch'], e['epoch']], [b, a], label=COPY_LABEL if first else '_copy',
                        **COPY)
      handles.setdefault(COPY_LABEL, line)
      first = False
  ax.set_ylabel(curves.metric_label(results['select_metric'].replace('train/', 'train_eval/')))
  ax.set_title('selection metric per member (at a copy: the donor\'s and the receiver\'s)')
  ax.grid(alpha=0.3)
  for ax in axes:
    ax.set_xlabel('epoch')
  curves.integer_ticks(axes[-1].xaxis)
  fig.suptitle(title or 'PBT: explored hyperparameters and validation metric per member')
  if handles:
    ordered = sorted(handles, key=lambda s: (s == COPY_LABEL, len(s), s))
    fig.legend([handles[k] for k in ordered], ordered, loc='upper center',
               bbox_to_anchor=(0.5, 0.0), ncols=min(4, len(ordered)), fontsize='small')
  return curves.save(fig, path)
