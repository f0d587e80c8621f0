"""Recurrent cells and the sequence layer against independent references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import flax.linen as nn

from research.models.cells import LSTM_VARIANTS, ElmanCell, GRUCell, LSTMCell
from research.models.recurrent import Recurrent

B, T, D, H = 3, 6, 4, 5


def _sig(x):
  return 1.0 / (1.0 + np.exp(-x))


# The blocks each variant computes: z (block input), i, f, o; a missing gate is 1, except
# CIFG's forget gate, 1 - i (Greff et al. 2017, Sec. III).
GREFF_GATES = {'vanilla': 'zifo', 'NIG': 'zfo', 'NFG': 'zio', 'NOG': 'zif', 'NIAF': 'zifo',
               'NOAF': 'zifo', 'NP': 'zifo', 'CIFG': 'zio', 'FGR': 'zifo', 'standard': 'zifo'}


def numpy_greff_lstm(params, xs, variant):
  """Greff et al. (2017) Sec. II, written out per time step in float64. Which gates and
  peepholes each variant has is written here, not read from the code under test;
  the parameter layout (W, R, b columns in z, i, f, o order of the present gates) is
  the code's convention."""
  gates = GREFF_GATES[variant]
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  W, R, b = p['W'], p['R'], p['b']
  assert W.shape[1] == len(gates) * H
  col = {g: slice(k * H, (k + 1) * H) for k, g in enumerate(gates)}
  has_peep = variant not in ('NP', 'standard')
  peep = {g: p[f'p_{g}'] if has_peep and g in gates else np.zeros(H) for g in 'ifo'}
  assert has_peep or not any(k.startswith('p_') for k in p)
  g_act = (lambda v: v) if variant == 'NIAF' else np.tanh
  h_act = (lambda v: v) if variant == 'NOAF' else np.tanh
  rec_gates = [g for g in 'ifo' if g in gates]
  c = np.zeros((xs.shape[0], H))
  y = np.zeros((xs.shape[0], H))
  prev = {g: np.zeros((xs.shape[0], H)) for g in rec_gates}
  ys = []
  for t in range(xs.shape[1]):
    x = np.asarray(xs[:, t], np.float64)
    pre = {g: x @ W[:, col[g]] + y @ R[:, col[g]] + b[col[g]] for g in gates}
    if variant == 'FGR':  # each gate gets every previous gate activation
      Rg = p['R_gates']
      for a, ga in enumerate(rec_gates):
        for k, gk in enumerate(rec_gates):
          pre[gk] = pre[gk] + prev[ga] @ Rg[a * H:(a + 1) * H, k * H:(k + 1) * H]
    z = g_act(pre['z'])
    i = _sig(pre['i'] + peep['i'] * c) if 'i' in gates else 1.0
    if 'f' in gates:
      f = _sig(pre['f'] + peep['f'] * c)
    else:
      f = 1.0 - i if variant == 'CIFG' else 1.0
    c = z * i + c * f
    o = _sig(pre['o'] + peep['o'] * c) if 'o' in gates else 1.0
    y = h_act(c) * o
    if variant == 'FGR':
      prev = {'i': i, 'f': f, 'o': o}
    ys.append(y)
  return np.stack(ys, 1)


def _run_cell(cell, params, xs):
  def f(variables, xs):
    xp, step, carry0 = cell.apply(variables, xs)
    carry = carry0(xs.shape[0])
    ys = []
    for t in range(xs.shape[1]):
      carry, (y, _) = step(carry, xp[:, t])
      ys.append(y)
    return jnp.stack(ys, 1)
  return jax.jit(f)({'params': params}, xs)


def _randomize(params, key, scale=0.5):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


@pytest.mark.parametrize('variant', LSTM_VARIANTS)
def test_lstm_variant_matches_numpy_equations(variant):
  xs = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  cell = LSTMCell(H, variant=variant)
  params = _randomize(cell.init(jax.random.PRNGKey(1), xs)['params'], jax.random.PRNGKey(2))
  ours = _run_cell(cell, params, xs)
  ref = numpy_greff_lstm(params, np.asarray(xs), variant)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_lstm_variants_drop_their_parameters():
  xs = jnp.ones((1, 2, D))
  count = lambda v: sum(x.size for x in jax.tree.leaves(LSTMCell(H, variant=v).init(
      jax.random.PRNGKey(0), xs)))
  vanilla = count('vanilla')
  assert vanilla == (D + H + 1) * 4 * H + 3 * H
  assert count('NP') == vanilla - 3 * H
  assert count('NIG') == count('NFG') == count('NOG') == count('CIFG') == vanilla - (D + H + 2) * H
  assert count('FGR') == vanilla + 9 * H * H


