"""Gradient-flow diagnostics for recurrent models.

* `carry_gradient_norms`: ||dL/d carry_t|| for every time step t (the LSTM
  cell c_t and output y_t, the GRU/Elman hidden state h_t), from the gradient
  of zero probes added to the carry (`Recurrent(probe_carry=True)`). Plotted
  against the time lag T - t it shows gradients vanish (decay) or explode.
* `gate_statistics`: mean activation and saturation fractions of each gate,
  from the activations `Recurrent(collect_gates=True)` stores.
* `step_jacobian_norms`: spectral norm of d carry_t / d carry_{t-1} along a
  trajectory, for one sequence.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np


def carry_gradient_norms(apply: Callable, variables: dict, loss: Callable) -> dict[str, np.ndarray]:
  """Per-step gradient norms of ``loss(apply(variables))`` w.r.t. each probed carry.

  ``apply(variables)`` runs the model (built with ``probe_carry=True``) and
  ``variables`` must hold the ``perturbations`` collection from ``init``.
  Returns {probe name / carry component: (T,) mean over the batch of the L2 norm}.
  """
  perturbations = variables['perturbations']
  rest = {k: v for k, v in variables.items() if k != 'perturbations'}
  grads = jax.grad(lambda p: loss(apply({**rest, 'perturbations': p})))(perturbations)
  out = {}
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    if g.ndim < 3 or g.shape[-1] == 0:
      continue  # e.g. the empty FGR slot of a non-FGR LSTM
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    out[name] = np.asarray(jnp.mean(jnp.linalg.norm(g, axis=-1), axis=-1))  # (T,)
  return out


def gate_statistics(intermediates: dict, low: float = 0.1, high: float = 0.9,
                    mask: np.ndarray | None = None) -> dict[str, dict]:
  """{layer/gate: {mean, frac_below_low, frac_above_high}} over all units and the steps
  where ``mask`` (B, T) is true (all steps without it), e.g. the valid frames of a
  right-padded batch."""
  stats = {}
  for layer, (aux,) in intermediates.items():
    for gate, a in aux.items():
      if gate == 'c':
        continue
      a = np.asarray(a)  # (B, T, H)
      if mask is not None:
        a = a[np.asarray(mask, bool)]  # (valid steps, H)
      stats[f'{layer}/{gate}'] = {'mean': float(a.mean()), f'frac_below_{low}': float((a < low).mean()),
                                  f'frac_above_{high}': float((a > high).mean())}
  return stats


def step_jacobian_norms(step: Callable, carry0: Any, xp: jnp.ndarray) -> np.ndarray:
  """Spectral norms of d carry_t / d carry_{t-1} along one sequence (xp: (T, K))."""
  flat0, unravel = jax.flatten_util.ravel_pytree(carry0)

  def f(flat, x):
    return jax.flatten_util.ravel_pytree(step(unravel(flat), x)[0])[0]

  def body(flat, x):
    J = jax.jacrev(f)(flat, x)  # reverse mode: the GRU step has a custom VJP
    return f(flat, x), jnp.linalg.norm(J, ord=2)

  _, norms = jax.lax.scan(body, flat0, xp)
  return np.asarray(norms)
