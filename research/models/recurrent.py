"""Recurrent layers over time: masking, stacking, direction, truncated BPTT.

`Recurrent` runs a cell from `research.models.cells` with ``jax.lax.scan``
over time. The input projection of all time steps is one matmul done by the
cell before the scan; inside the scan only the recurrent matmul remains.

What is masked: batches are *right*-padded and ``lengths`` gives each
sequence's true length. At a padded step the carry is left unchanged and the
output is zero, so padded steps change neither the state, the last output, nor
(through zero outputs) any loss computed on valid steps; the backward
direction of a bidirectional layer reverses each sequence within its own
length, so it also starts at the last *valid* step.

Truncated BPTT: with ``truncation=k > 0`` the carry passes between chunks of k
steps through ``stop_gradient``, so gradients flow at most k steps back (the
k1 = k2 = k form of Williams & Peng 1990). ``truncation_k2 > truncation`` gives
the general TBPTT(k1, k2): the errors of each chunk of k1 steps flow back k2
steps (`scan_cell_tbptt`). ``truncation=0`` is full BPTT. The forward values
are the same in every case.

Gate activations (LSTM i, f, o, c; GRU r, u) of every step are stored with
``sow`` in the ``intermediates`` collection when ``collect_gates=True``.

Speed: with ``fast=True`` (the default) a layer runs as one custom-VJP op over
the whole sequence (`research.models.fast_rnn`: weight gradients as one matmul
over all steps). It gives the same values and gradients as the generic scan
below and is used for every cell, every LSTM variant, masking, both
directions and truncation k1 = k2; gate collection, carry probes and
TBPTT(k1 < k2) use the generic `scan_cell` / `scan_cell_tbptt`. `scan_path`
is that choice (the layer runs what it returns), with the reasons for a
fallback (`FALLBACK_REASONS`); `record_scan_paths()` collects the choice of
every layer and direction as it is traced.
"""
from __future__ import annotations

import contextlib
import dataclasses
import numbers
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from research.masks import length_mask, masked_mean
from research.models import register
from research.models.cells import make_cell
from research.models.cnn import as_channels_last
from research.models.fast_rnn import default_hoist, fast_scan, step_kind


def reverse_valid(x: jnp.ndarray, lengths: jnp.ndarray | None) -> jnp.ndarray:
  """Reverses each sequence within its valid length (padding stays at the end)."""
  if lengths is None:
    return x[:, ::-1]
  t = jnp.arange(x.shape[1])[None, :]
  L = jnp.asarray(lengths)[:, None]
  idx = jnp.where(t < L, L - 1 - t, t)
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def scan_cell(step, xp, carry0, mask, truncation: int = 0, unroll: int = 1, probe=None):
  """Scans ``step`` over time (axis 1 of ``xp``) with masking and truncation.

  ``probe`` (optional): a pytree like the carry with a leading time axis, added
  to the carry after each step. It is zero; its gradient is dL/d carry_t, the
  quantity whose decay over time lags shows vanishing gradients.

  Returns (outputs (B, T, H) zero at padded steps, per-step aux, final carry)."""
  T = xp.shape[1]

  def body(carry, inp):
    xp_t, m_t, t, probe_t = inp
    if truncation:
      carry = jax.tree.map(
          lambda c: jnp.where(t % truncation == 0, jax.lax.stop_gradient(c), c), carry)
    new, (y, aux) = step(carry, xp_t)
    m = m_t[:, None]
    carry = jax.tree.map(lambda n, o: jnp.where(m, n, o), new, carry)
    if probe_t is not None:
      carry = jax.tree.map(jnp.add, carry, probe_t)
      y = carry[1] if isinstance(carry, tuple) else carry  # the probed output
    return carry, (jnp.where(m, y, 0.0), aux)

  inputs = (jnp.swapaxes(xp, 0, 1), jnp.swapaxes(mask, 0, 1), jnp.arange(T), probe)
  carry, (ys, aux) = jax.lax.scan(body, carry0, inputs, unroll=unroll)
  return jnp.swapaxes(ys, 0, 1), jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), aux), carry


