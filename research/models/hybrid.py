"""CNN + RNN hybrids.

* `CNNRNN`: convolutions extract local features, a recurrent layer models
  their order, a head reads the recurrent outputs (DeepConvLSTM, Ordóñez &
  Roggen 2016: four conv layers of 64 filters, kernel 5, then two LSTM layers
  of 128 and the last step). Right-padded batches are masked end to end: the
  conv stack shrinks ``lengths`` with its strides and pools, the recurrent
  layer freezes its carry beyond them.
* `LSTMFCN`: the FCN branch (`research.models.cnn.FCN`) and an LSTM branch in
  parallel, their features concatenated before the head (Karim, Majumdar,
  Darabi & Chen 2018, "LSTM Fully Convolutional Networks for Time Series
  Classification"). ``lstm_input='shuffle'`` is the paper's "dimension
  shuffle": the LSTM reads the *transposed* series, C steps of T features
  (one step for a univariate series), so it is not recurrent over time at
  all; ``lstm_input='temporal'`` is a true temporal branch over the T steps
  (masked by ``lengths``). The paper's branch is 8 cells with dropout 0.8.
  Padded steps are zeroed on input, so with 'shuffle' (whose features are the
  T steps) garbage padding reads as zero padding.
* `LRCN`: a 2-D CNN applied to every frame (`research.models.cnn.FrameFeatures`,
  the B * T frames as one batch), then a recurrent layer over the frame features
  (Donahue et al. 2015, "Long-term Recurrent Convolutional Networks for Visual
  Recognition and Description"). ``rnn.cell='none'`` averages the frame features
  over time instead: the CNN-only ablation, blind to frame order. Clips
  right-padded in time are masked by ``lengths``: padded frames are left out
  of batch-norm statistics, the recurrent carry and the averages.
* `ConvLSTM`: LSTM whose states are feature maps and whose matrix products are
  convolutions (Shi et al. 2015, "Convolutional LSTM Network: A Machine
  Learning Approach for Precipitation Nowcasting", eq. 3), with the paper's
  peepholes as an option; without them it is Flax's ``nn.ConvLSTMCell``.

The recurrent layer of `CNNRNN`, `LSTMFCN` and `LRCN` is a
`research.models.recurrent.Recurrent` built from the model's one ``rnn`` field
(cell, hidden, num_layers, bidirectional, truncation, cell_options, fast, ...;
`recurrent.rnn_options`), so every option of the layer reaches every model.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict
from jax import lax

from research.masks import masked_mean, zero_padding
from research.models import register
from research.models.cnn import ConvFeatures1D, FrameFeatures, as_channels_last, conv2d_same
from research.models.recurrent import Recurrent, head, recurrent_head, rnn_options


@register('cnn_rnn')
class CNNRNN(nn.Module):
  """Conv stack (B, T, C) -> (B, T', F), recurrent layer over T', linear head.
  ``rnn``: `Recurrent`'s options over this field's defaults (`recurrent.rnn_options`)."""
  channels: Sequence[int] = (25, 25)
  kernels: Sequence[int] = (5, 3)
  strides: Sequence[int] = (2, 2)
  padding: int | str = 1
  norm: str = 'none'
  pool: int = 0
  conv_dropout: float = 0.0
  rnn: Mapping[str, Any] = FrozenDict(cell='gru', hidden=16, bidirectional=True)
  readout: str = 'flatten'
  dropout: float = 0.0  # on the recurrent features before the head
  num_outputs: int = 10
  member_widths = ('channels', 'rnn.hidden')  # may differ between members (research.structure)

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    h, lengths = ConvFeatures1D(self.channels, self.kernels, self.strides, self.padding,
                                self.norm, self.pool, self.conv_dropout)(x, train, lengths)
    return recurrent_head(h, lengths, rnn_options(type(self), self.rnn), self.readout,
                          self.num_outputs, self.dropout, train)


@register('lstm_fcn')
class LSTMFCN(nn.Module):
  """FCN branch || LSTM branch -> concatenate -> linear head (Karim et al. 2018).
  ``rnn``: the LSTM branch's `Recurrent` options over this field's defaults."""
  channels: Sequence[int] = (128, 256, 128)
  kernels: Sequence[int] = (8, 5, 3)
  norm: str = 'batch'
  rnn: Mapping[str, Any] = FrozenDict(cell='lstm', hidden=8)
  lstm_input: str = 'shuffle'  # 'shuffle' (the paper) | 'temporal'
  dropout: float = 0.8  # after the LSTM branch, as in the paper
  num_outputs: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    x = zero_padding(as_channels_last(x), lengths)  # both branches: padding holds zeros
    conv, conv_lengths = ConvFeatures1D(self.channels, self.kernels, (1,) * len(self.channels),
                                        padding='same', norm=self.norm)(x, train, lengths)
    conv = masked_mean(conv, conv_lengths)
    lstm = Recurrent(**rnn_options(type(self), self.rnn))
    if self.lstm_input == 'shuffle':
      _, final = lstm(jnp.swapaxes(x, 1, 2))
    elif self.lstm_input == 'temporal':
      _, final = lstm(x, lengths)
    else:
      raise ValueError(f"lstm_input must be 'shuffle' or 'temporal', got {self.lstm_input!r}")
    final = nn.Dropout(self.dropout, deterministic=not train)(final) if self.dropout else final
    return nn.Dense(self.num_outputs)(jnp.concatenate([conv, final], axis=-1))


@register('lrcn')
class LRCN(nn.Module):
  """Clips (B, T, H, W[, C]) -> per-frame CNN features (B, T, F) -> recurrent
  layer -> readout -> linear head; ``rnn.cell='none'``: mean over frames -> head.
  ``rnn``: `Recurrent`'s options over this field's defaults (`recurrent.rnn_options`)."""
  channels: Sequence[int] = (16, 32)
  kernel: int = 3
  norm: str = 'batch'
  pool: int = 2
  frame_readout: str = 'mean'  # per frame: global average pool or flatten
  conv_dropout: float = 0.0
  rnn: Mapping[str, Any] = FrozenDict(cell='lstm', hidden=64)  # cell 'none': CNN only
  readout: str = 'last'
  dropout: float = 0.0
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    h = FrameFeatures(self.channels, self.kernel, self.norm, self.pool, self.conv_dropout,
                      self.frame_readout)(x, train, lengths)
    rnn = rnn_options(type(self), self.rnn)
    if rnn['cell'] == 'none':
      return head(masked_mean(h, lengths), self.num_outputs, self.dropout, train)
    return recurrent_head(h, lengths, rnn, self.readout, self.num_outputs, self.dropout, train)


class ConvLSTMLayer(nn.Module):
  """One ConvLSTM layer over clips (B, T, H, W, C) -> hidden maps (B, T, H, W, F).

  Shi et al. 2015, eq. 3 (``*`` convolution, ``∘`` Hadamard product)::

    i_t = σ(W_xi * X_t + W_hi * H_{t-1} + W_ci ∘ C_{t-1} + b_i)
    f_t = σ(W_xf * X_t + W_hf * H_{t-1} + W_cf ∘ C_{t-1} + b_f)
    C_t = f_t ∘ C_{t-1} + i_t ∘ tanh(W_xc * X_t + W_hc * H_{t-1} + b_c)
    o_t = σ(W_xo * X_t + W_ho * H_{t-1} + W_co ∘ C_t + b_o)
    H_t = o_t ∘ tanh(C_t)

  The input convolutions of all T frames are one convolution over B * T
  frames, outside the scan; the scan does only the hidden-state convolution.
  Gates are stacked in Flax's order (i, g, f, o); ``forget_bias`` is added to
  the forget pre-activation (Flax's cell adds 1). With ``peepholes=False`` and
  the bias split as ``ih`` + ``hh`` this is ``nn.ConvLSTMCell`` (tested).
  """
  features: int = 16
  kernel: int = 3
  peepholes: bool = True
  forget_bias: float = 1.0

  @nn.compact
  def __call__(self, x):
    B, T, H, W, C = x.shape
    F, k = self.features, self.kernel
    init = nn.initializers.lecun_normal()
    w_x = self.param('ih_kernel', init, (k, k, C, 4 * F))
    w_h = self.param('hh_kernel', init, (k, k, F, 4 * F))
    b = self.param('bias', nn.initializers.zeros_init(), (4 * F,))
    peep = (self.param('peephole', nn.initializers.zeros_init(), (3, H, W, F))
            if self.peepholes else jnp.zeros((3, H, W, F), x.dtype))
    xp = conv2d_same(x.reshape(B * T, H, W, C), w_x).reshape(B, T, H, W, 4 * F) + b

    def step(carry, xp_t):
      c, h = carry
      i, g, f, o = jnp.split(xp_t + conv2d_same(h, w_h), 4, axis=-1)
      i = jax.nn.sigmoid(i + peep[0] * c)
      f = jax.nn.sigmoid(f + self.forget_bias + peep[1] * c)
      c = f * c + i * jnp.tanh(g)
      h = jax.nn.sigmoid(o + peep[2] * c) * jnp.tanh(c)
      return (c, h), h

    zeros = jnp.zeros((B, H, W, F), xp.dtype)
    _, hs = lax.scan(step, (zeros, zeros), jnp.swapaxes(xp, 0, 1))
    return jnp.swapaxes(hs, 0, 1)


@register('convlstm')
class ConvLSTM(nn.Module):
  """Clips (B, T, H, W[, C]) -> optional spatial max pool -> stacked ConvLSTM
  layers -> the last frame's hidden map, globally average-pooled -> linear head."""
  features: Sequence[int] = (16,)
  kernel: int = 3
  peepholes: bool = True
  input_pool: int = 1
  dropout: float = 0.0
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    if x.ndim not in (4, 5):
      raise ValueError(f'ConvLSTM: expected clips (B, T, H, W[, C]), got shape {x.shape}')
    if lengths is not None:
      raise ValueError('ConvLSTM: variable-length clips are not supported (no lengths)')
    h = x[..., None] if x.ndim == 4 else x
    if self.input_pool > 1:
      B, T = h.shape[:2]
      p = self.input_pool
      h = nn.max_pool(h.reshape((B * T,) + h.shape[2:]), (p, p), strides=(p, p))
      h = h.reshape((B, T) + h.shape[1:])
    for f in self.features:
      h = ConvLSTMLayer(f, self.kernel, self.peepholes)(h)
    return head(h[:, -1].mean((1, 2)), self.num_outputs, self.dropout, train)