def test_forget_and_input_bias_init():
  b = LSTMCell(H, forget_bias=1.5, input_bias=-2.0).init(
      jax.random.PRNGKey(0), jnp.ones((1, 2, D)))['params']['b'].reshape(4, H)
  np.testing.assert_array_equal(b, np.stack([np.zeros(H), -2 * np.ones(H), 1.5 * np.ones(H),
                                             np.zeros(H)]))  # gate order z, i, f, o


def _run_flax_cell(ref_cell, xs, key):
  """Randomised parameters of a Flax cell and its outputs over xs, step by step."""
  carry = ref_cell.initialize_carry(jax.random.PRNGKey(0), (B, D))
  ref_p = _randomize(ref_cell.init(jax.random.PRNGKey(1), carry, xs[:, 0])['params'], key)
  ref_out = []
  for t in range(xs.shape[1]):
    carry, y = ref_cell.apply({'params': ref_p}, carry, xs[:, t])
    ref_out.append(y)
  return ref_p, ref_out


def test_standard_lstm_matches_flax_optimized_cell():
  xs = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  ref_cell = nn.OptimizedLSTMCell(H)
  ref_p, ref_out = _run_flax_cell(ref_cell, xs, jax.random.PRNGKey(3))
  order = ['g', 'i', 'f', 'o']  # our gate order z, i, f, o
  ours = {'W': jnp.concatenate([ref_p[f'i{g}']['kernel'] for g in order], 1),
          'R': jnp.concatenate([ref_p[f'h{g}']['kernel'] for g in order], 1),
          'b': jnp.concatenate([ref_p[f'h{g}']['bias'] for g in order])}
  out = _run_cell(LSTMCell(H, variant='standard'), ours, xs)
  np.testing.assert_allclose(out, jnp.stack(ref_out, 1), rtol=1e-5, atol=1e-6)


