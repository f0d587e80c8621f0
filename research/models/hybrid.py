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
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models.cnn import ConvFeatures1D, as_channels_last, masked_mean
from research.models.recurrent import Recurrent, readout


class CNNRNN(nn.Module):
  """Conv stack (B, T, C) -> (B, T', F), recurrent layer over T', linear head."""
  channels: Sequence[int] = (25, 25)
  kernels: Sequence[int] = (5, 3)
  strides: Sequence[int] = (2, 2)
  padding: int | str = 1
  norm: str = 'none'
  pool: int = 0
  conv_dropout: float = 0.0
  cell: str = 'gru'
  hidden: int = 16
  num_layers: int = 1
  bidirectional: bool = True
  readout: str = 'flatten'
  dropout: float = 0.0  # on the recurrent features before the head
  cell_options: Any = None
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    h, lengths = ConvFeatures1D(self.channels, self.kernels, self.strides, self.padding,
                                self.norm, self.pool, self.conv_dropout)(x, train, lengths)
    h, final = Recurrent(self.cell, self.hidden, self.num_layers, self.bidirectional,
                         cell_options=self.cell_options)(h, lengths)
    h = readout(h, final, lengths, self.readout)
    h = nn.Dropout(self.dropout, deterministic=not train)(h) if self.dropout else h
    return nn.Dense(self.num_outputs)(h)


class LSTMFCN(nn.Module):
  """FCN branch || LSTM branch -> concatenate -> linear head (Karim et al. 2018)."""
  channels: Sequence[int] = (128, 256, 128)
  kernels: Sequence[int] = (8, 5, 3)
  norm: str = 'batch'
  cell: str = 'lstm'
  hidden: int = 8
  lstm_input: str = 'shuffle'  # 'shuffle' (the paper) | 'temporal'
  dropout: float = 0.8  # after the LSTM branch, as in the paper
  cell_options: Any = None
  num_outputs: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    x = as_channels_last(x)
    conv, conv_lengths = ConvFeatures1D(self.channels, self.kernels, (1,) * len(self.channels),
                                        padding='same', norm=self.norm)(x, train, lengths)
    conv = masked_mean(conv, conv_lengths)
    if self.lstm_input == 'shuffle':
      _, final = Recurrent(self.cell, self.hidden, bidirectional=False,
                           cell_options=self.cell_options)(jnp.swapaxes(x, 1, 2))
    elif self.lstm_input == 'temporal':
      _, final = Recurrent(self.cell, self.hidden, bidirectional=False,
                           cell_options=self.cell_options)(x, lengths)
    else:
      raise ValueError(f"lstm_input must be 'shuffle' or 'temporal', got {self.lstm_input!r}")
    final = nn.Dropout(self.dropout, deterministic=not train)(final) if self.dropout else final
    return nn.Dense(self.num_outputs)(jnp.concatenate([conv, final], axis=-1))
