"""What each half of a CNN-LSTM hybrid contributes: hybrid vs CNN only vs RNN
only vs MLP, on three kinds of data, with all and with a quarter of the
training data.

* Moving digits, label = digit x direction (configs/video.py): LRCN (per-frame
  CNN -> LSTM), the same per-frame CNN averaged over frames (order-blind),
  an LSTM on raw frames, an MLP on the whole clip, and a ConvLSTM; parameter
  budgets matched to ~30K.
* JapaneseVowels (configs/ucr.py, variable length, padded + masked): the
  DeepConvLSTM-style hybrid, FCN, a 2-layer LSTM and an MLP (~200-330K
  parameters: same order, not matched exactly).
* MNIST-1D (configs/mnist1d.py): the paper's CNN, GRU, MLP and our CNN-GRU
  (their sizes, not matched; counts reported).

The seeds' claims under test: "the CNN lightens the LSTM's load" (compare
hybrid and RNN-only accuracy and step time) and "reduces overfitting"
(compare the drop from all to a quarter of the training data).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from research import results
from research.experiments import register
from research.experiments.common import train_variant, variant_config, write_report

STUDIES = {  # dataset -> (config file, fixed arg, {variant: (label, role)})
    'moving_digits': ('configs/video.py', 'label=digit_direction', {
        'lrcn': ('LRCN (CNN -> LSTM)', 'hybrid'), 'convlstm': ('ConvLSTM', 'hybrid'),
        'cnn': ('per-frame CNN, mean over time', 'cnn'), 'lstm': ('LSTM on frames', 'rnn'),
        'mlp': ('MLP', 'mlp')}),
    'JapaneseVowels': ('configs/ucr.py', 'dataset=JapaneseVowels', {
        'conv_lstm': ('DeepConvLSTM-style', 'hybrid'), 'fcn': ('FCN', 'cnn'),
        'lstm': ('LSTM', 'rnn'), 'mlp': ('MLP', 'mlp')}),
    'mnist1d': ('configs/mnist1d.py', '', {
        'cnn_gru': ('CNN-GRU', 'hybrid'), 'cnn': ('CNN', 'cnn'), 'gru': ('GRU', 'rnn'),
        'mlp': ('MLP', 'mlp')}),
}
BUDGETS = {
    'full': dict(fractions=(1.0, 0.25), epochs={'moving_digits': 20, 'JapaneseVowels': 150,
                                                 'mnist1d': None}, quick=False),
    'smoke': dict(fractions=(1.0, 0.5), epochs={}, quick=True),
}


@register('hybrid_ablation')
def run(workdir: str | Path, budget: str = 'full', datasets=None) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  rows, extra, sections = [], {}, []
  for ds in datasets or STUDIES:
    config_file, fixed, models = STUDIES[ds]
    acc = {}
    for variant, (label, role) in models.items():
      for frac in b['fractions']:
        parts = [fixed, f'model={variant}'] + (['quick'] if b['quick'] else [])
        if b['epochs'].get(ds):
          parts.append(f'epochs={b["epochs"][ds]}')
        arg = ','.join(p for p in parts if p)
        config = variant_config(config_file, arg)
        out = train_variant(config_file, arg, workdir / ds / f'{variant}_frac{frac:g}',
                            experiment=f'{config.experiment}_frac{frac:g}',
                            **{'data.train_fraction': frac, 'train.progress': budget == 'full'})
        accs = [m['test/accuracy'] for m in out['members'] if not m['diverged']]
        name = f'{ds} {label} ({100 * frac:g}% train)'
        rows.append(results.row(name, 'test_accuracy', accs))
        acc[(variant, frac)] = np.asarray(accs)
        steps = max(1, out['steps_per_epoch'] * int(config.train.epochs))
        extra[name] = {'role': role, 'num_params': out['num_params'],
                       'train_time_s': out['train_time_s'],
                       'ms_per_step': 1000 * (out['train_time_s'] - (out['first_epoch_s'] or 0))
                       / max(1, steps - out['steps_per_epoch']),
                       'members': out['num_members']}
    full, low = b['fractions']
    lines = [f'### {ds}', '',
             f'| model | role | parameters | acc. {100 * full:g}% train | acc. {100 * low:g}% '
             'train | drop | ms / step (population) |', '|---|---|---|---|---|---|---|']
    for variant, (label, role) in models.items():
      e = extra[f'{ds} {label} ({100 * full:g}% train)']
      a, c = 100 * acc[(variant, full)], 100 * acc[(variant, low)]
      lines.append(f'| {label} | {role} | {e["num_params"]} | '
                   f'{a.mean():.1f} ± {a.std(ddof=1):.1f} | '
                   f'{c.mean():.1f} ± {c.std(ddof=1):.1f} | {a.mean() - c.mean():.1f} | '
                   f'{e["ms_per_step"]:.0f} |')
    sections.append('\n'.join(lines))
  wall = time.time() - t0
  out = results.write(workdir / 'results.json', 'hybrid_ablation', rows, budget=budget,
                      wall_time_s=wall, runs=extra)
  write_report(workdir, 'Hybrid ablation: what the CNN and the LSTM each add',
               f'Budget `{budget}`. Test accuracy (%) of the validation- (or training-loss-) '
               'selected checkpoint, mean ± sample std over seeds; "drop" is the loss of accuracy '
               'when only the smaller training fraction is kept (stratified; validation and '
               'test unchanged). ms / step: training time per step of the whole population, '
               'after the first (compiling) epoch, evaluation included.',
               sections, {}, wall)
  print('\n\n'.join(sections))
  return out
