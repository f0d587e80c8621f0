"""Convolutional feature extractors and the CNN-only baselines.

1-D (NWC) for series: `Conv1D`, `ConvFeatures1D`, `ConvNet1D`, `FCN`.
2-D (NHWC) for frames: `ConvFeatures2D` (one frame -> a feature vector) and
`FrameFeatures`, which applies it to every frame of a clip, the B * T frames
as one batch (Keras's "TimeDistributed").
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.masks import length_mask, masked_mean, zero_padding

from research.models import register


def as_channels_last(x: jnp.ndarray) -> jnp.ndarray:
  """A batch as a sequence of feature vectors: (B, T) -> (B, T, 1); (B, T, C)
  unchanged; frames (B, T, H, W, ...) -> (B, T, H * W * ...), flattened."""
  if x.ndim == 2:
    return x[..., None]
  return x.reshape(x.shape[:2] + (-1,)) if x.ndim > 3 else x


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
  ``padding``: an int p (p zeros each side), ``'same'`` (`same_padding`) or
  ``'causal'`` (k - 1 zeros on the left only: step t sees inputs <= t).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int | str = 0
  use_bias: bool = True

  def pads(self) -> tuple[int, int]:
    if self.padding == 'same':
      return same_padding(self.kernel_size)
    if self.padding == 'causal':
      return self.kernel_size - 1, 0
    if isinstance(self.padding, str):
      raise ValueError(f"Conv1D: padding must be an int, 'same' or 'causal', "
                       f'got {self.padding!r}')
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


class ConvFeatures1D(nn.Module):
  """A stack of 1-D conv blocks in NWC layout: conv -> norm -> ReLU -> pool -> dropout.

  ``padding``: symmetric zeros per layer (an int, as PyTorch's ``Conv1d``) or
  'same'. ``norm``: 'none', 'batch' (statistics over valid steps only) or
  'layer' (over channels, per step). ``pool``: max-pool size and stride after
  every block (0 = none). With ``lengths`` (right-padded batches) the input
  and the output of every block are zeroed beyond their valid lengths and the
  new lengths are returned, so a padded batch gives each series the values of
  its unpadded run whatever its padding holds (exactly, in eval mode; batch
  norm in training mode also pools its statistics over valid steps only). The
  input has to be masked too: the last valid windows of the first convolution
  reach into the padding, where the unpadded run reads its zero padding.

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
    h = zero_padding(as_channels_last(x), lengths)
    for c, k, s in zip(self.channels, self.kernels, self.strides, strict=True):
      conv = Conv1D(c, k, s, self.padding, use_bias=self.norm == 'none')
      h = conv(h)
      if lengths is not None:
        lengths = conv.out_length(lengths)
      if self.norm == 'batch':
        mask = None if lengths is None else jnp.broadcast_to(
            length_mask(lengths, *h.shape[:2])[..., None], h.shape)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h, mask=mask)
      elif self.norm == 'layer':
        h = nn.LayerNorm()(h)
      h = nn.relu(h)
      if self.pool > 1:
        h = nn.max_pool(h, (self.pool,), strides=(self.pool,))
        if lengths is not None:
          lengths = lengths // self.pool
      h = zero_padding(h, lengths)
      if self.dropout:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return h, lengths


@register('cnn')
class ConvNet1D(nn.Module):
  """Conv stack, flatten, linear head: MNIST-1D's ``ConvBase`` by default
  (3 conv layers of 25 channels, kernels 5/3/3, stride 2, padding 1; 40 -> 5 steps)."""
  channels: Sequence[int] = (25, 25, 25)
  kernels: Sequence[int] = (5, 3, 3)
  strides: Sequence[int] = (2, 2, 2)
  num_outputs: int = 10
  member_widths = ('channels',)  # may differ between members (research.structure)

  @nn.compact
  def __call__(self, x, train: bool = False):
    h, _ = ConvFeatures1D(self.channels, self.kernels, self.strides)(x, train)
    return nn.Dense(self.num_outputs)(h.reshape(h.shape[0], -1))


@register('fcn')
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


