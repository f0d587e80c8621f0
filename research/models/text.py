"""Character language models and sampling from them.

`CharLM`: embedding -> causal 1-D conv blocks (none for ``channels=()``) ->
recurrent layer (none for ``rnn.cell='none'``) -> a next-character softmax at
every step. Every stage is causal, so the output at step t depends on
characters <= t only (tested): the three ablations of the `text` study are
CNN + LSTM (a char CNN-LSTM, the "predictive text" hybrid), LSTM only and
CNN only (a receptive field of sum(k - 1) + 1 characters).

`sample`: autoregressive generation with temperature, one jitted loop.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from research.models import register
from research.models.cnn import ConvFeatures1D
from research.models.recurrent import head, recurrent_head, rnn_options


@register('char_lm')
class CharLM(nn.Module):
  """ids (B, T) int -> logits (B, T, vocab)."""
  embed: int = 32
  channels: Sequence[int] = (128,)
  kernels: Sequence[int] = (5,)
  norm: str = 'none'
  conv_dropout: float = 0.0
  # `Recurrent`'s options over these defaults (`recurrent.rnn_options`); cell 'none': the
  # conv features go straight to the head
  rnn: Mapping[str, Any] = FrozenDict(cell='lstm', hidden=256)
  dropout: float = 0.0
  num_outputs: int = 100  # the vocabulary size
  member_widths = ('embed', 'channels', 'rnn.hidden')  # may differ between members

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f'CharLM: expected integer ids (B, T), got {x.dtype} {x.shape}')
    if self.norm == 'batch':
      raise ValueError("CharLM: batch norm would mix future steps into a step's statistics; "
                       "use norm='layer' or 'none'")
    if self.channels and len(self.kernels) != len(self.channels):
      raise ValueError(f'CharLM: {len(self.channels)} conv channels but {len(self.kernels)} '
                       'kernel sizes')
    rnn = rnn_options(type(self), self.rnn)
    if rnn.get('bidirectional'):
      raise ValueError("CharLM: a bidirectional layer would read the characters it predicts; "
                       'set rnn.bidirectional=False')
    h = nn.Embed(self.num_outputs, self.embed)(x)
    if self.channels:
      h, lengths = ConvFeatures1D(self.channels, self.kernels, (1,) * len(self.channels),
                                  'causal', self.norm, 0, self.conv_dropout)(h, train, lengths)
    if rnn['cell'] == 'none':
      return head(h, self.num_outputs, self.dropout, train)
    return recurrent_head(h, lengths, rnn, 'sequence', self.num_outputs, self.dropout, train)


def sample(model: nn.Module, variables, prime: jnp.ndarray, length: int, rng,
           temperature: float = 1.0, context: int = 100) -> jnp.ndarray:
  """Continues ``prime`` (P,) ids by ``length`` characters; returns (P + length,).

  Each new character is drawn from softmax(logits / temperature) (argmax for
  temperature 0) of the model applied to the last ``context`` characters (the
  training chunk length: the model never saw longer contexts). While fewer
  than ``context`` characters exist the window is right-padded; causality
  makes the padding invisible to the step that is read.
  """
  P = prime.shape[0]
  total = P + length
  buf = jnp.zeros((max(total, context),), jnp.int32).at[:P].set(prime)

  def body(t, carry):  # writes position t from the characters before it
    buf, rng = carry
    start = jnp.clip(t - context, 0, buf.shape[0] - context)
    window = jax.lax.dynamic_slice(buf, (start,), (context,))
    logits = model.apply(variables, window[None])[0, t - 1 - start]
    rng, key = jax.random.split(rng)
    if temperature == 0:
      nxt = jnp.argmax(logits)
    else:
      nxt = jax.random.categorical(key, logits / temperature)
    return buf.at[t].set(nxt.astype(jnp.int32)), rng

  buf, _ = jax.jit(lambda b, r: jax.lax.fori_loop(P, total, body, (b, r)))(buf, rng)
  return buf[:total]
