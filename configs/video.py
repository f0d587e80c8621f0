"""Moving digits (research/data/video.py): per-frame CNN -> LSTM and its ablations.

Variants: ``configs/video.py:model=lrcn,label=digit_direction``
  model:  lrcn (per-frame CNN -> LSTM; Donahue et al. 2015) | cnn (the same per-frame CNN,
          features averaged over frames: order-blind) | lstm (LSTM on flattened frames) |
          mlp (residual MLP on the whole flattened clip) | convlstm (Shi et al. 2015)
  label:  digit (10 classes; one frame suffices) | digit_direction (40 classes; needs order)
  train_fraction: keep this fraction of the training clips (stratified), for learning curves
  epochs: training epochs;  quick: a smoke run (300 training clips, 2 epochs)

The model sizes are chosen so that every model has about 30K parameters (the
`hybrid_ablation` study prints the exact counts).
"""
from research import configlib
from research.data.video import LABELS
from research.defaults import base_config

MODELS = {
    'lrcn': dict(name='lrcn', channels=(16, 32), kernel=3, norm='batch', pool=2,
                 rnn=dict(cell='lstm', hidden=64), readout='last'),
    'cnn': dict(name='lrcn', channels=(40, 72), kernel=3, norm='batch', pool=2,
                rnn=dict(cell='none')),
    'lstm': dict(name='rnn', rnn=dict(cell='lstm', hidden=24, bidirectional=False), readout='last'),
    'mlp': dict(name='mlp', hidden=14),
    'convlstm': dict(name='convlstm', features=(24,), kernel=3, input_pool=2),
}
VARIANTS = dict(model=configlib.one_of('lrcn', MODELS),
                label=configlib.one_of('digit_direction', LABELS), epochs=20, train_fraction=1.0,
                quick=False)


def get_config(arg=None):
  a = configlib.parse_arg(arg, **VARIANTS)
  c = base_config()
  c.experiment = f'video_{a.model}_{a.label}'
  c.population = 'seed=0,1,2'
  c.data.name = 'moving_digits'
  c.data.label = a.label
  c.data.frames = 8
  c.data.size = 16
  c.data.speed = 1
  c.data.directions = 4
  c.data.num_clips = (4000, 1000, 2000)
  c.data.noise = 0.0
  c.data.seed = 0
  c.data.train_fraction = a.train_fraction
  c.model = configlib.model(dict(MODELS[a.model]))
  c.optim.name = 'adam'
  c.optim.lr = 3e-3
  c.optim.schedule = 'cosine'
  c.train.batch_size = 64
  c.train.epochs = a.epochs
  c.train.eval_every = 2
  c.train.eval_batch_size = 500
  if a.quick:
    c.data.num_clips = (300, 100, 100)
    c.train.epochs = 2
    c.train.eval_every = 1
    c.population = 'seed=0,1'
  return c