def test_gru_matches_flax_gru_cell():
  xs = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  ref_cell = nn.GRUCell(H)
  ref_p, ref_out = _run_flax_cell(ref_cell, xs, jax.random.PRNGKey(4))
  ours = {'W': jnp.concatenate([ref_p[k]['kernel'] for k in ('ir', 'iz', 'in')], 1),
          'b': jnp.concatenate([ref_p[k]['bias'] for k in ('ir', 'iz', 'in')]),
          'R': jnp.concatenate([ref_p[k]['kernel'] for k in ('hr', 'hz', 'hn')], 1),
          'b_hn': ref_p['hn']['bias']}
  out = _run_cell(GRUCell(H), ours, xs)
  np.testing.assert_allclose(out, jnp.stack(ref_out, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('act', ['tanh', 'sigmoid', 'relu'])
def test_elman_matches_numpy(act):
  xs = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  cell = ElmanCell(H, activation=act)
  p = _randomize(cell.init(jax.random.PRNGKey(1), xs)['params'], jax.random.PRNGKey(5))
  f = {'tanh': np.tanh, 'sigmoid': _sig, 'relu': lambda v: np.maximum(v, 0)}[act]
  h = np.zeros((B, H))
  ref = []
  for t in range(T):
    h = f(np.asarray(xs[:, t], np.float64) @ np.asarray(p['W'], np.float64)
          + h @ np.asarray(p['R'], np.float64) + np.asarray(p['b'], np.float64))
    ref.append(h)
  np.testing.assert_allclose(_run_cell(cell, p, xs), np.stack(ref, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['orthogonal', 'normal', 'sparse'])
def test_elman_init_has_the_requested_spectral_radius(kind):
  cell = ElmanCell(64, recurrent_init_kind=kind, spectral_radius=1.1)
  init = jax.vmap(lambda k: cell.init(k, jnp.ones((1, 2, 3)))['params']['R'])
  Rs = init(jax.random.split(jax.random.PRNGKey(0), 2))  # works under vmap (population init)
  for R in np.asarray(Rs, np.float64):
    assert np.max(np.abs(np.linalg.eigvals(R))) == pytest.approx(1.1, rel=1e-4)
  if kind == 'sparse':
    assert np.all((np.asarray(Rs[0]) != 0).sum(0) == 15)
  assert not np.allclose(Rs[0], Rs[1])


# ---- the sequence layer ----

def _layer_and_params(cell='lstm', bidirectional=True, num_layers=2, truncation=0, **opts):
  layer = Recurrent(cell, H, num_layers=num_layers, bidirectional=bidirectional,
                    truncation=truncation, cell_options=opts or None)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  params = layer.init(jax.random.PRNGKey(1), x)
  return layer, params, x


@pytest.mark.parametrize('cell', ['lstm', 'gru', 'elman'])
def test_masked_batch_equals_unpadded_runs(cell):
  layer, params, x = _layer_and_params(cell)
  lengths = jnp.array([6, 3, 1])
  # Garbage in the padding must not matter.
  x = jnp.where(jnp.arange(T)[None, :, None] < lengths[:, None, None], x, 1e3)
  apply = jax.jit(layer.apply)
  out, final = apply(params, x, lengths)
  for b, L in enumerate(np.asarray(lengths)):
    o1, f1 = apply(params, x[b:b + 1, :L])
    np.testing.assert_allclose(out[b, :L], o1[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final[b], f1[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[b, L:], 0.0)


def test_masked_loss_gradients_equal_unpadded():
  layer, params, x = _layer_and_params('lstm', bidirectional=True, num_layers=1)
  lengths = jnp.array([6, 4, 2])

  def padded_loss(p):
    _, final = layer.apply(p, x, lengths)
    return jnp.sum(final ** 2)

  def unpadded_loss(p):
    return sum(jnp.sum(layer.apply(p, x[b:b + 1, :int(L)])[1] ** 2)
               for b, L in enumerate(np.asarray(lengths)))

  g1, g2 = jax.jit(jax.grad(padded_loss))(params), jax.jit(jax.grad(unpadded_loss))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g2)


@pytest.mark.parametrize('cell,opts', [('lstm', {'variant': 'vanilla'}), ('lstm', {'variant': 'FGR'}),
                                       ('gru', {}), ('elman', {})])
def test_bptt_gradients_match_finite_differences_float64(cell, opts):
  with jax.enable_x64(True):
    layer = Recurrent(cell, 3, bidirectional=False, cell_options=opts or None)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 2), dtype=jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64),
                          layer.init(jax.random.PRNGKey(1), x))
    params = _randomize(params, jax.random.PRNGKey(2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    loss = jax.jit(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)[0])))
    g_p, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    flat, unravel = ravel_pytree(params)
    eps = 1e-6
    rng = np.random.default_rng(0)
    for _ in range(2):  # random directions: directional derivative vs central difference
      v = rng.normal(size=flat.shape)
      fd = (loss(unravel(flat + eps * v), x) - loss(unravel(flat - eps * v), x)) / (2 * eps)
      an = jnp.dot(ravel_pytree(g_p)[0], v)
      assert float(an) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)
    vx = rng.normal(size=x.shape)
    fd = (loss(params, x + eps * vx) - loss(params, x - eps * vx)) / (2 * eps)
    assert float(jnp.sum(g_x * vx)) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


def test_truncated_bptt():
  full, params, x = _layer_and_params('lstm', bidirectional=False, num_layers=1)
  loss = lambda layer: jax.jit(lambda x: jnp.sum(layer.apply(params, x)[1]))  # last step only
  g_full = jax.grad(loss(full))(x)
  # k = T is full BPTT.
  same = Recurrent('lstm', H, truncation=T)
  np.testing.assert_allclose(jax.grad(loss(same))(x), g_full, rtol=1e-6)
  # k = 2: identical forward pass; no gradient reaches steps before the last chunk.
  k = 2
  trunc = Recurrent('lstm', H, truncation=k)
  np.testing.assert_allclose(trunc.apply(params, x)[0], full.apply(params, x)[0], rtol=1e-6)
  g = jax.grad(loss(trunc))(x)
  start = (T - 1) // k * k
  np.testing.assert_array_equal(g[:, :start], 0.0)
  np.testing.assert_allclose(g[:, start:], g_full[:, start:], rtol=1e-5)
  assert np.abs(g_full[:, :start]).sum() > 0


