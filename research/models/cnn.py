"""Convolutional feature extractors and the CNN-only baseline."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def as_channels_last(x: jnp.ndarray) -> jnp.ndarray:
  """(B, T) -> (B, T, 1); (B, T, C) is returned unchanged."""
  return x[..., None] if x.ndim == 2 else x


class ConvFeatures1D(nn.Module):
  """A stack of 1-D convolutions with ReLU, in NWC layout.

  ``padding`` is symmetric zero padding per layer, as in PyTorch's ``Conv1d``.
  """
  channels: Sequence[int] = (25, 25, 25)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  padding: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = as_channels_last(x)
    for c, k, s in zip(self.channels, self.kernels, self.strides, strict=True):
      h = nn.relu(nn.Conv(c, (k,), strides=(s,), padding=[(self.padding, self.padding)])(h))
    return h  # (B, T', C)


class ConvNet1D(nn.Module):
  """Conv stack, flatten, linear head: MNIST-1D's ``ConvBase`` by default
  (3 conv layers of 25 channels, kernels 5/3/3, stride 2, padding 1; 40 -> 5 steps)."""
  channels: Sequence[int] = (25, 25, 25)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = ConvFeatures1D(self.channels, self.kernels, self.strides)(x, train)
    return nn.Dense(self.num_outputs)(h.reshape(h.shape[0], -1))
