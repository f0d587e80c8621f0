"""Character-level language modelling on Python's help topics (research/data/text.py).

Variants: ``configs/text.py:model=cnn_lstm``
  model:   cnn_lstm (embedding -> causal conv -> LSTM -> softmax: the char CNN-LSTM) |
           lstm (embedding -> LSTM) | cnn (embedding -> causal convs; a 13-character window)
  seq_len: characters per training chunk (and the sampling context)
  epochs:  training epochs;  quick: a smoke run on a 60K-character prefix

Sizes are chosen for roughly equal parameter counts (~160-200K); the `text`
study prints them. Metric: bits per character = test loss / ln 2.
"""
from research import configlib
from research.defaults import base_config

MODELS = {
    'cnn_lstm': dict(name='char_lm', embed=32, channels=(128,), kernels=(5,),
                     rnn=dict(cell='lstm', hidden=128)),
    'lstm': dict(name='char_lm', embed=32, channels=(), kernels=(),
                 rnn=dict(cell='lstm', hidden=170)),
    'cnn': dict(name='char_lm', embed=32, channels=(128, 128, 128), kernels=(5, 5, 5),
                rnn=dict(cell='none')),
}
VARIANTS = dict(model=configlib.one_of('cnn_lstm', MODELS), seq_len=100, epochs=10, quick=False)


def get_config(arg=None):
  a = configlib.parse_arg(arg, **VARIANTS)
  c = base_config()
  c.experiment = f'text_{a.model}'
  c.population = 'seed=0,1'
  c.data.name = 'pydoc_text'
  c.data.seq_len = a.seq_len
  c.data.split = (0.9, 0.05, 0.05)
  c.data.max_chars = 0
  c.model = configlib.model(dict(MODELS[a.model]))
  c.task.kind = 'sequence_classify'
  c.optim.name = 'adam'
  c.optim.lr = 3e-3
  c.optim.schedule = 'cosine'
  c.optim.clip_norm = 1.0
  c.train.batch_size = 32
  c.train.epochs = a.epochs
  c.train.eval_every = 1
  c.train.eval_batch_size = 256
  if a.quick:
    c.data.max_chars = 60000
    c.data.seq_len = 50
    c.train.epochs = 2
    c.population = 'seed=0'
  return c
