"""UCR/UEA classification: FCN, LSTM-FCN, a DeepConvLSTM-style hybrid and an LSTM.

Protocol of Fawaz et al. 2019 ("Deep learning for time series classification:
a review", DMKD) for the FCN: the archive's train/test split, Adam 1e-3, batch
min(N_train / 10, 16), learning rate halved after 50 epochs without training
loss improvement, the epoch with the lowest *training* loss kept (no
validation split, and never the test split). Their FCN used 2000 epochs; the
full budget here uses fewer (``EPOCHS``), which is what a 2-core machine
affords, and says so in the report. Seeds train as one vmapped population.

Published test accuracies (%) (Fawaz et al. 2019, Table/companion results,
FCN mean of 5 runs; Karim et al. 2018 for LSTM-FCN):
GunPoint FCN 100.0, LSTM-FCN 100; ItalyPowerDemand FCN 96.3, LSTM-FCN 96.2;
JapaneseVowels FCN 99.3; BasicMotions ~100 in the bake-offs (Ruiz et al. 2021).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from research import results
from research.analysis import curves
from research.experiments import register
from research.experiments.common import train_variant, write_report

MODELS = {'fcn': 'FCN', 'lstm_fcn': 'LSTM-FCN (shuffle)', 'lstm_fcn_t': 'LSTM-FCN (temporal)',
          'conv_lstm': 'DeepConvLSTM-style', 'lstm': 'LSTM only'}
PUBLISHED = {  # (dataset, model) -> (accuracy, source)
    ('GunPoint', 'fcn'): (1.000, 'Fawaz et al. 2019, FCN'),
    ('ItalyPowerDemand', 'fcn'): (0.963, 'Fawaz et al. 2019, FCN'),
    ('JapaneseVowels', 'fcn'): (0.993, 'Fawaz et al. 2019, FCN'),
    ('BasicMotions', 'fcn'): (1.000, 'Ruiz et al. 2021 bake-off (~100)'),
    ('GunPoint', 'lstm_fcn'): (1.000, 'Karim et al. 2018, LSTM-FCN'),
    ('ItalyPowerDemand', 'lstm_fcn'): (0.962, 'Karim et al. 2018, LSTM-FCN'),
}
DATASETS = ('GunPoint', 'ItalyPowerDemand', 'JapaneseVowels', 'BasicMotions')
BUDGETS = {
    'full': dict(datasets=DATASETS, models=('fcn', 'lstm_fcn', 'conv_lstm', 'lstm'),
                 epochs={'GunPoint': 300, 'ItalyPowerDemand': 300, 'JapaneseVowels': 150,
                         'BasicMotions': 300}, seeds='0,1,2'),
    'smoke': dict(datasets=('ItalyPowerDemand', 'JapaneseVowels'), models=('fcn', 'lstm_fcn', 'conv_lstm'),
                  epochs={'ItalyPowerDemand': 3, 'JapaneseVowels': 2}, seeds='0,1'),
}


@register('ucr')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  rows, extra, table = [], {}, {}
  # Model-major order: the cheap convolutional models finish on every set first.
  for model in b['models']:
    for ds in b['datasets']:
      t = time.time()
      out = train_variant('configs/ucr.py', f'model={model},dataset={ds},epochs={b["epochs"][ds]}',
                          workdir / f'{ds}_{model}', population=f'seed={b["seeds"]}',
                          **{'train.progress': budget == 'full'})
      accs = [m['test/accuracy'] for m in out['members'] if not m['diverged']]
      pub, src = PUBLISHED.get((ds, model), (None, None))
      name = f'{ds} {MODELS[model]}'
      rows.append(results.row(name, 'test_accuracy', accs, pub, src))
      extra[name] = {'num_params': out['num_params'], 'train_time_s': out['train_time_s'],
                     'first_epoch_s': out['first_epoch_s'], 'wall_s': time.time() - t,
                     'best_epochs': [m['best_epoch'] for m in out['members']]}
      table[(ds, model)] = accs
  for ds in b['datasets']:
    curves.plot_curves({MODELS[m]: workdir / f'{ds}_{m}' for m in b['models']}, 'train/loss',
                       workdir / f'{ds}_curves.png',
                       title=f'{ds}: training loss (mean ± std over seeds)',
                       ylabel='training cross-entropy (nats/example)')
  wall = time.time() - t0
  out = results.write(workdir / 'results.json', 'ucr', rows, budget=budget, wall_time_s=wall,
                      runs=extra)
  grid = ['| dataset | ' + ' | '.join(MODELS[m] for m in b['models']) + ' |',
          '|---|' + '---|' * len(b['models'])]
  for ds in b['datasets']:
    cells = []
    for m in b['models']:
      a = 100 * np.asarray(table[(ds, m)])
      pub = PUBLISHED.get((ds, m), (None,))[0]
      cells.append(f'{a.mean():.1f} ± {a.std(ddof=1):.1f}' + (f' ({100 * pub:.1f})' if pub else ''))
    grid.append(f'| {ds} | ' + ' | '.join(cells) + ' |')
  cost = ['| run | parameters | train time (s) | best epochs |', '|---|---|---|---|']
  cost += [f'| {n} | {e["num_params"]} | {e["train_time_s"]:.0f} | {e["best_epochs"]} |'
           for n, e in extra.items()]
  write_report(
      workdir, 'UCR/UEA time-series classification',
      f'Budget `{budget}`: test accuracy (%) of the epoch with the lowest training loss '
      f'(Fawaz et al. 2019 protocol), mean ± sample std over seeds {b["seeds"]}; published values '
      f'in parentheses. Epochs per set: {b["epochs"]} (Fawaz et al. trained 2000).',
      ['\n'.join(grid), results.markdown_table(rows, scale=100, digits=1), '\n'.join(cost)],
      {f'{ds} training loss': f'{ds}_curves.png' for ds in b['datasets']}, wall)
  print('\n'.join(grid))
  return out
