"""Loss and metrics per task kind.

A task turns model outputs and a batch into per-example values
(``{"loss": (B,), "accuracy": (B,), ...}``). Training minimises the mean of
``loss``; evaluation averages every value over a split, weighting padded
examples by zero. A task may also return ``weight`` (B,): then both means are
weighted by it (e.g. by each sequence's number of frames, so a metric is a
per-frame average over the whole split rather than a mean of sequence means). Numeric loss weights listed in ``hparam_keys`` may differ
per population member: they arrive in ``hp`` as traced scalars.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from research.masks import length_mask
from research.registry import Registry


@dataclasses.dataclass(frozen=True)
class Task:
  kind: str
  per_example: Callable[[Any, dict, dict], dict[str, jnp.ndarray]]
  hparam_keys: tuple[str, ...]  # dotted config keys that may vary per member
  select_metric: str  # the validation metric used for early stopping / best
  select_mode: str  # 'max' or 'min'
  metrics: tuple[str, ...] = ('loss',)  # the per-example values a task reports
  maximized: tuple[str, ...] = ()  # the metrics where higher is better (for task.select)


def _classify(outputs, batch, hp):
  num_classes = outputs.shape[-1]
  labels = optax.smooth_labels(
      jax_one_hot(batch['y'], num_classes), hp['task.label_smoothing'])
  loss = optax.softmax_cross_entropy(outputs, labels)
  acc = (jnp.argmax(outputs, -1) == batch['y']).astype(jnp.float32)
  return {'loss': loss, 'accuracy': acc}


def jax_one_hot(y, n):
  return (y[..., None] == jnp.arange(n)).astype(jnp.float32)


def _regress(outputs, batch, hp, tolerance=0.04):
  """Mean squared error; outputs (B,) or (B, 1) against y (B,) (or matching shapes).
  ``within_tol``: 1 when every output is within ``task.tolerance`` of its target
  (0.04 by default: Hochreiter & Schmidhuber 1997's adding criterion on their target
  scale; configs/synthetic.py sets each adding variant's, e.g. Pascanu et al. 2013's
  for the two-marker form). "< 1% error" means within_tol > 0.99."""
  pred = outputs.reshape(batch['y'].shape)
  err = (pred - batch['y']).reshape(pred.shape[0], -1)
  mse = jnp.mean(err ** 2, axis=-1)
  within = jnp.all(jnp.abs(err) < tolerance, axis=-1).astype(jnp.float32)
  return {'loss': mse, 'mse': mse, 'within_tol': within}


def _sequence_classify(outputs, batch, hp):
  """Per-step cross-entropy (B, T, C) vs y (B, T), averaged over each sequence's
  valid steps (all steps unless ``lengths`` is in the batch). ``seq_accuracy``
  is 1 when every valid step is right."""
  valid = length_mask(batch.get('lengths'), *batch['y'].shape[:2])
  n = jnp.maximum(valid.sum(-1), 1)
  labels = optax.smooth_labels(jax_one_hot(batch['y'], outputs.shape[-1]),
                               hp['task.label_smoothing'])
  ce = optax.softmax_cross_entropy(outputs, labels)
  right = (jnp.argmax(outputs, -1) == batch['y']) | ~valid
  return {'loss': jnp.sum(ce * valid, -1) / n,
          'accuracy': jnp.sum((jnp.argmax(outputs, -1) == batch['y']) & valid, -1) / n,
          'seq_accuracy': jnp.all(right, -1).astype(jnp.float32)}


def _multilabel_sequence(outputs, batch, hp):
  """Independent Bernoulli outputs per step and label (B, T, K) vs 0/1 targets:
  per sequence, the NLL summed over the K labels and averaged over the valid
  steps, weighted by the number of valid steps (so split averages are per
  frame: the polyphonic-music metric). ``accuracy`` is the frame-level
  accuracy of Bay et al. (2009) used by Boulanger-Lewandowski et al. (2012):
  TP / (TP + FP + FN) over the split's frames, here averaged per frame."""
  y = batch['y']
  valid = length_mask(batch.get('lengths'), *y.shape[:2])
  n = jnp.maximum(valid.sum(-1), 1)
  nll = jnp.sum(optax.sigmoid_binary_cross_entropy(outputs, y), -1)  # (B, T)
  pred = outputs > 0
  tp = jnp.sum(pred & (y > 0.5), -1)
  wrong = jnp.sum(pred != (y > 0.5), -1)
  acc = jnp.where(tp + wrong > 0, tp / jnp.maximum(tp + wrong, 1), 1.0)
  return {'loss': jnp.sum(nll * valid, -1) / n,
          'accuracy': jnp.sum(acc * valid, -1) / n,
          'weight': valid.sum(-1).astype(jnp.float32)}


ANNEALING = ('none', 'linear', 'sigmoid', 'cyclical')


def kl_weight(kind: str, step, steps, ratio: float = 0.5):
  """The KL annealing multiplier in [0, 1] at training step ``step``.

  ``linear``: min(1, step / steps) (Bowman et al. 2016, "Generating Sentences
  from a Continuous Space"); ``sigmoid``: 1 / (1 + exp(-10 (step / steps -
  1/2))) until ``steps``, then 1 (their logistic schedule); ``cyclical``: the
  schedule of Fu et al. 2019 ("Cyclical Annealing Schedule"), period
  ``steps``: min(1, tau / ratio) with tau = (step mod steps) / steps. With
  ``steps`` = 0, or without a step (evaluation), the weight is 1.
  """
  if kind not in ANNEALING:
    raise ValueError(f'Unknown task.anneal {kind!r}; known: {list(ANNEALING)}')
  if kind == 'none' or step is None:
    return jnp.float32(1.0)
  steps = jnp.asarray(steps, jnp.float32)
  t = jnp.asarray(step, jnp.float32) / jnp.maximum(steps, 1.0)
  if kind == 'linear':
    w = jnp.clip(t, 0.0, 1.0)
  elif kind == 'sigmoid':
    w = jnp.where(t >= 1.0, 1.0, jax.nn.sigmoid(10.0 * (t - 0.5)))
  else:
    w = jnp.minimum(1.0, (t - jnp.floor(t)) / ratio)
  return jnp.where(steps > 0, w, 1.0)


