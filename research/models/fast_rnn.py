"""A recurrent layer's whole sequence as one custom-VJP op (the cuDNN recipe).

`fast_scan(spec, x, carry0, mask, truncation)` computes what
`research.models.recurrent.scan_cell` computes for a cell's `FastSpec` (same
outputs, same masking of padded steps, same truncated-BPTT cut), but with a
hand-made backward pass:

* forward: a `lax.scan` does ``x_t @ W + b`` and ``rec_in(carry) @ R`` and the
  cell's elementwise math per step, and keeps each step's incoming carry and
  what the step's backward needs (`_Step`).
* backward: a reverse `lax.scan` that per step computes the gradients of the
  step's pre-activations and ``d hr @ R^T``; the weight gradients are then one
  matmul per gate block over all T*B rows: ``dR = rec_in(carries)^T dhr``,
  ``dW = x^T dxp``, ``db = sum dxp``, ``dx = dxp @ W^T``.

The elementwise part of a step comes in two kinds:

* generic (`_generic`; any `FastSpec`, every LSTM variant of the gate study):
  the forward keeps the pre-activations, the backward recomputes the step with
  `jax.vjp` of ``spec.pointwise``.
* hand-written (`_lstm`, `_gru`) for ``spec.manual``, the standard LSTM and the
  GRU: the forward keeps the gate activations and the backward is the
  derivative written out. With the generic step instead, the GRU training step
  takes 15-20% longer, the LSTM one about 3%.

What makes it fast on XLA:CPU (training step, batch 64, length 100, hidden 128;
each measured against the variant without it):

* every per-step residual and gradient is its own (T, B, H) array, one per gate
  block. A fusion that takes a column slice of a per-step slice of a (T, B,
  G*H) array is not vectorised (a tanh of one such block: 8x slower), and a
  concatenate of gate blocks along the last axis is a slow per-element loop
  (nearly as long as the step's matmul).
* the backward pass writes the gradients over the residuals they were computed
  from (`_backward_scan`): a new zero-filled (T, B, H) array costs about as
  much as the loop that writes it. Training steps about 22% faster. The GRU
  and LSTM steps now reuse their memory from call to call (no page faults;
  the previous fast path had ~12k per step, Flax's nn.RNN steps 9-11k, about
  a third to a half of their time in the kernel).
* ``x_t @ W`` is its own matmul inside the loop: not hoisted out of it on CPU
  (hoisting: +35%, the per-step column slices again); ``[x_t, h] @ [W; R]`` is
  20% slower per forward step alone (the concatenate), no different in the
  training step.
* outputs come from the stacked carries when y is part of the carry
  (``_Step.output``): one (T, B, H) array fewer, 1-3%.

At MNIST-1D's size (GRU, hidden 6, bidirectional, 3 vmapped members) the
training step is 1.4x faster than the autodiff scan (the previous fast path,
one stacked (T, B, 3H) residual per kind, was 1.2x slower than it).

Not kept: unrolling (no gain; the in-place backward copies its arrays when
unrolled), accumulating dR and dW inside the backward loop as autodiff does
(-7% to +5%, no consistent gain, and no second core for the big matmuls),
batch-major outputs, distinct fill values for the scan's output arrays (no
measurable gain).

Arrays are time-major inside (T, B, ...); the public function takes and returns
batch-major arrays like `scan_cell`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from research.models.cells import FastSpec


# Where the input projection is hoisted out of the scan by default (measured by
# scripts/benchmark.py; see the README's benchmark section).
HOIST_DEFAULT = {'cpu': False, 'gpu': True, 'tpu': True}


def default_hoist(backend: str | None = None) -> bool:
  """Whether `fast_scan(hoist=None)` hoists the input projection on ``backend``
  (None: JAX's default backend): `HOIST_DEFAULT`, True for backends it does not list."""
  return HOIST_DEFAULT.get(backend or jax.default_backend(), True)


def step_kind(spec: FastSpec, manual: bool = True) -> str:
  """The elementwise step `fast_scan(spec, ..., manual=manual)` runs: 'lstm' or 'gru'
  (hand-written, for ``spec.manual``) or 'generic' (`jax.vjp` of ``spec.pointwise``)."""
  return spec.manual if manual and spec.manual else 'generic'


def _tn(a, b):
  """a^T b with every leading axis of a and b flattened into the contraction."""
  a = a.reshape(-1, a.shape[-1])
  b = b.reshape(-1, b.shape[-1])
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def _mm_t(a, w):
  """a @ w^T over a's last axis (no transposed copy of w)."""
  return jax.lax.dot_general(a, w, (((a.ndim - 1,), (1,)), ((), ())))


def _colsum(a):
  # A matmul with ones: XLA:CPU lowers this column sum to a slow reduce-window.
  a = a.reshape(-1, a.shape[-1])
  return (jnp.ones((1, a.shape[0]), a.dtype) @ a)[0]


def _where_tree(m, a, b):
  return jax.tree.map(lambda u, v: jnp.where(m, u, v), a, b)


def _split(a, n):
  """The n equal column blocks of a (..., n*H)."""
  return tuple(jnp.split(a, n, axis=-1))


class _Step(NamedTuple):
  """The elementwise part of one time step, forward and backward.

  ``forward(pp, xp_t, hr, carry) -> (new_carry, y, saved)``: ``saved`` is a
  tuple of (B, H) arrays (gate blocks), stacked over time for the backward pass.
  ``backward(pp, saved, carry, g, dy) -> (dpp, dcarry, dpre)``: ``g`` and
  ``dy`` are the cotangents of the new carry and of the output (zero at padded
  steps); ``dcarry`` is the gradient reaching the incoming carry other than
  through ``hr``; ``dpre`` a tuple of arrays shaped like ``saved`` (they are
  stacked over the residuals, see `_backward_scan`), of which ``hr_parts`` /
  ``xp_parts`` are the column blocks of the gradients of ``hr`` / ``xp``.
  ``pp_grad(dpre)``, when given, computes the gradient of ``pp`` after the loop
  from the stacked ``dpre`` (then ``backward`` returns None for it).
  ``output(carry)``, when given, is the step's output y read from the carry
  after the step."""
  forward: Callable
  backward: Callable
  hr_parts: tuple
  xp_parts: tuple
  pp_grad: Callable | None = None
  output: Callable | None = None  # y from the carry after the step


def _generic(spec: FastSpec, G: int) -> _Step:
  """Any cell: keep the pre-activations, recompute the step with `jax.vjp` backwards."""
  pointwise = spec.pointwise
  hr_parts = tuple(range(G))

  if spec.additive:  # keep xp_t + hr only
    def forward(pp, xp_t, hr, carry):
      pre = xp_t + hr
      new, y = pointwise(pp, jnp.zeros((), pre.dtype), pre, carry)
      return new, y, _split(pre, G)

    def backward(pp, saved, carry, g, dy):
      pre = jnp.concatenate(saved, -1)  # only sliced by pointwise: XLA removes the copy
      _, vjp = jax.vjp(lambda pp, pre, c: pointwise(pp, jnp.zeros((), pre.dtype), pre, c),
                       pp, pre, carry)
      dpp, dpre, dcarry = vjp((g, dy))
      return dpp, dcarry, _split(dpre, G)
    return _Step(forward, backward, hr_parts, hr_parts)

  def forward(pp, xp_t, hr, carry):
    new, y = pointwise(pp, xp_t, hr, carry)
    return new, y, _split(xp_t, G) + _split(hr, G)

  def backward(pp, saved, carry, g, dy):
    xp_t, hr = jnp.concatenate(saved[:G], -1), jnp.concatenate(saved[G:], -1)
    _, vjp = jax.vjp(pointwise, pp, xp_t, hr, carry)
    dpp, dxp, dhr, dcarry = vjp((g, dy))
    return dpp, dcarry, _split(dhr, G) + _split(dxp, G)
  return _Step(forward, backward, hr_parts, tuple(range(G, 2 * G)))


def _lstm(spec: FastSpec, G: int) -> _Step:
  """The standard LSTM (gate blocks z, i, f, o; carry (c, y, empty)), by hand.

  Keeps z = tanh(.) and i, f, o = sigmoid(.) per step; c and y come with the
  carry, tanh(c_new) is recomputed."""
  def forward(pp, xp_t, hr, carry):
    c, _, prev = carry
    pre_z, pre_i, pre_f, pre_o = _split(xp_t + hr, 4)
    z, i, f, o = (jnp.tanh(pre_z), jax.nn.sigmoid(pre_i), jax.nn.sigmoid(pre_f),
                  jax.nn.sigmoid(pre_o))
    c_new = z * i + c * f
    y = o * jnp.tanh(c_new)
    return (c_new, y, prev), y, (z, i, f, o)

  def backward(pp, saved, carry, g, dy):
    z, i, f, o = saved
    c, _, prev = carry
    tc = jnp.tanh(z * i + c * f)
    dh = g[1] + dy
    dc = g[0] + dh * o * (1.0 - tc * tc)
    dpre = (dc * i * (1.0 - z * z), dc * z * i * (1.0 - i), dc * c * f * (1.0 - f),
            dh * tc * o * (1.0 - o))
    dcarry = (dc * f, jnp.zeros_like(dh), jnp.zeros_like(prev))
    return jax.tree.map(jnp.zeros_like, pp), dcarry, dpre
  return _Step(forward, backward, (0, 1, 2, 3), (0, 1, 2, 3), output=lambda carry: carry[1])


def _gru(spec: FastSpec, G: int) -> _Step:
  """The GRU of `research.models.cells.GRUCell` (pp = b_hn), by hand.

  Keeps r, u = sigmoid(.), n and hn = R_n h + b_hn per step."""
  def forward(b_hn, xp_t, hr, h):
    (x_r, x_u, x_n), (h_r, h_u, h_n) = _split(xp_t, 3), _split(hr, 3)
    r, u = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_u + h_u)
    hn = h_n + b_hn
    n = jnp.tanh(x_n + r * hn)
    h_new = n + u * (h - n)
    return h_new, h_new, (r, u, n, hn)

  def backward(b_hn, saved, h, g, dy):
    r, u, n, hn = saved
    dh = g + dy
    dn = dh * (1.0 - u) * (1.0 - n * n)  # d pre-activation of n
    dr = dn * hn * r * (1.0 - r)
    du = dh * (h - n) * u * (1.0 - u)
    return None, dh * u, (dr, du, dn * r, dn)  # blocks of d hr: 0, 1, 2; of d xp: 0, 1, 3
  return _Step(forward, backward, (0, 1, 2), (0, 1, 3),
               pp_grad=lambda dpre: _colsum(dpre[2]), output=lambda h: h)


