"""Loss and metrics per task kind.

A task turns model outputs and a batch into per-example values
(``{"loss": (B,), "accuracy": (B,), ...}``). Training minimises the mean of
``loss``; evaluation averages every value over a split, weighting padded
examples by zero. Numeric loss weights listed in ``hparam_keys`` may differ
per population member: they arrive in ``hp`` as traced scalars.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import optax


@dataclasses.dataclass(frozen=True)
class Task:
  kind: str
  per_example: Callable[[Any, dict, dict], dict[str, jnp.ndarray]]
  hparam_keys: tuple[str, ...]  # dotted config keys that may vary per member
  select_metric: str  # the validation metric used for early stopping / best
  select_mode: str  # 'max' or 'min'


def _classify(outputs, batch, hp):
  num_classes = outputs.shape[-1]
  labels = optax.smooth_labels(
      jax_one_hot(batch['y'], num_classes), hp['task.label_smoothing'])
  loss = optax.softmax_cross_entropy(outputs, labels)
  acc = (jnp.argmax(outputs, -1) == batch['y']).astype(jnp.float32)
  return {'loss': loss, 'accuracy': acc}


def jax_one_hot(y, n):
  return (y[..., None] == jnp.arange(n)).astype(jnp.float32)


def _regress(outputs, batch, hp):
  """Mean squared error; outputs (B,) or (B, 1) against y (B,) (or matching shapes)."""
  pred = outputs.reshape(batch['y'].shape)
  err = (pred - batch['y']).reshape(pred.shape[0], -1)
  mse = jnp.mean(err ** 2, axis=-1)
  return {'loss': mse, 'mse': mse}


def _sequence_classify(outputs, batch, hp):
  """Per-step cross-entropy (B, T, C) vs y (B, T), averaged over each sequence's
  valid steps (all steps unless ``lengths`` is in the batch). ``seq_accuracy``
  is 1 when every valid step is right."""
  T = batch['y'].shape[1]
  valid = (jnp.arange(T)[None, :] < batch['lengths'][:, None]) if 'lengths' in batch \
      else jnp.ones(batch['y'].shape, bool)
  n = jnp.maximum(valid.sum(-1), 1)
  labels = optax.smooth_labels(jax_one_hot(batch['y'], outputs.shape[-1]),
                               hp['task.label_smoothing'])
  ce = optax.softmax_cross_entropy(outputs, labels)
  right = (jnp.argmax(outputs, -1) == batch['y']) | ~valid
  return {'loss': jnp.sum(ce * valid, -1) / n,
          'accuracy': jnp.sum((jnp.argmax(outputs, -1) == batch['y']) & valid, -1) / n,
          'seq_accuracy': jnp.all(right, -1).astype(jnp.float32)}


KINDS = ('classify', 'regress', 'sequence_classify')


def make_task(config: ml_collections.ConfigDict) -> Task:
  if config.kind == 'classify':
    return Task('classify', _classify, ('task.label_smoothing',), 'accuracy', 'max')
  if config.kind == 'regress':
    return Task('regress', _regress, (), 'mse', 'min')
  if config.kind == 'sequence_classify':
    return Task('sequence_classify', _sequence_classify, ('task.label_smoothing',),
                'loss', 'min')
  raise ValueError(f'Unknown task kind {config.kind!r}; known: {list(KINDS)}')
