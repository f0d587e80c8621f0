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


def make_task(config: ml_collections.ConfigDict) -> Task:
  if config.kind == 'classify':
    return Task('classify', _classify, ('task.label_smoothing',), 'accuracy', 'max')
  raise ValueError(f"Unknown task kind {config.kind!r}; known: ['classify']")
