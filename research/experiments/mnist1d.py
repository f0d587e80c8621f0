"""MNIST-1D benchmark (Greydanus & Kobak, 2020): linear, MLP, CNN, GRU, and a CNN-GRU hybrid.

Published test accuracies are those of the paper's benchmark figure
(Greydanus & Kobak 2020, "Scaling down deep learning", Fig. 3 / README table):
logistic regression 32%, MLP 68%, CNN 94%, GRU 91%; the hybrid has no
published number.
"""
from __future__ import annotations

import time
from pathlib import Path

from research import results
from research.analysis import curves
from research.experiments import register
from research.experiments.common import train_variant

SOURCE = 'Greydanus & Kobak 2020 (MNIST-1D), benchmark table'
MODELS = {  # variant -> (display name, published test accuracy)
    'linear': ('Linear', 0.32),
    'mlp': ('MLP', 0.68),
    'cnn': ('CNN', 0.94),
    'gru': ('GRU (bidir.)', 0.91),
    'cnn_gru': ('CNN-GRU hybrid', None),
}


@register('mnist1d')
def run(workdir: str | Path, budget: str = 'full', models: list[str] | None = None) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  models = models or list(MODELS)
  rows, runs, timing, extra = [], {}, {}, {}
  t0 = time.time()
  for variant in models:
    name, published = MODELS[variant]
    arg = f'model={variant}' + (',quick' if budget == 'smoke' else '')
    t = time.time()
    out = train_variant('configs/mnist1d.py', arg, workdir / variant)
    timing[name] = time.time() - t
    runs[name] = workdir / variant
    accs = [m['test/accuracy'] for m in out['members'] if not m['diverged']]
    rows.append(results.row(name, 'test_accuracy', accs, published,
                            SOURCE if published is not None else None))
    extra[name] = {'num_params': out['num_params'], 'first_epoch_s': out['first_epoch_s'],
                   'train_time_s': out['train_time_s']}
  wall = time.time() - t0
  curves.plot_curves(runs, 'val/accuracy', workdir / 'curves.png',
                     title='MNIST-1D validation accuracy (mean ± std over seeds)', scale=100,
                     references={MODELS[v][0]: (MODELS[v][1], 'Greydanus & Kobak 2020')
                                 for v in models},
                     reference_label='published test accuracy')
  out = results.write(workdir / 'results.json', 'mnist1d', rows, budget=budget,
                      wall_time_s=wall, models=extra)
  table = results.markdown_table(rows, scale=100, digits=1)
  lines = [
      '# MNIST-1D reproduction', '',
      f'Budget `{budget}`; test accuracy (%) of the validation-selected checkpoint, '
      'mean ± std over seeds trained as one vmapped population per model.', '',
      table, '',
      '| model | parameters | first epoch incl. compile (s) | train time (s) |',
      '|---|---|---|---|',
      *[f'| {n} | {e["num_params"]} | {e["first_epoch_s"] or 0:.1f} | {e["train_time_s"]:.1f} |'
        for n, e in extra.items()],
      '', f'Total wall time: {wall:.0f} s.', '', '![learning curves](curves.png)', '']
  (workdir / 'report.md').write_text('\n'.join(lines))
  print(table)
  return out
