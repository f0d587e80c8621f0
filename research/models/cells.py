"""Recurrent cells: the LSTM of Greff et al. with every gate variant, GRU, Elman RNN.

A cell is a Flax module called once per *sequence*: ``cell(xs)`` with ``xs`` of
shape (B, T, D) creates the parameters, computes the input projection of all
time steps as one matmul, and returns ``(xp, step, carry0)``:

* ``xp``: (B, T, K) projected inputs (bias included);
* ``step(carry, xp_t) -> (carry, (y_t, gates_t))``: a pure function of one time
  step that closes over the recurrent parameters;
* ``carry0(batch)``: the zero initial state.

`research.models.recurrent` scans ``step`` over time (masking, direction,
truncation); the cell only states its equations.

LSTM (Greff, Srivastava, Koutník, Steunebrink & Schmidhuber, "LSTM: A Search
Space Odyssey", IEEE TNNLS 2017, Sec. II), with x_t the input, y_{t-1} the
previous output, c the cell, ⊙ elementwise, g = h = tanh, σ the logistic:

    z_t = g(W_z x_t + R_z y_{t-1} + b_z)                        block input
    i_t = σ(W_i x_t + R_i y_{t-1} + p_i ⊙ c_{t-1} + b_i)        input gate
    f_t = σ(W_f x_t + R_f y_{t-1} + p_f ⊙ c_{t-1} + b_f)        forget gate
    c_t = z_t ⊙ i_t + c_{t-1} ⊙ f_t                             cell
    o_t = σ(W_o x_t + R_o y_{t-1} + p_o ⊙ c_t + b_o)            output gate
    y_t = h(c_t) ⊙ o_t                                          block output

Variants (``variant=``), each one change to ``vanilla``:

    NIG   no input gate        i_t = 1
    NFG   no forget gate       f_t = 1
    NOG   no output gate       o_t = 1
    NIAF  no input activation  g(x) = x
    NOAF  no output activation h(x) = x
    NP    no peepholes         p_i = p_f = p_o = 0      ('standard': PyTorch's / Flax's LSTM)
    CIFG  coupled gates        f_t = 1 - i_t
    FGR   full gate recurrence each gate also receives i_{t-1}, f_{t-1}, o_{t-1}
                               through its own recurrent matrices (9 more H x H)

Gates a variant removes have no parameters. ``variant`` may also be a tuple of
variants: the mixed cell of a population whose members differ in variant
(`research.structure`), with every gate, the peepholes and full gate recurrence
of any of them, each member computing its own variant's equations from its row
of flags (`MIXED_FLAGS`, selected by the ``structure`` collection's
``lstm_variant`` index). Knobs: ``forget_bias`` and
``input_bias`` (initial b_f, b_i), ``input_gate_act`` ('sigmoid' or
'hard_sigmoid').

GRU (Cho et al. 2014; the convention of PyTorch and Flax's ``GRUCell``)::

    r = σ(W_r x + b_r + R_r h)       u = σ(W_u x + b_u + R_u h)
    n = tanh(W_n x + b_n + r ⊙ (R_n h + b_hn))       h' = (1 - u) ⊙ n + u ⊙ h

Elman RNN: ``h' = act(W x + R h + b)`` with act tanh, sigmoid or relu, and the
recurrent matrix initialised orthogonal, dense Gaussian, or sparse ("smart"
initialisation: Sutskever et al. 2013, used by Pascanu et al. 2013: 15 non-zero
incoming weights per unit), scaled to a chosen spectral radius.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LSTM_VARIANTS = ('vanilla', 'NIG', 'NFG', 'NOG', 'NIAF', 'NOAF', 'NP', 'CIFG', 'FGR', 'standard')

_ACTS: dict[str, Callable] = {
    'tanh': jnp.tanh, 'sigmoid': jax.nn.sigmoid, 'relu': jax.nn.relu,
    'hard_sigmoid': jax.nn.hard_sigmoid, 'identity': lambda x: x,
}


def lstm_structure(variant: str | tuple[str, ...]) -> dict[str, Any]:
  """Which gates, peepholes and activations a Greff variant has.

  A tuple of variants is the *mixed* cell of a population whose members differ
  in variant (`research.structure`): every gate (z, i, f, o), the peepholes and
  the full gate recurrence of any of them, and ``flags``, one row per variant
  (`MIXED_FLAGS`) saying what its members compute."""
  if isinstance(variant, (tuple, list)):
    parts = [lstm_structure(v) for v in variant]
    return {
        'gates': ['z', 'i', 'f', 'o'],
        'peepholes': [g for g in ('i', 'f', 'o') if any(g in p['peepholes'] for p in parts)],
        'g': 'mixed', 'h': 'mixed', 'coupled': False,
        'full_gate_recurrence': any(p['full_gate_recurrence'] for p in parts),
        'flags': np.array([[g in p['gates'] for g in ('i', 'f', 'o')]
                           + [p['coupled'], p['g'] == 'identity', p['h'] == 'identity']
                           for p in parts], np.float32),
    }
  if variant not in LSTM_VARIANTS:
    raise ValueError(f'Unknown LSTM variant {variant!r}; known: {list(LSTM_VARIANTS)}')
  v = 'NP' if variant == 'standard' else variant
  gates = ['z'] + [g for g, drop in (('i', 'NIG'), ('f', 'NFG'), ('o', 'NOG')) if v != drop]
  if v == 'CIFG':
    gates.remove('f')
  return {
      'gates': gates,
      'peepholes': [] if v == 'NP' else [g for g in ('i', 'f', 'o') if g in gates],
      'g': 'identity' if v == 'NIAF' else 'tanh',
      'h': 'identity' if v == 'NOAF' else 'tanh',
      'coupled': v == 'CIFG',
      'full_gate_recurrence': v == 'FGR',
  }


# Columns of lstm_structure(tuple)['flags']: has i, has f, has o, f = 1 - i,
# identity block-input activation g, identity output activation h.
MIXED_FLAGS = ('has_i', 'has_f', 'has_o', 'coupled', 'g_identity', 'h_identity')


class LSTMCell(nn.Module):
  hidden: int
  variant: str = 'vanilla'
  forget_bias: float = 1.0
  input_bias: float = 0.0
  input_gate_act: str = 'sigmoid'
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_init: Callable = nn.initializers.orthogonal()

  @nn.compact
  def __call__(self, xs):
    s = lstm_structure(self.variant)
    mixed = 'flags' in s
    H, gates = self.hidden, s['gates']
    G = len(gates)
    D = xs.shape[-1]

    def bias_init(key, shape, dtype=jnp.float32):
      b = jnp.zeros((G, H), dtype)
      if 'f' in gates:
        b = b.at[gates.index('f')].set(self.forget_bias)
      if 'i' in gates:
        b = b.at[gates.index('i')].set(self.input_bias)
      return b.reshape(shape)

    W = self.param('W', self.kernel_init, (D, G * H))
    b = self.param('b', bias_init, (G * H,))
    R = self.param('R', _stacked(self.recurrent_init, G), (H, G * H))
    P = {g: self.param(f'p_{g}', nn.initializers.zeros_init(), (H,)) for g in s['peepholes']}
    gate_rec = [g for g in ('i', 'f', 'o') if g in gates]
    if s['full_gate_recurrence']:
      n = len(gate_rec)
      R_gates = self.param('R_gates', _stacked(self.recurrent_init, n), (n * H, n * H))
    if mixed:
      # The member's variant: an index into self.variant, set per member by
      # research.structure; its row of flags goes with the peepholes (pp).
      which = self.variable('structure', 'lstm_variant', lambda: jnp.int32(0))
      P = {**P, '_flags': jnp.asarray(s['flags'])[which.value]}
    xp = xs @ W + b
    i_act = _ACTS[self.input_gate_act]
    if mixed:
      on = lambda P, k: P['_flags'][MIXED_FLAGS.index(k)] > 0.5
      g_act = lambda P, x: jnp.where(on(P, 'g_identity'), x, jnp.tanh(x))
      h_act = lambda P, x: jnp.where(on(P, 'h_identity'), x, jnp.tanh(x))
    else:
      g_act = lambda P, x, f=_ACTS[s['g']]: f(x)
      h_act = lambda P, x, f=_ACTS[s['h']]: f(x)

    def pointwise(P, xp_t, hr, carry):
      """One step given hr, the recurrent part of the pre-activations (B, G*H)."""
      c, _, prev = carry
      pre = xp_t + hr
      part = dict(zip(gates, split_gates(pre, G)))
      one = jnp.ones_like(c)
      z = g_act(P, part['z'])
      i = i_act(part['i'] + (P['i'] * c if 'i' in P else 0.0)) if 'i' in gates else one
      if 'f' in gates:
        f = jax.nn.sigmoid(part['f'] + (P['f'] * c if 'f' in P else 0.0))
      else:
        f = 1.0 - i if s['coupled'] else one
      if mixed:  # a removed gate is 1; a coupled forget gate is 1 - i
        i = jnp.where(on(P, 'has_i'), i, one)
        f = jnp.where(on(P, 'has_f'), f, jnp.where(on(P, 'coupled'), 1.0 - i, one))
      c_new = z * i + c * f
      o = jax.nn.sigmoid(part['o'] + (P['o'] * c_new if 'o' in P else 0.0)) if 'o' in gates else one
      if mixed:
        o = jnp.where(on(P, 'has_o'), o, one)
      y_new = h_act(P, c_new) * o
      acts = {'i': i, 'f': f, 'o': o}
      prev_new = (jnp.concatenate([acts[g] for g in gate_rec], -1)
                  if s['full_gate_recurrence'] else prev)
      return (c_new, y_new, prev_new), (y_new, {'i': i, 'f': f, 'o': o, 'c': c_new})

    def step(carry, xp_t):
      _, y, prev = carry
      hr = y @ R
      if s['full_gate_recurrence']:
        rec = prev @ R_gates
        hr = hr.reshape(hr.shape[:-1] + (G, H))
        for k, g in enumerate(gate_rec):
          hr = hr.at[..., gates.index(g), :].add(rec[..., k * H:(k + 1) * H])
        hr = hr.reshape(hr.shape[:-2] + (G * H,))
      return pointwise(P, xp_t, hr, carry)

    def carry0(batch):
      zeros = jnp.zeros((batch, H), xp.dtype)
      prev = (jnp.zeros((batch, len(gate_rec) * H), xp.dtype)
              if s['full_gate_recurrence'] else jnp.zeros((batch, 0), xp.dtype))
      return (zeros, zeros, prev)

    if s['full_gate_recurrence']:
      # [y, prev] @ [[R], [R_gates placed in its gates' columns]]: one recurrent matmul.
      blocks = [jnp.zeros((len(gate_rec) * H, H), R.dtype)] * G
      for k, g in enumerate(gate_rec):
        blocks[gates.index(g)] = R_gates[:, k * H:(k + 1) * H]
      R_in = jnp.concatenate([R, jnp.concatenate(blocks, 1)], 0)
      rec_in = lambda carry: jnp.concatenate([carry[1], carry[2]], -1)
    else:
      R_in, rec_in = R, _lstm_output
    standard = (not mixed and self.variant in ('standard', 'NP')
                and self.input_gate_act == 'sigmoid')
    manual = 'lstm' if standard else None
    step.fast = FastSpec(W, b, R_in, P, _drop_aux(pointwise), rec_in, additive=True, manual=manual)
    return xp, step, carry0


class GRUCell(nn.Module):
  hidden: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  recurrent_init: Callable = nn.initializers.orthogonal()

  @nn.compact
  def __call__(self, xs):
    H, D = self.hidden, xs.shape[-1]
    W = self.param('W', self.kernel_init, (D, 3 * H))  # columns: r, u, n
    b = self.param('b', nn.initializers.zeros_init(), (3 * H,))
    R = self.param('R', _stacked(self.recurrent_init, 3), (H, 3 * H))
    b_hn = self.param('b_hn', nn.initializers.zeros_init(), (H,))
    xp = xs @ W + b

    def pointwise(b_hn, xp_t, hr, h):
      (xr, xu, xn), (hr_r, hr_u, hr_n) = split_gates(xp_t, 3), split_gates(hr, 3)
      r = jax.nn.sigmoid(xr + hr_r)
      u = jax.nn.sigmoid(xu + hr_u)
      n = jnp.tanh(xn + r * (hr_n + b_hn))
      h_new = (1.0 - u) * n + u * h
      return h_new, (h_new, {'r': r, 'u': u})

    def step(h, xp_t):
      return pointwise(b_hn, xp_t, h @ R, h)

    step.fast = FastSpec(W, b, R, b_hn, _drop_aux(pointwise), _identity, manual='gru')
    return xp, step, lambda batch: jnp.zeros((batch, H), xp.dtype)


def sparse_init(nonzero: int = 15):
  """Each unit (column) gets ``nonzero`` N(0, 1) incoming weights, the rest 0."""
  def init(key, shape, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, shape, dtype)
    n_in = shape[0]
    ranks = jnp.argsort(jax.random.uniform(k2, shape), axis=0)
    return jnp.where(ranks < min(nonzero, n_in), w, 0.0).astype(dtype)
  return init


def _spectral_radius(w: np.ndarray) -> np.ndarray:
  return np.max(np.abs(np.linalg.eigvals(np.asarray(w, np.float64)))).astype(np.float32)


def scaled_to_radius(base: Callable, radius: float):
  """Rescales a square matrix from ``base`` to spectral radius ``radius``.

  The eigenvalues are computed on the host (`jax.pure_callback`), so this works
  on any backend and under ``vmap``."""
  def init(key, shape, dtype=jnp.float32):
    w = base(key, shape, dtype)
    rho = jax.pure_callback(_spectral_radius, jax.ShapeDtypeStruct((), jnp.float32), w,
                            vmap_method='sequential')
    return (w * (radius / jnp.maximum(rho, 1e-12))).astype(dtype)
  return init


class ElmanCell(nn.Module):
  hidden: int
  activation: str = 'tanh'
  recurrent_init_kind: str = 'orthogonal'  # 'orthogonal' | 'normal' | 'sparse'
  spectral_radius: float = 1.0  # 0 keeps the base initialiser's scale
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, xs):
    H, D = self.hidden, xs.shape[-1]
    if self.activation not in ('tanh', 'sigmoid', 'relu'):
      raise ValueError(f"Elman activation must be tanh, sigmoid or relu, got {self.activation!r}")
    base = {'orthogonal': nn.initializers.orthogonal(),
            'normal': nn.initializers.normal(1.0 / np.sqrt(H)),
            'sparse': sparse_init()}.get(self.recurrent_init_kind)
    if base is None:
      raise ValueError(f'Unknown recurrent_init_kind {self.recurrent_init_kind!r}')
    rec_init = scaled_to_radius(base, self.spectral_radius) if self.spectral_radius else base
    W = self.param('W', self.kernel_init, (D, H))
    b = self.param('b', nn.initializers.zeros_init(), (H,))
    R = self.param('R', rec_init, (H, H))
    act = _ACTS[self.activation]
    xp = xs @ W + b

    def pointwise(_, xp_t, hr, h):
      h_new = act(xp_t + hr)
      return h_new, (h_new, {})

    def step(h, xp_t):
      return pointwise((), xp_t, h @ R, h)

    step.fast = FastSpec(W, b, R, (), _drop_aux(pointwise), _identity, additive=True)
    return xp, step, lambda batch: jnp.zeros((batch, H), xp.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def split_gates(pre: jnp.ndarray, n: int) -> tuple[jnp.ndarray, ...]:
  """The n equal column blocks of ``pre`` (..., n*H), one per gate.

  Same values as slicing; the gradient is one ``concatenate`` of the blocks'
  cotangents, where autodiff of slices gives n pads and adds (XLA:CPU emits
  those element by element; measured 5-10x slower in the backward pass)."""
  return tuple(jnp.split(pre, n, axis=-1))


def _split_fwd(pre, n):
  return split_gates(pre, n), pre.shape[-1] // n


def _split_bwd(n, block, cts):
  return (jnp.concatenate(cts, -1),)


split_gates.defvjp(_split_fwd, _split_bwd)


class FastSpec(NamedTuple):
  """What `research.models.fast_rnn` needs to run a cell over a whole sequence.

  One step is ``carry, y = pointwise(pp, x_t @ W + b, rec_in(carry) @ R, carry)``:
  ``pointwise`` is elementwise in the batch (it may slice gates and use ``pp``,
  the cell's non-matrix parameters such as peepholes), ``rec_in`` picks the
  recurrent matmul's input from the carry (it must also work with a leading time
  axis). The K columns of W and R are G gate blocks as wide as y. `step`
  computes exactly this, with the auxiliary gates added."""
  W: jnp.ndarray
  b: jnp.ndarray
  R: jnp.ndarray
  pp: Any
  pointwise: Callable
  rec_in: Callable
  additive: bool = False  # pointwise uses xp_t and hr only through xp_t + hr
  # fast_rnn's hand-written step with the same math as pointwise: 'lstm' (the
  # standard LSTM: gates z, i, f, o, no peepholes, sigmoid gates) or 'gru'.
  manual: str | None = None


def _drop_aux(pointwise: Callable) -> Callable:
  def without_aux(pp, xp_t, hr, carry):
    carry, (y, _) = pointwise(pp, xp_t, hr, carry)
    return carry, y
  return without_aux


def _identity(carry):
  return carry


def _lstm_output(carry):
  return carry[1]


def _stacked(init: Callable, n: int) -> Callable:
  """Initialises an (H, n*H) matrix as n independent (H, H) blocks."""
  def wrapped(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, n)
    return jnp.concatenate([init(k, (rows, cols // n), dtype) for k in keys], axis=1)
  return wrapped


CELLS = {'lstm': LSTMCell, 'gru': GRUCell, 'elman': ElmanCell}


def make_cell(kind: str, hidden: int, **options) -> nn.Module:
  if kind not in CELLS:
    raise ValueError(f'Unknown cell {kind!r}; known: {sorted(CELLS)}')
  return CELLS[kind](hidden=hidden, **options)
