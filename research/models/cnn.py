"""Convolutional feature extractors and the CNN-only baseline."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def as_channels_last(x: jnp.ndarray) -> jnp.ndarray:
  """(B, T) -> (B, T, 1); (B, T, C) is returned unchanged."""
  return x[..., None] if x.ndim == 2 else x


def same_padding(kernel_size: int) -> tuple[int, int]:
  """(left, right) zero padding that keeps the length at stride 1 (PyTorch's
  'same'; the extra step of an even kernel goes right). Unlike TF's SAME it does
  not depend on the input length, so a right-padded batch lines up with each
  unpadded series."""
  left = (kernel_size - 1) // 2
  return left, kernel_size - 1 - left


class Conv1D(nn.Module):
  """1-D convolution (NWC) computed as patches @ kernel.

  Same parameters and numbers as ``nn.Conv(features, (k,), strides=(s,),
  padding=[(p, p)])`` (kernel ``(k, C_in, C_out)``, bias ``(C_out,)``), but the
  convolution is one gather of k shifted strided slices and one matmul. On
  XLA's CPU backend this is ~4x faster for the small kernels we use, and under
  ``vmap`` over population members it stays a batched matmul instead of a
  grouped convolution (measured in docs/ARCHITECTURE.md).
  ``padding``: an int p (p zeros each side) or ``'same'`` (`same_padding`).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int | str = 0
  use_bias: bool = True

  def pads(self) -> tuple[int, int]:
    if self.padding == 'same':
      return same_padding(self.kernel_size)
    if isinstance(self.padding, str):
      raise ValueError(f"Conv1D: padding must be an int or 'same', got {self.padding!r}")
    return self.padding, self.padding

  def out_length(self, length):
    """Output length for an input of ``length`` steps (works on arrays)."""
    left, right = self.pads()
    return (length + left + right - self.kernel_size) // self.stride + 1

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel_size, self.stride
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, x.shape[-1], self.features))
    left, right = self.pads()
    x = jnp.pad(x, ((0, 0), (left, right), (0, 0))) if left or right else x
    t_out = (x.shape[1] - k) // s + 1
    if t_out < 1:
      raise ValueError(f'Conv1D: input of length {x.shape[1]} (padded) is shorter than kernel {k}')
    patches = jnp.stack([x[:, i:i + s * (t_out - 1) + 1:s] for i in range(k)], axis=2)
    y = jnp.einsum('btkc,kco->bto', patches, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return y


NORMS = ('none', 'batch', 'layer')


def masked_mean(h: jnp.ndarray, lengths) -> jnp.ndarray:
  """Mean over the valid steps of (B, T, C) -> (B, C) (global average pooling)."""
  if lengths is None:
    return h.mean(1)
  mask = (jnp.arange(h.shape[1])[None, :] < lengths[:, None])[..., None]
  return jnp.sum(h * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1)


class ConvFeatures1D(nn.Module):
  """A stack of 1-D conv blocks in NWC layout: conv -> norm -> ReLU -> pool -> dropout.

  ``padding``: symmetric zeros per layer (an int, as PyTorch's ``Conv1d``) or
  'same'. ``norm``: 'none', 'batch' (statistics over valid steps only) or
  'layer' (over channels, per step). ``pool``: max-pool size and stride after
  every block (0 = none). With ``lengths`` (right-padded batches) the output of
  every block is zeroed beyond its valid length and the new lengths are
  returned, so a padded batch gives each series the values of its unpadded
  run (exactly, in eval mode; batch norm in training mode also pools its
  statistics over valid steps only).

  Returns (h (B, T', C_last), lengths' or None).
  """
  channels: Sequence[int] = (25, 25, 25)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  padding: int | str = 1
  norm: str = 'none'
  pool: int = 0
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    if self.norm not in NORMS:
      raise ValueError(f'norm must be one of {NORMS}, got {self.norm!r}')
    h = as_channels_last(x)
    for c, k, s in zip(self.channels, self.kernels, self.strides, strict=True):
      conv = Conv1D(c, k, s, self.padding, use_bias=self.norm == 'none')
      h = conv(h)
      mask = None
      if lengths is not None:
        lengths = conv.out_length(lengths)
        mask = (jnp.arange(h.shape[1])[None, :] < lengths[:, None])[..., None]
      if self.norm == 'batch':
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(
            h, mask=None if mask is None else jnp.broadcast_to(mask, h.shape))
      elif self.norm == 'layer':
        h = nn.LayerNorm()(h)
      h = nn.relu(h)
      if self.pool > 1:
        h = nn.max_pool(h, (self.pool,), strides=(self.pool,))
        if lengths is not None:
          lengths = lengths // self.pool
          mask = (jnp.arange(h.shape[1])[None, :] < lengths[:, None])[..., None]
      if mask is not None:
        h = h * mask
      if self.dropout:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return h, lengths


class ConvNet1D(nn.Module):
  """Conv stack, flatten, linear head: MNIST-1D's ``ConvBase`` by default
  (3 conv layers of 25 channels, kernels 5/3/3, stride 2, padding 1; 40 -> 5 steps)."""
  channels: Sequence[int] = (25, 25, 25)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    h, _ = ConvFeatures1D(self.channels, self.kernels, self.strides)(x, train)
    return nn.Dense(self.num_outputs)(h.reshape(h.shape[0], -1))


class FCN(nn.Module):
  """Fully convolutional network for series classification (Wang, Yan & Oates
  2017, "Time series classification from scratch with deep neural networks: a
  strong baseline"): three blocks conv -> batch norm -> ReLU with 128/256/128
  filters and kernels 8/5/3, stride 1, length-preserving padding, then global
  average pooling over (valid) time and a linear head."""
  channels: Sequence[int] = (128, 256, 128)
  kernels: Sequence[int] = (8, 5, 3)
  norm: str = 'batch'
  dropout: float = 0.0
  num_outputs: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    h, lengths = ConvFeatures1D(self.channels, self.kernels, (1,) * len(self.channels),
                                padding='same', norm=self.norm)(x, train, lengths)
    h = masked_mean(h, lengths)
    h = nn.Dropout(self.dropout, deterministic=not train)(h) if self.dropout else h
    return nn.Dense(self.num_outputs)(h)
