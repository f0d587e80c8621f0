"""Recurrent layers over time.

For now the cells are Flax's own (`nn.GRUCell`, `nn.OptimizedLSTMCell`,
`nn.SimpleCell`) run by `nn.RNN`, which is an `nn.scan` over time.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from research.models.cnn import as_channels_last

CELLS = {
    'gru': nn.GRUCell,
    'lstm': nn.OptimizedLSTMCell,
    'elman': nn.SimpleCell,
}


class RecurrentLayer(nn.Module):
  """One (optionally bidirectional) recurrent layer returning all outputs (B, T, H[*2])."""
  cell: str = 'gru'
  hidden: int = 32
  bidirectional: bool = False

  @nn.compact
  def __call__(self, x):
    if self.cell not in CELLS:
      raise ValueError(f'Unknown cell {self.cell!r}; known: {sorted(CELLS)}')
    make = lambda: nn.RNN(CELLS[self.cell](features=self.hidden))
    if self.bidirectional:
      return nn.Bidirectional(make(), make())(x)
    return make()(x)


class RNNClassifier(nn.Module):
  """Recurrent layer over the sequence, then a linear head.

  ``readout='flatten'`` concatenates the outputs of every step, as MNIST-1D's
  ``GRUBase`` (bidirectional GRU, hidden 6, linear over 40 * 12 features) does;
  ``'last'`` uses the final step only.
  """
  cell: str = 'gru'
  hidden: int = 6
  bidirectional: bool = True
  readout: str = 'flatten'
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = RecurrentLayer(self.cell, self.hidden, self.bidirectional)(as_channels_last(x))
    if self.readout == 'flatten':
      h = h.reshape(h.shape[0], -1)
    elif self.readout == 'last':
      h = h[:, -1]
    else:
      raise ValueError(f"readout must be 'flatten' or 'last', got {self.readout!r}")
    return nn.Dense(self.num_outputs)(h)