def scan_cell_tbptt(step, xp, carry0, mask, k1: int, k2: int, unroll: int = 1):
  """Truncated BPTT(k1, k2) of Williams & Peng (1990): every k1 steps, backpropagate
  the errors of those k1 steps through the last k2 >= k1 steps.

  The forward pass is computed once without gradient to get every carry; then
  each chunk [j k1, (j+1) k1) is recomputed from the (gradient-stopped) carry
  k2 - k1 steps before it, over a window of k2 steps, keeping the outputs of
  its last k1 steps. Values equal those of `scan_cell`; the gradient of an
  output in chunk j reaches back to step (j+1) k1 - k2 and no further. Costs
  about k2 / k1 times a full pass. Returns (outputs, per-step aux, final carry)."""
  B, T = xp.shape[:2]
  if not 0 < k1 <= k2:
    raise ValueError(f'truncated BPTT needs 0 < k1 <= k2, got k1={k1}, k2={k2}')
  n = -(-T // k1)  # chunks
  lead, tail = k2 - k1, n * k1 - T
  # Carries after each step, without gradient (carry_before[t] = state entering step t).
  carries = _carries(step, jax.lax.stop_gradient(xp), carry0, mask, unroll)
  carries = jax.lax.stop_gradient(carries)  # pytree, leaves (T, B, ...)
  before = jax.tree.map(lambda c0, c: jnp.concatenate([c0[None], c[:-1]], 0), carry0, carries)
  # Left-pad time by `lead` masked steps (the carry passes unchanged through them) and
  # right-pad to whole chunks, then cut windows of k2 steps starting every k1 steps.
  pad = lambda a, v: jnp.pad(a, [(0, 0), (lead, tail)] + [(0, 0)] * (a.ndim - 2),
                             constant_values=v)
  xp_p, mask_p = pad(xp, 0), pad(mask, False)
  idx = jnp.arange(n)[:, None] * k1 + jnp.arange(k2)[None, :]  # (n, k2) into padded time
  xw = jnp.swapaxes(xp_p[:, idx], 0, 1)  # (n, B, k2, K)
  mw = jnp.swapaxes(mask_p[:, idx], 0, 1)
  start = jnp.arange(n) * k1 - lead  # original step where each window starts
  c_start = jax.tree.map(
      lambda c0, b: jnp.where((start >= 0).reshape((n,) + (1,) * c0.ndim),
                              b[jnp.clip(start, 0, T - 1)], c0[None]), carry0, before)
  ys, aux, finals = jax.vmap(lambda x, c, m: scan_cell(step, x, c, m, 0, unroll))(
      xw, c_start, mw)
  keep = lambda a: jnp.swapaxes(a[:, :, lead:], 0, 1).reshape((B, n * k1) + a.shape[3:])[:, :T]
  final = jax.tree.map(lambda f: f[-1], finals)
  return keep(ys), jax.tree.map(keep, aux), final


def _carries(step, xp, carry0, mask, unroll):
  """The masked carry after every step, with a leading time axis."""
  def body(carry, inp):
    xp_t, m_t = inp
    new, _ = step(carry, xp_t)
    carry = jax.tree.map(lambda n, o: jnp.where(m_t[:, None], n, o), new, carry)
    return carry, carry
  _, carries = jax.lax.scan(body, carry0, (jnp.swapaxes(xp, 0, 1), jnp.swapaxes(mask, 0, 1)),
                            unroll=unroll)
  return carries


# Why a layer runs the generic scan instead of fast_rnn.fast_scan.
FALLBACK_REASONS = {
    'fast=False': 'the layer asks for the generic scan',
    'truncation_k2': 'TBPTT(k1 < k2) runs scan_cell_tbptt',
    'collect_gates': 'gate activations are sown at every step',
    'probe_carry': 'zero probes are added to the carry at every step',
    'no FastSpec': "the cell's step has no `fast` attribute (cells.FastSpec)",
}


class ScanPath(NamedTuple):
  """How `Recurrent` runs a layer: ``path`` 'fast' (`fast_rnn.fast_scan`), 'generic'
  (`scan_cell`) or 'tbptt' (`scan_cell_tbptt`); ``reasons``, the keys of
  `FALLBACK_REASONS` that apply (empty on the fast path); on the fast path ``step``,
  the elementwise step (`fast_rnn.step_kind`: 'lstm', 'gru' or 'generic'; None when
  the cell was not given) and ``hoist`` (input projection before the scan)."""
  path: str
  reasons: tuple[str, ...] = ()
  step: str | None = None
  hoist: bool | None = None


def scan_path(layer: 'Recurrent', step=None) -> ScanPath:
  """The scan `Recurrent` runs each layer and direction of ``layer`` with.

  ``step``: the cell's step function (whether it has a ``fast`` spec, and which
  elementwise step fast_scan uses for it). None: a cell with a spec, as every cell
  of `research.models.cells` has; ``ScanPath.step`` is then None."""
  tbptt = bool(layer.truncation_k2) and layer.truncation_k2 != layer.truncation
  spec = getattr(step, 'fast', None)
  reasons = tuple(r for r, applies in (
      ('fast=False', not layer.fast), ('truncation_k2', tbptt),
      ('collect_gates', layer.collect_gates), ('probe_carry', layer.probe_carry),
      ('no FastSpec', step is not None and spec is None)) if applies)
  if reasons:
    return ScanPath('tbptt' if tbptt else 'generic', reasons)
  return ScanPath('fast', (), None if spec is None else step_kind(spec),
                  default_hoist() if layer.hoist is None else bool(layer.hoist))


_RECORDS: list[list] = []


@contextlib.contextmanager
def record_scan_paths():
  """While active, every layer and direction `Recurrent` traces appends
  ``(name, ScanPath)`` to the yielded list (name: the cell's module path, e.g.
  'layer0_fwd' or 'Recurrent_0/layer1_bwd'). Recorded at trace time: a jitted
  function called again with the same shapes is not traced and records nothing."""
  log: list = []
  _RECORDS.append(log)
  try:
    yield log
  finally:
    _RECORDS[:] = [r for r in _RECORDS if r is not log]


def last_valid(x: jnp.ndarray, lengths: jnp.ndarray | None) -> jnp.ndarray:
  """x[b, lengths[b] - 1] (the last step when lengths is None)."""
  if lengths is None:
    return x[:, -1]
  idx = jnp.maximum(jnp.asarray(lengths) - 1, 0)
  return jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]


