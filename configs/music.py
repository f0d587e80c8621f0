"""Polyphonic music modelling on JSB Chorales: next-frame NLL of 88 keys.

Variants: ``configs/music.py:cell=lstm,variant=vanilla,hidden=36,lr=1e-3``
  cell:    elman | gru | lstm
  variant: the LSTM variant of Greff et al.: vanilla | NIG | NFG | NOG | NIAF | NOAF | NP |
           CIFG | FGR | standard (lstm only)
  size:    small (~20K parameters, as Chung et al. 2014) | large (~300K) -- sets hidden
           per cell unless ``hidden`` is given
  hidden:  hidden units (0: from size);  lr: Adam's learning rate;  epochs: training epochs
  path:    the .mat file (default ../shared/data/JSB_Chorales.mat, relative to the cwd)
  source:  mat (the JSB file at ``path``) | music21: without the file, a JSB-like set rebuilt
           from music21's bundled Bach chorales (pip install -e '.[music21]'; research/data/
           chorales.py). Its frames and split differ: numbers are NOT comparable to the
           published JSB results below. ``--config.data.source=music21`` does the same
           but keeps the experiment name jsb_* (this arg names it bach21_*).
  cache:   the music21 rolls' .npz cache (default ~/.cache/research/music21_chorales_v1.npz)
  quick:   a smoke run (2 epochs, 2 seeds)

Metric: test NLL per frame summed over the 88 keys (lower is better).
Anchors: LSTM 8.45, GRU 8.43, RNN 8.91 (Bai et al. 2018, Table 1);
GRU 8.54 at ~20K parameters (Chung et al. 2014).
"""
from research import configlib
from research.defaults import base_config
from research.models.cells import CELLS, LSTM_VARIANTS

DEFAULT_PATH = '../shared/data/JSB_Chorales.mat'
# Hidden sizes giving ~20K / ~300K parameters with 88 inputs and 88 outputs.
HIDDEN = {'small': {'lstm': 36, 'gru': 46, 'elman': 100},
          'large': {'lstm': 230, 'gru': 270, 'elman': 480}}
VARIANTS = dict(cell=configlib.one_of('lstm', CELLS),
                variant=configlib.one_of('vanilla', LSTM_VARIANTS),
                size=configlib.one_of('small', HIDDEN), hidden=0, lr=1e-3, epochs=100,
                path=DEFAULT_PATH, source=configlib.one_of('mat', ('mat', 'music21')), cache='',
                quick=False)


def get_config(arg=None):
  a = configlib.parse_arg(arg, **VARIANTS)
  hidden = a.hidden or HIDDEN[a.size][a.cell]
  c = base_config()
  prefix = 'jsb' if a.source == 'mat' else 'bach21'  # music21 results are not JSB results
  variant = f'_{a.variant}' if a.cell == 'lstm' else ''
  c.experiment = f'{prefix}_{a.cell}{variant}_h{hidden}'
  c.population = 'seed=0,1,2'
  c.data.name = 'music'
  c.data.path = a.path
  c.data.source = a.source  # 'mat' | 'music21'
  c.data.cache = a.cache  # music21 only; '' = ~/.cache/research/
  cell_options = {'variant': a.variant} if a.cell == 'lstm' else {}
  c.model = configlib.model(dict(
      name='rnn', readout='sequence',
      rnn=dict(cell=a.cell, hidden=hidden, num_layers=1, bidirectional=False, truncation=0,
               cell_options=cell_options)))
  c.task.kind = 'multilabel_sequence'
  c.optim.name = 'adam'
  c.optim.lr = a.lr
  c.optim.clip_norm = 1.0
  c.train.batch_size = 8
  c.train.epochs = a.epochs
  c.train.eval_every = 1
  c.train.eval_batch_size = 128
  c.train.patience = 20
  if a.quick:
    c.train.epochs = 2
    c.population = 'seed=0,1'
  return c