def _elbo(outputs, batch, hp, anneal='none', anneal_ratio=0.5):
  """Negative ELBO and the training objective of a VAE (`research.models.vae`).

  ``outputs``: ``log_px`` (B,), a one-sample estimate of log p(x|z), and
  ``kl`` (B, L), KL(q(z|x) || p(z)) per latent unit in closed form.
  Reported per example (nats): ``recon`` = -log p(x|z), ``kl`` = sum of
  ``kl``, ``nelbo`` = recon + kl (the negative ELBO, an upper bound on
  -log p(x)), and ``loss`` = recon + beta * w(step) * KL_fb, the objective:
  beta (Higgins et al. 2017, beta-VAE), the annealing weight w (`kl_weight`;
  1 in evaluation) and free bits lambda (Kingma et al. 2016, IAF, Eq. 15):
  KL_fb = sum_j max(lambda, E_batch[KL_j]), so a unit whose batch-mean KL is
  below lambda costs the constant lambda and gets no KL gradient. (The
  per-example value is KL_ij where the batch mean of unit j is >= lambda and
  lambda elsewhere: its batch mean is exactly KL_fb.) Batch means use the
  evaluation weights ``w`` when the batch carries them (padding excluded).
  """
  recon = -outputs['log_px']
  kl_units = outputs['kl']
  kl = jnp.sum(kl_units, -1)
  w = batch.get('w', jnp.ones(kl_units.shape[:1], kl_units.dtype))
  unit_mean = jnp.sum(kl_units * w[:, None], 0) / jnp.maximum(jnp.sum(w), 1e-12)
  free_bits = hp['task.free_bits']
  kl_obj = jnp.sum(jnp.where(unit_mean[None, :] >= free_bits, kl_units, free_bits), -1)
  weight = hp['task.beta'] * kl_weight(anneal, hp.get('step'), hp['task.anneal_steps'],
                                       anneal_ratio)
  return {'loss': recon + weight * kl_obj, 'nelbo': recon + kl, 'recon': recon, 'kl': kl}


def mean_over_batch(per: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
  """Batch means of per-example values, weighted by ``per['weight']`` if present."""
  if 'weight' not in per:
    return {k: v.mean() for k, v in per.items()}
  w = per['weight']
  total = jnp.maximum(w.sum(), 1e-12)
  return {k: jnp.sum(v * w) / total for k, v in per.items() if k != 'weight'}


# Task kinds register a factory ``config.task -> Task`` (`research.registry`):
# ``@register('kind')`` here or in any module imported before the config is used.
TASKS: Registry[Callable[[ml_collections.ConfigDict], Task]] = Registry('task kind')
register = TASKS.register
KINDS = TASKS  # the registered kinds: iterable, ``kind in KINDS``


def make_task(config: ml_collections.ConfigDict) -> Task:
  """The task of ``config.kind``; ``config.select`` (optional) replaces its
  model-selection metric, e.g. 'loss' to select on the training loss when
  there is no validation split (the protocol of Fawaz et al. 2019 for UCR)."""
  task = TASKS[config.kind](config)
  select = config.get('select', '')
  if select:
    if select not in task.metrics:
      raise ValueError(f'task.select={select!r} is not a metric of task {task.kind!r}; '
                       f'choose from {list(task.metrics)}')
    task = dataclasses.replace(task, select_metric=select,
                               select_mode='max' if select in task.maximized else 'min')
  return task


@register('classify')
def _classify_task(config: ml_collections.ConfigDict) -> Task:
  return Task('classify', _classify, ('task.label_smoothing',), 'accuracy', 'max',
              ('loss', 'accuracy'), maximized=('accuracy',))


@register('regress')
def _regress_task(config: ml_collections.ConfigDict) -> Task:
  tol = float(config.get('tolerance', 0.04))
  return Task('regress', lambda o, b, hp: _regress(o, b, hp, tol), (), 'mse', 'min',
              ('loss', 'mse', 'within_tol'), maximized=('within_tol',))


@register('sequence_classify')
def _sequence_classify_task(config: ml_collections.ConfigDict) -> Task:
  return Task('sequence_classify', _sequence_classify, ('task.label_smoothing',),
              'loss', 'min', ('loss', 'accuracy', 'seq_accuracy'),
              maximized=('accuracy', 'seq_accuracy'))


@register('multilabel_sequence')
def _multilabel_sequence_task(config: ml_collections.ConfigDict) -> Task:
  return Task('multilabel_sequence', _multilabel_sequence, (), 'loss', 'min',
              ('loss', 'accuracy'), maximized=('accuracy',))


@register('elbo')
def _elbo_task(config: ml_collections.ConfigDict) -> Task:
  anneal = config.get('anneal', 'none')
  kl_weight(anneal, None, 0)  # validates the name
  ratio = float(config.get('anneal_ratio', 0.5))
  return Task('elbo', lambda o, b, hp: _elbo(o, b, hp, anneal, ratio),
              ('task.beta', 'task.free_bits', 'task.anneal_steps'), 'nelbo', 'min',
              ('loss', 'nelbo', 'recon', 'kl'))