class Recurrent(nn.Module):
  """A stack of (optionally bidirectional) recurrent layers.

  ``__call__(x, lengths=None) -> (outputs (B, T, H*dirs), final (B, H*dirs))``
  where ``final`` is the top layer's output at each sequence's last valid step
  (forward direction) concatenated with the backward direction's output at step 0.
  """
  cell: str = 'lstm'
  hidden: int = 32
  num_layers: int = 1
  bidirectional: bool = False
  truncation: int = 0
  truncation_k2: int = 0  # > truncation: TBPTT(k1=truncation, k2) (see scan_cell_tbptt)
  unroll: int = 1
  collect_gates: bool = False
  probe_carry: bool = False  # add zero 'perturbations' to every carry (see analysis.gradients)
  cell_options: Any = None  # dict of the cell's own options (variant, forget_bias, ...)
  fast: bool = True  # custom-VJP sequence op (research.models.fast_rnn) where it applies
  # fast path: the input projection of all steps as one matmul before the scan (True)
  # or inside it (False); None: fast_rnn.default_hoist() (GPU/TPU: True, CPU: False)
  hoist: bool | None = None

  @nn.compact
  def __call__(self, x, lengths=None):
    if not isinstance(self.hidden, numbers.Integral) or self.hidden < 1:
      raise ValueError(f'rnn.hidden must be a positive integer, got {self.hidden!r}')
    if not isinstance(self.num_layers, numbers.Integral) or self.num_layers < 1:
      raise ValueError(f'rnn.num_layers must be a positive integer, got {self.num_layers!r}')
    B, T = x.shape[:2]
    mask = length_mask(lengths, B, T)
    options = dict(self.cell_options or {})
    h = x
    for layer in range(self.num_layers):
      outs, finals = [], []
      for direction in (('fwd', 'bwd') if self.bidirectional else ('fwd',)):
        cell = make_cell(self.cell, self.hidden, name=f'layer{layer}_{direction}', **options)
        inp = h if direction == 'fwd' else reverse_valid(h, lengths)
        xp, step, carry0 = cell(inp)
        c0 = carry0(B)
        probe = None
        if self.probe_carry:
          zeros = jax.tree.map(lambda c: jnp.zeros((T,) + c.shape, c.dtype), c0)
          probe = self.perturb(f'carry_layer{layer}_{direction}', zeros)
        how = scan_path(self, step)
        for log in _RECORDS:
          log.append(('/'.join(self.scope.path + (cell.name,)), how))
        if how.path == 'fast':
          ys, _ = fast_scan(step.fast, inp, c0, mask, self.truncation, self.unroll,
                            hoist=how.hoist)
          aux = None
        elif how.path == 'tbptt':
          if probe is not None:
            raise ValueError('probe_carry is not supported with truncation_k2')
          ys, aux, _ = scan_cell_tbptt(step, xp, c0, mask, self.truncation, self.truncation_k2,
                                       self.unroll)
        else:
          ys, aux, _ = scan_cell(step, xp, c0, mask, self.truncation, self.unroll, probe)
        if self.collect_gates:
          self.sow('intermediates', f'{GATES}layer{layer}_{direction}', aux)
        finals.append(last_valid(ys, lengths))
        outs.append(ys if direction == 'fwd' else reverse_valid(ys, lengths))
      h = jnp.concatenate(outs, axis=-1)
    return h, jnp.concatenate(finals, axis=-1)


