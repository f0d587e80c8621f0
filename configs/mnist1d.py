"""MNIST-1D (Greydanus & Kobak 2020): the spine's first reproduction.

Variants: ``configs/mnist1d.py:model=cnn,quick``
  model:  linear | mlp | cnn | gru (bidirectional) | cnn_gru (conv -> bidirectional GRU)
  quick:  a seconds-long smoke run (1000 samples, 4 epochs, 2 seeds)

Training follows the paper's repository: Adam, lr 1e-2, batch 100, ~6000 steps
(150 epochs of 40 steps on 4000 training sequences, 10% of them held out for
validation here, so 36 steps per epoch and 5400 steps).
"""
from research import configlib
from research.defaults import base_config

MODELS = {
    'linear': dict(name='linear'),
    'mlp': dict(name='mlp', hidden=100),
    'cnn': dict(name='cnn', channels=(25, 25, 25), kernels=(5, 3, 3), strides=(2, 2, 2)),
    'gru': dict(name='rnn', rnn=dict(cell='gru', hidden=6, bidirectional=True), readout='flatten'),
    'cnn_gru': dict(name='cnn_rnn', channels=(25, 25), kernels=(5, 3), strides=(2, 2),
                    rnn=dict(cell='gru', hidden=16, bidirectional=True), readout='flatten'),
}
VARIANTS = dict(model=configlib.one_of('cnn', MODELS), quick=False)


def get_config(arg=None):
  args = configlib.parse_arg(arg, **VARIANTS)
  c = base_config()
  c.experiment = f'mnist1d_{args.model}'
  c.population = 'seed=0,1,2'
  c.data.name = 'mnist1d'
  c.data.num_samples = 5000
  c.data.train_split = 0.8
  c.data.val_fraction = 0.1
  c.data.seed = 42  # the dataset's own seed (as in mnist1d's defaults), not the model seed
  c.model = configlib.model(MODELS[args.model])
  c.optim.name = 'adam'
  c.optim.lr = 1e-2
  c.train.batch_size = 100
  c.train.epochs = 150
  c.train.eval_every = 5
  if args.quick:
    c.data.num_samples = 1000
    c.train.epochs = 4
    c.train.eval_every = 2
    c.population = 'seed=0,1'
  return c
