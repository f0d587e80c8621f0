"""A recurrent layer's whole sequence as one custom-VJP op (the cuDNN recipe).

`fast_scan(spec, x, carry0, mask, truncation)` computes what
`research.models.recurrent.scan_cell` computes for a cell's `FastSpec` (same
outputs, same masking of padded steps, same truncated-BPTT cut), but with a
hand-made backward pass:

* forward: the input projection of all steps is one (T*B, D) @ (D, K) matmul;
  a `lax.scan` does only ``rec_in(carry) @ R`` and the cell's elementwise
  math per step, and keeps (as residuals) each step's incoming carry and
  recurrent pre-activation ``hr``.
* backward: a reverse `lax.scan` that per step runs the VJP of the elementwise
  math (recomputed from the residuals, so any gate variant works) and one
  matmul ``d hr @ R^T``; the weight gradients are then *one* matmul each over
  all T*B rows: ``dR = rec_in(carries)^T dhr``, ``dW = x^T dxp``, ``db = sum
  dxp``, ``dx = dxp @ W^T``.

Autodiff of `scan_cell` instead accumulates ``dR`` with a (B, H)^T (B, K) matmul
inside every backward step and threads the scan's bookkeeping (masks,
truncation, stacked residuals) through the transposed loop; see
`scripts/benchmark.py` for the measured difference.

Arrays are time-major inside (T, B, ...); the public function takes and returns
batch-major arrays like `scan_cell`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from research.models.cells import FastSpec


# Where the input projection is hoisted out of the scan by default (measured by
# scripts/benchmark.py; see the README's benchmark section).
HOIST_DEFAULT = {'cpu': False, 'gpu': True, 'tpu': True}


def _tn(a, b):
  """a^T b with every leading axis of a and b flattened into the contraction."""
  a = a.reshape(-1, a.shape[-1])
  b = b.reshape(-1, b.shape[-1])
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


def _mm_t(a, w):
  """a @ w^T over a's last axis (no transposed copy of w)."""
  return jax.lax.dot_general(a, w, (((a.ndim - 1,), (1,)), ((), ())))


def _where_tree(m, a, b):
  return jax.tree.map(lambda u, v: jnp.where(m, u, v), a, b)


def fast_scan(spec: FastSpec, x: jnp.ndarray, carry0, mask: jnp.ndarray, truncation: int = 0,
              unroll: int = 1, hoist: bool | None = None):
  """Runs a cell over x (B, T, D) with right-padding ``mask`` (B, T).

  ``hoist``: compute the input projection of all steps as one matmul before the
  scan (True) or inside it, as ``[x_t, rec_in(carry)] @ [W; R]`` (False; only
  for cells whose step uses ``x_t W + b + hr``, i.e. ``spec.additive``).
  None: `HOIST_DEFAULT` for the backend. The backward pass is the same either way.

  Returns (outputs (B, T, H), zero at padded steps; final carry)."""
  pointwise, rec_in = spec.pointwise, spec.rec_in
  if hoist is None:
    hoist = HOIST_DEFAULT.get(jax.default_backend(), True)

  def forward(W, b, R, pp, x_tm, carry0, mask_tm):
    T, B = x_tm.shape[:2]
    xp, WR = None, None
    if hoist:
      xp = (x_tm.reshape(T * B, -1) @ W + b).reshape(T, B, -1)
    elif spec.additive:
      WR = jnp.concatenate([W, R], 0)

    def body(carry, inp):
      xp_t, x_t, m_t = inp
      if hoist:
        hr = rec_in(carry) @ R
      elif spec.additive:  # one matmul; hr includes x_t W, pointwise adds b
        hr, xp_t = jnp.concatenate([x_t, rec_in(carry)], -1) @ WR, b
      else:
        hr, xp_t = rec_in(carry) @ R, x_t @ W + b
      new, y = pointwise(pp, xp_t, hr, carry)
      m = m_t[:, None]
      keep = None if hoist or spec.additive else xp_t  # for the backward pass
      return _where_tree(m, new, carry), (jnp.where(m, y, 0.0), hr, carry, keep)

    final, (ys, hrs, carries, xp_kept) = jax.lax.scan(
        body, carry0, (xp, None if hoist else x_tm, mask_tm), unroll=unroll)
    xp = xp if xp_kept is None else xp_kept
    return (ys, final), (W, b, R, pp, x_tm, xp, hrs, carries, mask_tm)

  def backward(res, g):
    W, b, R, pp, x_tm, xp, hrs, carries, mask_tm = res
    dys, dfinal = g
    T = x_tm.shape[0]

    def body(acc, inp):
      dcarry, dpp = acc
      xp_t, hr_t, carry_t, m_t, dy_t, t = inp
      xp_t = b if xp_t is None else xp_t
      m = m_t[:, None]
      _, vjp = jax.vjp(pointwise, pp, xp_t, hr_t, carry_t)
      zero = jax.tree.map(jnp.zeros_like, dcarry)
      dpp_t, dxp_t, dhr_t, dcarry_pw = vjp((_where_tree(m, dcarry, zero),
                                            jnp.where(m, dy_t, 0.0)))
      _, rec_vjp = jax.vjp(rec_in, carry_t)
      (dcarry_rec,) = rec_vjp(dhr_t @ RT)
      dprev = jax.tree.map(lambda d, a, r: jnp.where(m, 0.0, d) + a + r,
                           dcarry, dcarry_pw, dcarry_rec)
      if truncation:  # the carry entering step t (t % k == 0) was gradient-stopped
        dprev = jax.tree.map(lambda d: jnp.where(t % truncation == 0, jnp.zeros_like(d), d),
                             dprev)
      return (dprev, jax.tree.map(jnp.add, dpp, dpp_t)), (None if spec.additive else dxp_t, dhr_t)

    RT = jnp.transpose(R)  # materialised once: XLA:CPU's transposed-operand matmul is slower
    dpp0 = jax.tree.map(jnp.zeros_like, pp)
    (dcarry0, dpp), (dxp, dhr) = jax.lax.scan(
        body, (dfinal, dpp0), (xp, hrs, carries, mask_tm, dys, jnp.arange(T)), reverse=True,
        unroll=unroll)
    if spec.additive:
      dxp = dhr
    dR = _tn(rec_in(carries), dhr)
    dW = _tn(x_tm, dxp)
    # A matmul with ones: XLA:CPU lowers this column sum to a slow reduce-window.
    db = jnp.ones((1, T * x_tm.shape[1]), dxp.dtype) @ dxp.reshape(-1, dxp.shape[-1])
    db = db[0]
    dx = _mm_t(dxp, W)
    return dW, db, dR, dpp, dx, dcarry0, None

  op = jax.custom_vjp(lambda *args: forward(*args)[0])
  op.defvjp(forward, backward)
  ys, final = op(spec.W, spec.b, spec.R, spec.pp, jnp.swapaxes(x, 0, 1), carry0,
                 jnp.swapaxes(mask, 0, 1))
  return jnp.swapaxes(ys, 0, 1), final