# Recurrent's options (its dataclass fields): what a model's ``rnn`` field may set.
RNN_OPTIONS = tuple(f.name for f in dataclasses.fields(Recurrent)
                    if f.name not in ('parent', 'name'))
GATES = 'gates_'  # Recurrent sows gate activations as 'gates_layer<l>_<fwd|bwd>' ('intermediates')


def rnn_options(model: type[nn.Module], rnn: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Keyword arguments of `Recurrent` for a model class with an ``rnn`` field: ``rnn``
  (the instance's field, or a config's ``model.rnn``) over the field's default, so a
  caller names only the options that differ from the model's own. A key that is not
  an option of `Recurrent` (`RNN_OPTIONS`) is a ValueError naming it."""
  default = next(f.default for f in dataclasses.fields(model) if f.name == 'rnn')
  options = {**default, **(rnn or {})}
  unknown = sorted(set(options) - set(RNN_OPTIONS))
  if unknown:
    raise ValueError(f'{model.__name__}: rnn has no option(s) {unknown}; '
                     f'Recurrent takes {", ".join(RNN_OPTIONS)}')
  return options


def rnn_config(model: type[nn.Module], rnn: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Every option of `Recurrent` that has a value, as the layer of ``model`` gets it
  (`rnn_options` over Recurrent's own defaults): the ``model.rnn`` sub-config, in which
  any option can then be changed (``--config.model.rnn.truncation=20``)."""
  own = {f.name: f.default for f in dataclasses.fields(Recurrent) if f.name in RNN_OPTIONS}
  return {k: v for k, v in {**own, **rnn_options(model, rnn)}.items() if v is not None}


def head(h, num_outputs: int, dropout: float = 0.0, train: bool = False):
  """Dropout (when > 0) -> Dense(num_outputs). Called inside a model's compact
  ``__call__``: the modules are the caller's own (``Dropout_0``, ``Dense_0``)."""
  h = nn.Dropout(dropout, deterministic=not train)(h) if dropout else h
  return nn.Dense(num_outputs)(h)


def recurrent_head(h, lengths, rnn: Mapping[str, Any], readout_kind: str, num_outputs: int,
                   dropout: float = 0.0, train: bool = False):
  """``Recurrent(**rnn)`` over (B, T, F) -> `readout` -> `head`, inside the caller's
  compact ``__call__``, so its parameters are ``Recurrent_0`` and ``Dense_0`` of the
  calling model."""
  h, final = Recurrent(**rnn)(h, lengths)
  return head(readout(h, final, lengths, readout_kind), num_outputs, dropout, train)


@register('rnn')
class RNNClassifier(nn.Module):
  """Recurrent stack over the sequence, then a linear head.

  ``rnn``: the options of `Recurrent` (cell, hidden, num_layers, bidirectional,
  truncation, unroll, collect_gates, probe_carry, cell_options, fast, ...); keys not
  given keep this field's defaults (`rnn_options`).
  ``readout='flatten'`` concatenates the outputs of every step, as MNIST-1D's
  ``GRUBase`` (bidirectional GRU, hidden 6, linear over 40 * 12 features) does;
  ``'last'`` uses each sequence's last valid output (both directions), ``'mean'``
  the mean over valid steps, ``'sequence'`` applies the head at every step
  (outputs (B, T, num_outputs), for per-step targets).
  """
  rnn: Mapping[str, Any] = FrozenDict(cell='gru', hidden=6, bidirectional=True)
  readout: str = 'flatten'
  num_outputs: int = 10
  member_widths = ('rnn.hidden',)  # may differ between members (research.structure)

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    return recurrent_head(as_channels_last(x), lengths, rnn_options(type(self), self.rnn),
                          self.readout, self.num_outputs)


def readout(h, final, lengths, kind: str):
  if kind == 'flatten':
    return h.reshape(h.shape[0], -1)
  if kind == 'last':
    return final
  if kind == 'sequence':
    return h
  if kind == 'mean':
    return masked_mean(h, lengths)
  raise ValueError(f"readout must be 'flatten', 'last', 'mean' or 'sequence', got {kind!r}")
