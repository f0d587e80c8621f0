"""CNN -> RNN hybrids: convolutions extract local features, a recurrent layer
models their order (DeepConvLSTM-style, Ordóñez & Roggen 2016)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

from research.models.cnn import ConvFeatures1D
from research.models.recurrent import Recurrent, readout


class CNNRNN(nn.Module):
  """Conv stack (B, T, C) -> (B, T', F), recurrent layer over T', linear head."""
  channels: Sequence[int] = (25, 25)
  kernels: Sequence[int] = (5, 3)
  strides: Sequence[int] = (2, 2)
  cell: str = 'gru'
  hidden: int = 16
  bidirectional: bool = True
  readout: str = 'flatten'
  cell_options: Any = None
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = ConvFeatures1D(self.channels, self.kernels, self.strides)(x, train)
    h, final = Recurrent(self.cell, self.hidden, bidirectional=self.bidirectional,
                         cell_options=self.cell_options)(h)
    return nn.Dense(self.num_outputs)(readout(h, final, None, self.readout))
