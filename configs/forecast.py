"""Univariate forecasting with sliding windows (research/data/forecast.py).

Variants: ``configs/forecast.py:model=conv_lstm,series=airline``
  model:   conv_lstm (conv blocks -> LSTM -> horizon outputs) | lstm | mlp
  series:  airline | lynx | shampoo_sales
  window, horizon: input and forecast lengths (steps)
  epochs:  training epochs;  quick: a smoke run (4 epochs, 2 seeds)

The series is log-transformed and z-normalised with training statistics; the
loss is the MSE over the horizon in that space. The `forecast` study reports
MAE and RMSE in the series' own units next to the seasonal-naive baseline.
"""
from research import configlib
from research.data.forecast import SERIES
from research.defaults import base_config

MODELS = {
    'conv_lstm': dict(name='cnn_rnn', channels=(32, 32), kernels=(3, 3), strides=(1, 1),
                      padding='same', rnn=dict(cell='lstm', hidden=32, bidirectional=False),
                      readout='last'),
    'lstm': dict(name='rnn', rnn=dict(cell='lstm', hidden=48, bidirectional=False),
                 readout='last'),
    'mlp': dict(name='mlp', hidden=128),
}
VARIANTS = dict(model=configlib.one_of('conv_lstm', MODELS),
                series=configlib.one_of('airline', SERIES), window=24, horizon=12, epochs=300,
                quick=False)


def get_config(arg=None):
  a = configlib.parse_arg(arg, **VARIANTS)
  c = base_config()
  c.experiment = f'forecast_{a.series}_{a.model}'
  c.population = 'seed=0,1,2,3,4'
  c.data.name = 'forecast'
  c.data.series = a.series
  c.data.window = a.window
  c.data.horizon = a.horizon
  c.data.transform = 'log'
  c.model = configlib.model(dict(MODELS[a.model]))
  c.task.kind = 'regress'
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.train.batch_size = 16
  c.train.epochs = a.epochs
  c.train.eval_every = 5
  c.train.eval_batch_size = 256
  if a.quick:
    c.train.epochs = 4
    c.train.eval_every = 2
    c.population = 'seed=0,1'
  return c
