"""Time-series classification on UCR/UEA sets bundled with sktime.

Variants: ``configs/ucr.py:model=fcn,dataset=GunPoint``
  model:    fcn (Wang et al. 2017) | lstm_fcn (Karim et al. 2018, dimension shuffle) |
            lstm_fcn_t (the same with a temporal LSTM branch) | conv_lstm (DeepConvLSTM-style
            hybrid, Ordóñez & Roggen 2016) | lstm (LSTM only) | mlp (residual MLP on the
            flattened, zero-padded series)
  dataset:  any set with TRAIN/TEST files in sktime's wheel (GunPoint, ItalyPowerDemand,
            BasicMotions, JapaneseVowels, ArrowHead, OSULeaf, ...)
  epochs:   training epochs (Fawaz et al. 2019 train the FCN for 2000)
  val:      fraction of train carved (stratified) for model selection; 0 selects on the
            training loss, as Fawaz et al. do (never on test)
  augment:  train.augment spec, e.g. 'jitter=0.03+scaling=0.1' ('+' separates methods
            on the command line, where ',' separates config arguments)
  normalize: none | per_series | global (train statistics)
  quick:    a smoke run

Protocol (Fawaz et al. 2019, "Deep learning for time series classification: a
review", FCN): Adam lr 1e-3, batch min(N_train / 10, 16), learning rate halved
when the training loss has not improved for 50 epochs (floor 1e-4), the model
with the lowest training loss kept.
"""
from research import configlib
from research.data import ucr
from research.data.preprocess import NORMALIZE
from research.defaults import base_config

MODELS = {
    'fcn': dict(name='fcn', channels=(128, 256, 128), kernels=(8, 5, 3), norm='batch'),
    'lstm_fcn': dict(name='lstm_fcn', rnn=dict(hidden=8), lstm_input='shuffle', dropout=0.8),
    'lstm_fcn_t': dict(name='lstm_fcn', rnn=dict(hidden=8), lstm_input='temporal', dropout=0.8),
    'conv_lstm': dict(name='cnn_rnn', channels=(64, 64, 64, 64), kernels=(5, 5, 5, 5),
                      strides=(1, 1, 1, 1), padding='same', norm='batch',
                      rnn=dict(cell='lstm', hidden=128, num_layers=2, bidirectional=False),
                      readout='last', dropout=0.5),
    'lstm': dict(name='rnn', rnn=dict(cell='lstm', hidden=128, num_layers=2, bidirectional=False),
                 readout='last'),
    'mlp': dict(name='mlp', hidden=400, dropout=0.1),
}
VARIANTS = dict(model=configlib.one_of('fcn', MODELS), dataset='GunPoint', epochs=500, val=0.0,
                augment='', normalize=configlib.one_of('none', NORMALIZE), quick=False)


def fawaz_batch_size(n_train: int) -> int:
  """Fawaz et al. 2019's batch size: min(N_train / 10, 16), at least 1; N_train is the
  archive's training split (read from the set's TRAIN file, before a validation carve)."""
  return max(1, min(n_train // 10, 16))


def get_config(arg=None):
  a = configlib.parse_arg(arg, **VARIANTS)
  c = base_config()
  c.experiment = f'ucr_{a.dataset}_{a.model}'
  c.population = 'seed=0,1,2'
  c.data.name = 'ucr'
  c.data.dataset = a.dataset
  c.data.normalize = a.normalize
  c.data.val_fraction = a.val
  c.data.seed = 0
  c.model = configlib.model(dict(MODELS[a.model]))
  c.task.select = '' if a.val else 'loss'
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'plateau'
  c.optim.decay_rate = 0.5
  c.optim.plateau_patience = 50
  c.optim.plateau_window = 0  # one epoch
  c.optim.plateau_min_scale = 0.1  # 1e-3 -> 1e-4
  c.train.batch_size = fawaz_batch_size(ucr.train_size(a.dataset))
  c.train.epochs = a.epochs
  c.train.eval_every = 10
  c.train.eval_batch_size = 512
  c.train.augment = a.augment.replace('+', ',')
  if a.quick:
    c.train.epochs = 4
    c.train.eval_every = 2
    c.population = 'seed=0,1'
  return c
