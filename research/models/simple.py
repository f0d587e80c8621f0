"""Non-recurrent baselines: linear classifier and residual MLP."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from research.masks import zero_padding
from research.models import register


@register('linear')
class Linear(nn.Module):
  """Flatten, then one dense layer (MNIST-1D's ``LinearBase``: 40 -> 10)."""
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    x = zero_padding(x, lengths)  # whatever padded steps hold, they count as zeros
    return nn.Dense(self.num_outputs)(x.reshape(x.shape[0], -1))


@register('mlp')
class ResidualMLP(nn.Module):
  """``h1 = relu(W1 x); h2 = h1 + relu(W2 h1); y = W3 h2`` (MNIST-1D's ``MLPBase``)."""
  hidden: int = 100
  num_outputs: int = 10
  dropout: float = 0.0
  member_widths = ('hidden',)  # may differ between members (research.structure)

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    x = zero_padding(x, lengths)  # whatever padded steps hold, they count as zeros
    h = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    h = h + nn.relu(nn.Dense(self.hidden)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(self.num_outputs)(h)