def conv2d_same(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Stride-1 'same' 2-D convolution of NHWC ``x`` with an HWIO ``kernel`` (as
  ``nn.Conv(padding='SAME')``, odd or even k), computed as one concatenation
  of the k * k shifted views and one matmul (im2col).

  Why not ``lax.conv``: on XLA's CPU backend a convolution inside a loop body
  (our epoch is a ``lax.scan`` over batches, a ConvLSTM a scan over time) runs
  through a slow path (jax-ml/jax#12868): 4 steps of a small frame CNN took
  38 s inside a scan against 2 s outside; this form took 3 s in both places.
  """
  kh, kw, c_in, c_out = kernel.shape
  top, left = (kh - 1) // 2, (kw - 1) // 2
  xp = jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
  H, W = x.shape[1:3]
  patches = jnp.concatenate([xp[:, i:i + H, j:j + W] for i in range(kh) for j in range(kw)], -1)
  return patches @ kernel.reshape(kh * kw * c_in, c_out)


class Conv2D(nn.Module):
  """Stride-1 'same' 2-D convolution with ``nn.Conv``'s parameters (kernel
  (k, k, C_in, C_out), bias) and numbers, via `conv2d_same`."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
    y = conv2d_same(x, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros_init(), (self.features,))
    return y


def max_pool2d(h: jnp.ndarray, p: int) -> jnp.ndarray:
  """p x p max pooling with stride p of (B, H, W, C), cropping any remainder
  (``nn.max_pool(h, (p, p), strides=(p, p))``, VALID). Written as a reshape and
  a max: its gradient is a comparison mask, where the XLA CPU backend's
  select-and-scatter for ``nn.max_pool``'s gradient roughly doubled the time
  of a whole LRCN training step in our measurement."""
  B, H, W, C = h.shape
  h = h[:, :H // p * p, :W // p * p]
  return h.reshape(B, H // p, p, W // p, p, C).max((2, 4))


class ConvFeatures2D(nn.Module):
  """One frame (B, H, W[, C]) -> features (B, F): blocks of 'same' k x k conv ->
  norm -> ReLU -> 2-D max pool (``pool`` x ``pool``; 0 = none) -> dropout, then
  global average pooling (``readout='mean'``) or flattening (``'flatten'``).
  ``axis_name``: a vmapped axis over which batch norm also pools its
  statistics. ``mask`` (B,) bool: the frames batch norm computes its training
  statistics from (`FrameFeatures` leaves out padded frames); None = all."""
  channels: Sequence[int] = (16, 32)
  kernel: int = 3
  norm: str = 'batch'
  pool: int = 2
  dropout: float = 0.0
  readout: str = 'mean'
  axis_name: str | None = None
  train: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    if self.norm not in NORMS:
      raise ValueError(f'norm must be one of {NORMS}, got {self.norm!r}')
    if self.readout not in ('mean', 'flatten'):
      raise ValueError(f"readout must be 'mean' or 'flatten', got {self.readout!r}")
    if mask is not None and self.axis_name is not None:
      # Flax averages per-member masked means over a named axis (unweighted).
      raise ValueError('ConvFeatures2D: mask and axis_name together are not supported')
    h = x[..., None] if x.ndim == 3 else x
    for c in self.channels:
      h = Conv2D(c, self.kernel, use_bias=self.norm == 'none')(h)
      if self.norm == 'batch':
        bn_mask = None if mask is None else jnp.broadcast_to(
            jnp.asarray(mask, bool).reshape((-1, 1, 1, 1)), h.shape)
        h = nn.BatchNorm(use_running_average=not self.train, momentum=0.9,
                         axis_name=self.axis_name if self.train else None)(h, mask=bn_mask)
      elif self.norm == 'layer':
        h = nn.LayerNorm()(h)
      h = nn.relu(h)
      if self.pool > 1:
        h = max_pool2d(h, self.pool)
      if self.dropout:
        h = nn.Dropout(self.dropout, deterministic=not self.train)(h)
    return h.mean((1, 2)) if self.readout == 'mean' else h.reshape(h.shape[0], -1)


class FrameFeatures(nn.Module):
  """`ConvFeatures2D` applied to every frame of clips (B, T, H, W[, C]) ->
  (B, T, F) with one set of weights (Keras's "TimeDistributed"): the B * T
  frames go through the 2-D CNN as one batch, so dropout is drawn
  independently per frame and in training mode batch norm pools its
  statistics over batch *and* time, i.e. over all B * T frames. With
  ``lengths`` (clips right-padded in time) padded frames are left out of those
  statistics and their features are zero, so they never reach a valid frame.

  (Written as a reshape rather than ``nn.vmap`` over time with
  ``axis_name='time'``: with a mask, Flax's batch norm would average the
  per-time-step masked means unweighted, NaN for a step that is padding in
  every clip. Same parameters and ``'frame'`` scope as the vmap form.)"""
  channels: Sequence[int] = (16, 32)
  kernel: int = 3
  norm: str = 'batch'
  pool: int = 2
  dropout: float = 0.0
  readout: str = 'mean'

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    if x.ndim not in (4, 5):
      raise ValueError(f'FrameFeatures: expected clips (B, T, H, W[, C]), got shape {x.shape}')
    B, T = x.shape[:2]
    mask = None if lengths is None else length_mask(lengths, B, T).reshape(B * T)
    x = zero_padding(x, lengths)
    h = ConvFeatures2D(self.channels, self.kernel, self.norm, self.pool, self.dropout,
                       self.readout, train=train, name='frame')(
                           x.reshape((B * T,) + x.shape[2:]), mask)
    return zero_padding(h.reshape(B, T, -1), lengths)
