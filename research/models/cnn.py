"""Convolutional feature extractors and the CNN-only baseline."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def as_channels_last(x: jnp.ndarray) -> jnp.ndarray:
  """(B, T) -> (B, T, 1); (B, T, C) is returned unchanged."""
  return x[..., None] if x.ndim == 2 else x


class Conv1D(nn.Module):
  """1-D convolution (NWC) computed as patches @ kernel.

  Same parameters and numbers as ``nn.Conv(features, (k,), strides=(s,),
  padding=[(p, p)])`` (kernel ``(k, C_in, C_out)``, bias ``(C_out,)``), but the
  convolution is one gather of k shifted strided slices and one matmul. On
  XLA's CPU backend this is ~4x faster for the small kernels we use, and under
  ``vmap`` over population members it stays a batched matmul instead of a
  grouped convolution (measured in docs/ARCHITECTURE.md).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    k, s, p = self.kernel_size, self.stride, self.padding
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, x.shape[-1], self.features))
    x = jnp.pad(x, ((0, 0), (p, p), (0, 0))) if p else x
    t_out = (x.shape[1] - k) // s + 1
    if t_out < 1:
      raise ValueError(f'Conv1D: input of length {x.shape[1]} (padded) is shorter than kernel {k}')
    patches = jnp.stack([x[:, i:i + s * (t_out - 1) + 1:s] for i in range(k)], axis=2)
    y = jnp.einsum('btkc,kco->bto', patches, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return y


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
      h = nn.relu(Conv1D(c, k, s, self.padding)(h))
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