_STEPS = {'lstm': _lstm, 'gru': _gru, 'generic': _generic}


def fast_scan(spec: FastSpec, x: jnp.ndarray, carry0, mask: jnp.ndarray, truncation: int = 0,
              unroll: int = 1, hoist: bool | None = None, manual: bool = True):
  """Runs a cell over x (B, T, D) with right-padding ``mask`` (B, T).

  ``hoist``: compute the input projection of all steps as one matmul before the
  scan (True) or ``x_t @ W`` inside it (False). None: `default_hoist()`, i.e.
  `HOIST_DEFAULT` for the backend (hoisted on GPU/TPU, not on CPU). ``unroll``
  applies to the forward scan (the backward one runs one step per iteration, see
  `_backward_scan`). ``manual``: use the hand-written step for ``spec.manual``
  (False: the generic one; for tests); `step_kind` says which step runs.

  Returns (outputs (B, T, H), zero at padded steps; final carry)."""
  rec_in = spec.rec_in
  K = spec.R.shape[1]
  pre = jax.ShapeDtypeStruct((x.shape[0], K), x.dtype)
  G = K // jax.eval_shape(spec.pointwise, spec.pp, pre, pre, carry0)[1].shape[-1]  # gate blocks
  step = _STEPS[step_kind(spec, manual)](spec, G)
  if hoist is None:
    hoist = default_hoist()

  def forward(W, b, R, pp, x_tm, carry0, mask_tm):
    T, B = x_tm.shape[:2]
    xp = (x_tm.reshape(T * B, -1) @ W + b).reshape(T, B, -1) if hoist else None

    def body(carry, inp):
      xp_t, x_t, m_t = inp
      if not hoist:
        xp_t = x_t @ W + b
      new, y, saved = step.forward(pp, xp_t, rec_in(carry) @ R, carry)
      m = m_t[:, None]
      ys = None if step.output else jnp.where(m, y, 0.0)
      return _where_tree(m, new, carry), (ys, carry, saved)

    final, (ys, carries, saved) = jax.lax.scan(
        body, carry0, (xp, None if hoist else x_tm, mask_tm), unroll=unroll)
    if ys is None:  # y_t is in the carry after step t: one array fewer to stack
      nxt = jax.tree.map(lambda c, f: jnp.concatenate([c[1:], f[None]], 0), carries, final)
      ys = jnp.where(mask_tm[..., None], step.output(nxt), 0.0)
    return (ys, final), (W, R, pp, x_tm, saved, carries, mask_tm)

  # The name shows in the traced program (custom_vjp_call's bwd): tests look for it.
  def fast_scan_backward(res, g):
    W, R, pp, x_tm, saved, carries, mask_tm = res
    dys, dfinal = g
    # R^T in row blocks, one per block of d hr (materialised once: XLA:CPU's
    # transposed-operand matmul is slower).
    RT = jnp.split(jnp.transpose(R), len(step.hr_parts), 0)

    def body(dcarry, dpp, saved_t, carry_t, m_t, dy_t, t):
      m = m_t[:, None]
      zero = jax.tree.map(jnp.zeros_like, dcarry)
      dpp_t, dcarry_pw, dpre = step.backward(
          pp, saved_t, carry_t, _where_tree(m, dcarry, zero), jnp.where(m, dy_t, 0.0))
      _, rec_vjp = jax.vjp(rec_in, carry_t)
      (dcarry_rec,) = rec_vjp(sum(dpre[k] @ r for k, r in zip(step.hr_parts, RT)))
      dprev = jax.tree.map(lambda d, a, r: jnp.where(m, 0.0, d) + a + r,
                           dcarry, dcarry_pw, dcarry_rec)
      if truncation:  # the carry entering step t (t % k == 0) was gradient-stopped
        dprev = jax.tree.map(lambda d: jnp.where(t % truncation == 0, jnp.zeros_like(d), d),
                             dprev)
      if dpp is not None:
        dpp = jax.tree.map(jnp.add, dpp, dpp_t)
      return dprev, dpp, dpre

    dpp0 = None if step.pp_grad else jax.tree.map(jnp.zeros_like, pp)
    dcarry0, dpp, dpre = _backward_scan(body, dfinal, dpp0, saved, (carries, mask_tm, dys))
    if step.pp_grad:
      dpp = step.pp_grad(dpre)
    h_in = rec_in(carries).reshape(-1, R.shape[0])
    dR = jnp.concatenate([_tn(h_in, dpre[k]) for k in step.hr_parts], 1)
    dxp = [dpre[k] for k in step.xp_parts]
    dW = jnp.concatenate([_tn(x_tm, d) for d in dxp], 1)
    db = jnp.concatenate([_colsum(d) for d in dxp], 0)
    dx = sum(_mm_t(d, w) for d, w in zip(dxp, jnp.split(W, len(dxp), 1))).reshape(x_tm.shape)
    return dW, db, dR, dpp, dx, dcarry0, None

  op = jax.custom_vjp(lambda *args: forward(*args)[0])
  op.defvjp(forward, fast_scan_backward)
  ys, final = op(spec.W, spec.b, spec.R, spec.pp, jnp.swapaxes(x, 0, 1), carry0,
                 jnp.swapaxes(mask, 0, 1))
  return jnp.swapaxes(ys, 0, 1), final