@pytest.mark.parametrize('k1,k2', [(2, 3), (2, 5), (1, 4), (3, 3)])
def test_tbptt_k1_k2_gradient_reach(k1, k2):
  """TBPTT(k1, k2): same values as full BPTT (also with masking); the output at
  step tau gets gradient from inputs back to (chunk end) - k2 and no further."""
  T2 = 7
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T2, D))
  full = Recurrent('lstm', H)
  params = full.init(jax.random.PRNGKey(1), x)
  tb = Recurrent('lstm', H, truncation=k1, truncation_k2=k2)
  lengths = jnp.array([7, 4, 2])
  for ln in (None, lengths):
    a, b = full.apply(params, x, ln), tb.apply(params, x, ln)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
  # d (sum of outputs at step tau) / d x, for every tau at once: (T2, B, T2, D).
  jac = lambda layer: jax.jit(jax.jacrev(
      lambda x: jnp.sum(layer.apply(params, x)[0], axis=(0, 2))))(x)
  J, J_full = jac(tb), jac(full)
  for tau in range(T2):
    first = max(0, (tau // k1 + 1) * k1 - k2)  # earliest input the error reaches
    np.testing.assert_array_equal(J[tau, :, :first], 0.0)
    np.testing.assert_allclose(J[tau, :, first:], J_full[tau, :, first:], rtol=1e-4, atol=1e-6)
    assert first == 0 or np.abs(J_full[tau, :, :first]).sum() > 0


def test_gate_activations_are_collected():
  layer = Recurrent('lstm', H, collect_gates=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  params = layer.init(jax.random.PRNGKey(1), x)
  _, state = layer.apply(params, x, mutable=['intermediates'])
  gates = state['intermediates']['gates_layer0_fwd'][0]
  assert set(gates) == {'i', 'f', 'o', 'c'}
  assert gates['i'].shape == (B, T, H)
  assert np.all((gates['f'] > 0) & (gates['f'] < 1))


def test_carry_gradient_norms_equal_autodiff_through_states():
  from research.analysis.gradients import carry_gradient_norms, step_jacobian_norms
  layer = Recurrent('elman', H, bidirectional=False, probe_carry=True,
                    cell_options={'activation': 'tanh'})
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  variables = layer.init(jax.random.PRNGKey(1), x)
  loss = lambda out: jnp.sum(out[1] ** 2)  # depends on the last step only
  norms = carry_gradient_norms(lambda v: layer.apply(v, x), variables, loss)
  (name, g), = norms.items()
  assert g.shape == (T,)
  # Reference: dL/dh_t by the chain rule through the explicit recurrence.
  p = variables['params']['layer0_fwd']
  hs, h = [], jnp.zeros((B, H))
  for t in range(T):
    h = jnp.tanh(x[:, t] @ p['W'] + p['b'] + h @ p['R'])
    hs.append(h)
  ref = []
  delta = 2 * hs[-1]  # dL/dh_T
  for t in reversed(range(T)):
    ref.append(np.mean(np.linalg.norm(delta, axis=-1)))
    if t > 0:
      delta = (delta * (1 - hs[t] ** 2)) @ p['R'].T
  np.testing.assert_allclose(g, ref[::-1], rtol=1e-4)
  # Jacobian norms along sequence 0: h_t = tanh(... + h_{t-1} R), so
  # dh_t/dh_{t-1} = diag(1 - h_t^2) R^T, whose spectral norm we compare.
  xp, step, c0 = ElmanCell(H).apply({'params': p}, x)
  jn = step_jacobian_norms(step, c0(1)[0], xp[0])
  R = np.asarray(p['R'], np.float64)
  ref = [np.linalg.norm(np.diag(1 - np.asarray(hs[t][0], np.float64) ** 2) @ R.T, 2)
         for t in range(T)]
  np.testing.assert_allclose(jn, ref, rtol=1e-4)


def test_gate_statistics_count_only_valid_steps():
  from research.analysis.gradients import gate_statistics
  layer = Recurrent('lstm', H, collect_gates=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  lengths = jnp.asarray([T, 3] + [T] * (B - 2))
  params = layer.init(jax.random.PRNGKey(1), x)
  _, state = layer.apply(params, x, lengths, mutable=['intermediates'])
  inter = state['intermediates']
  mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
  stats = gate_statistics(inter, mask=mask)
  f = np.asarray(inter['gates_layer0_fwd'][0]['f'])
  valid = np.concatenate([f[b, :int(n)] for b, n in enumerate(lengths)])  # (steps, H)
  s = stats['gates_layer0_fwd/f']
  assert s['mean'] == pytest.approx(valid.mean(), rel=1e-6)
  assert s['frac_below_0.1'] == pytest.approx((valid < 0.1).mean())
  assert s['frac_above_0.9'] == pytest.approx((valid > 0.9).mean())
  assert set(stats) == {'gates_layer0_fwd/i', 'gates_layer0_fwd/f', 'gates_layer0_fwd/o'}
