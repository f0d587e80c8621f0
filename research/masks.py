"""Valid steps of right-padded batches, shared by the models and the tasks.

A batch of sequences (B, T, ...) is right-padded: sequence b is valid at steps
t < lengths[b] and padding after. ``lengths=None`` means every step is valid.
"""
from __future__ import annotations

import jax.numpy as jnp


def length_mask(lengths, batch: int, time: int) -> jnp.ndarray:
  """(batch, time) bool: True at the valid steps (everywhere when ``lengths`` is None)."""
  if lengths is None:
    return jnp.ones((batch, time), bool)
  return jnp.arange(time)[None, :] < jnp.asarray(lengths)[:, None]


def zero_padding(x: jnp.ndarray, lengths) -> jnp.ndarray:
  """``x`` (B, T, ...) with every step at or beyond ``lengths`` set to zero
  (``where``, so even inf / NaN in the padding does not survive); ``x`` itself
  when ``lengths`` is None. Models call it on their input so that what the
  padding holds never matters: our loaders zero-fill it, but nothing relies on that."""
  if lengths is None:
    return x
  mask = length_mask(lengths, *x.shape[:2]).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
  return jnp.where(mask, x, jnp.zeros((), x.dtype))


def masked_mean(h: jnp.ndarray, lengths) -> jnp.ndarray:
  """Mean over the valid steps of (B, T, C) -> (B, C) (global average pooling)."""
  if lengths is None:
    return h.mean(1)
  mask = length_mask(lengths, *h.shape[:2])[..., None]
  return jnp.sum(jnp.where(mask, h, 0), 1) / jnp.maximum(jnp.sum(mask, 1), 1)