def _backward_scan(body, dcarry, dpp, saved, xs):
  """The reverse scan of the backward pass; returns (dcarry0, dpp, dpre stacked).

  ``body(dcarry, dpp, saved_t, *xs_t, t) -> (dcarry, dpp, dpre_t)``. The (T, B,
  H) arrays of ``dpre`` are the residual arrays ``saved``, overwritten in place
  (each dpre_t has its saved_t's shape): on CPU a fresh zero-filled (T, B, H)
  output costs about as much as the loop that writes it (measured: the LSTM
  and GRU training steps about 22% faster than with new arrays). dpre_t is written
  one iteration late, from the carry, so that slot t is read only from the
  array in which slot t + 1 was already written: XLA then updates in place.
  With ``unroll`` > 1 it copies the arrays instead, so this loop is not unrolled."""
  T = saved[0].shape[0]

  def step(acc, inp):
    dcarry, dpp, later, bufs = acc
    t = inp[-1]
    # Slot T - 1 first gets its own residuals back.
    bufs = tuple(jax.lax.dynamic_update_index_in_dim(a, v, jnp.minimum(t + 1, T - 1), 0)
                 for a, v in zip(bufs, later))
    saved_t = tuple(jax.lax.dynamic_index_in_dim(a, t, 0, keepdims=False) for a in bufs)
    dcarry, dpp, dpre_t = body(dcarry, dpp, saved_t, *inp)
    assert [a.shape for a in dpre_t] == [a.shape for a in saved_t], 'dpre_t must match saved_t'
    return (dcarry, dpp, dpre_t, bufs), None

  last = tuple(a[T - 1] for a in saved)
  (dcarry, dpp, first, bufs), _ = jax.lax.scan(
      step, (dcarry, dpp, last, saved), xs + (jnp.arange(T),), reverse=True)
  # Slot 0 written as the first rows of the (T * B, H) matrix the weight gradients
  # use: as a (T, B, H) update XLA fuses the reshape into a copy of the array.
  return dcarry, dpp, tuple(jax.lax.dynamic_update_slice(a.reshape(-1, a.shape[-1]), v, (0, 0))
                            for a, v in zip(bufs, first))
