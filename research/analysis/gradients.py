"""Gradient-flow diagnostics for recurrent models.

* `carry_gradient_norms`: ||dL/d carry_t|| for every time step t (the LSTM
  cell c_t and output y_t, the GRU/Elman hidden state h_t), from the gradient
  of zero probes added to the carry (`Recurrent(probe_carry=True)`). Plotted
  against the time lag T - t it shows gradients vanish (decay) or explode.
* `gate_statistics`: mean activation and saturation fractions of each gate,
  from the activations `Recurrent(collect_gates=True)` stores (config
  ``model.rnn.collect_gates``), found by path in any model (`find_gates`).
* `step_jacobian_norms`: spectral norm of d carry_t / d carry_{t-1} along a
  trajectory, for one sequence.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from research.models.recurrent import GATES


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


def find_gates(intermediates: Mapping) -> dict[str, dict]:
  """Every set of gate activations `Recurrent(collect_gates=True)` sowed, wherever the
  layer sits in the model: ``{path: {gate: (B, T, H)}}``, the path below
  ``intermediates`` ending in the sown name, e.g. ``'Recurrent_0/gates_layer0_fwd'``
  for a model's ``intermediates`` collection (any model with a recurrent layer) or
  ``'gates_layer0_fwd'`` for a bare `Recurrent`'s."""
  found = _find(intermediates, lambda key, value: key.startswith(GATES)
                and not isinstance(value, Mapping))
  return {path: aux for path, (aux,) in found.items()}  # sow keeps a tuple of the values


def layer_params(params: Mapping, layer: str = 'layer0_fwd') -> Mapping:
  """The parameters of one layer and direction (``'layer<l>_<fwd|bwd>'``, a cell's
  name inside `Recurrent`) of the one recurrent layer in a model's ``params``,
  found by path (``params['Recurrent_0']['layer0_fwd']`` for an ``rnn`` model)."""
  found = _find(params, lambda key, value: key == layer and isinstance(value, Mapping))
  if len(found) != 1:
    raise ValueError(f'expected one recurrent {layer!r} in the parameters, found {sorted(found)}')
  return next(iter(found.values()))


def _find(tree: Mapping, match: Callable[[str, Any], bool], prefix: str = '') -> dict[str, Any]:
  """{path: value} of the entries of nested mappings for which ``match(key, value)``
  holds (paths joined with '/'; a match is not searched further)."""
  found = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if match(str(key), value):
      found[path] = value
    elif isinstance(value, Mapping):
      found.update(_find(value, match, path + '/'))
  return found


def gate_statistics(intermediates: Mapping, low: float = 0.1, high: float = 0.9,
                    mask: np.ndarray | None = None) -> dict[str, dict]:
  """{layer/gate: {mean, frac_below_low, frac_above_high}} over all units and the steps
  where ``mask`` (B, T) is true (all steps without it), e.g. the valid frames of a
  right-padded batch. ``intermediates``: a model's ``intermediates`` collection, or a
  part of it; every recurrent layer in it counts (`find_gates`, whose paths name them)."""
  stats = {}
  for layer, aux in find_gates(intermediates).items():
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
