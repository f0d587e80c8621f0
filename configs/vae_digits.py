"""A VAE on sklearn's 8x8 digits with 17 grey levels (Tomczak's digits protocol).

Tomczak, "Deep Generative Modeling" (Springer 2022) and its code: the first
1000 images train, the next 350 validate, the last 447 test; a categorical
likelihood over the 17 levels of each pixel; MLP encoder/decoder with two
hidden layers of 256 (LeakyReLU), 16 latent units, Adam lr 1e-3, batch 64,
early stopping on the validation loss (patience 20 epochs, up to 1000).
Metric: negative ELBO in nats per image (``nelbo``; lower is better).

Variants: ``configs/vae_digits.py:beta=4,anneal=linear,quick``
  encoder, decoder: mlp | conv (decoder: the encoder's kind unless given)
  likelihood:       categorical | bernoulli (binarised pixels) | gaussian (fixed sigma)
  latent, hidden:   latent units; width of each of the two hidden layers (an integer:
                    hidden=128 is model.hidden = (128, 128))
  beta:             weight of the KL term (Higgins et al. 2017)
  anneal:           none | linear | sigmoid | cyclical, over anneal_steps updates
                    (the cycle length for cyclical); free_bits: lambda per unit
  optim, lr, schedule: optimizer (adam | rmsprop | sgd, SGD with momentum 0.9), its
                    learning rate and schedule (research/optim.py)
  epochs, patience: training length; evaluations without improvement before a member
                    stops (0 = never)
  quick:            a seconds-long smoke run (4 epochs, one seed, hidden 64 unless given)

On the command line ``model.hidden`` (the dense widths, the decoder mirrors them)
is a tuple: ``--config.model.hidden='(128, 64)'``, or ``'(256,)'`` for one layer;
a bare ``--config.model.hidden=256`` is refused (it would be one layer).

``get_search_space(arg)`` is this experiment's sweep space (scripts/sweep.py).
"""
from research import configlib
from research.defaults import base_config
from research.models.vae import LIKELIHOODS, NETWORKS
from research.optim import SCHEDULES
from research.sweep.space import Choice, Float, Int
from research.tasks import ANNEALING

LR = {'adam': 1e-3, 'rmsprop': 1e-3, 'sgd': 3e-2}
VARIANTS = dict(
    encoder=configlib.one_of('mlp', NETWORKS), decoder=configlib.one_of('', ('',) + NETWORKS),
    likelihood=configlib.one_of('categorical', LIKELIHOODS), latent=16, hidden=256, beta=1.0,
    anneal=configlib.one_of('none', ANNEALING), anneal_steps=0, free_bits=0.0,
    optim=configlib.one_of('adam', LR), lr=0.0, schedule=configlib.one_of('constant', SCHEDULES),
    epochs=300, patience=10, quick=False)


def get_config(arg=None):
  a = configlib.parse_arg(arg, **VARIANTS)
  c = base_config()
  c.experiment = 'vae_digits'
  c.population = 'seed=0,1,2'
  c.data.name = 'digits_images'
  c.data.split = 'tomczak'
  c.data.num_train = 0
  c.model = configlib.model(dict(
      name='vae', encoder=a.encoder, decoder=a.decoder or a.encoder, latent=a.latent,
      hidden=(a.hidden, a.hidden), channels=(32, 64), likelihood=a.likelihood,
      num_levels=17, gaussian_variance='fixed', sigma=0.1, image_shape=(8, 8, 1)))
  c.task.kind = 'elbo'
  c.task.beta = float(a.beta)
  c.task.anneal = a.anneal
  c.task.anneal_steps = int(a.anneal_steps)
  c.task.anneal_ratio = 0.5
  c.task.free_bits = float(a.free_bits)
  c.optim.name = a.optim
  c.optim.lr = a.lr or LR[a.optim]
  c.optim.momentum = 0.9 if a.optim == 'sgd' else 0.0
  c.optim.schedule = a.schedule
  c.optim.warmup_steps = 300
  c.optim.decay_steps = 1500  # exponential: lr halves every 1500 updates (100 epochs)
  c.optim.decay_rate = 0.5
  c.optim.plateau_patience = 10  # epochs (plateau_window 0 = one epoch of updates)
  c.optim.plateau_window = 0
  c.optim.plateau_min_scale = 0.01
  c.train.batch_size = 64
  c.train.epochs = a.epochs
  c.train.eval_every = 5
  c.train.patience = a.patience
  c.train.eval_batch_size = 500
  if a.quick:
    c.population = 'seed=0'
    if 'hidden' not in {p.partition('=')[0].strip() for p in configlib.split_arg(arg or '')}:
      c.model.hidden = (64, 64)
    c.train.epochs = 4
    c.train.eval_every = 2
    c.train.progress = False
  return c


def get_search_space(arg=None):
  """Sweep spaces over this config (research/sweep/space.py).

  ``hpo`` (default): learning rate, beta, latent size, hidden size, optimizer,
  with SGD's momentum searched only for SGD (a conditional parameter).
  ``small``: learning rate and beta only (numeric: a batch is one population).
  """
  name = arg or 'hpo'
  if name == 'hpo':
    return {
        'optim.lr': Float(1e-4, 3e-2, log=True, grid=(3e-4, 3e-3)),
        'task.beta': Float(0.25, 4.0, log=True, grid=(0.5, 1.0)),
        'model.latent': Choice((2, 8, 32), grid=(2, 32)),
        'model.hidden': Choice(((64, 64), (256, 256)), grid=((64, 64), (256, 256))),
        'optim.name': Choice(('adam', 'rmsprop', 'sgd'), grid=('adam', 'sgd')),
        'optim.momentum': Float(0.0, 0.99, when={'optim.name': 'sgd'}, grid=(0.9,)),
    }
  if name == 'small':
    return {
        'optim.lr': Float(1e-4, 1e-2, log=True, grid=(3e-4, 1e-3, 3e-3)),
        'task.beta': Float(0.5, 2.0, grid=(0.5, 1.0)),
    }
  if name == 'latent':
    return {'optim.lr': Float(3e-4, 3e-3, log=True), 'model.latent': Int(2, 16, log=True)}
  raise ValueError(f'Unknown search space {name!r}; known: hpo, small, latent')
