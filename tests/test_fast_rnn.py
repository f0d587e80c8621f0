"""The custom-VJP sequence op (research.models.fast_rnn) against the generic autodiff scan.

Same parameters, same inputs: `Recurrent(fast=True)` and `Recurrent(fast=False)`
must give the same outputs, final states and gradients (parameters and inputs)
for every cell and LSTM variant, with masking, both directions, stacks,
truncation, and under vmap (populations). The hand-written steps of the standard
LSTM and the GRU are also checked against fast_rnn's generic (jax.vjp) step.
No timing here: scripts/benchmark.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.cells import LSTM_VARIANTS, make_cell
from research.models.fast_rnn import fast_scan
from research.models.recurrent import Recurrent, length_mask

B, T, D, H = 3, 7, 4, 5
LENGTHS = jnp.array([7, 4, 1])


def _randomize(params, key, scale=0.5):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, l.shape, l.dtype)
                                   for k, l in zip(keys, leaves)])


def _pair(cell='lstm', **kw):
  fast = Recurrent(cell, H, fast=True, **kw)
  slow = Recurrent(cell, H, fast=False, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  params = _randomize(slow.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2))
  return fast, slow, params, x


def _loss(layer):
  def loss(params, x, lengths):
    out, final = layer.apply(params, x, lengths)
    w = jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
    return jnp.sum(out * w) + jnp.sum(jnp.sin(final))  # every step and the final state
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _assert_same(fast, slow, params, x, lengths, rtol=1e-5, atol=1e-6):
  for a, b in zip(jax.jit(fast.apply)(params, x, lengths), jax.jit(slow.apply)(params, x, lengths)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
  (l1, g1), (l2, g2) = _loss(fast)(params, x, lengths), _loss(slow)(params, x, lengths)
  np.testing.assert_allclose(l1, l2, rtol=rtol, atol=atol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


@pytest.mark.parametrize('variant', LSTM_VARIANTS)
def test_every_lstm_variant_matches_generic_with_masking(variant):
  fast, slow, params, x = _pair('lstm', cell_options={'variant': variant})
  for lengths in (None, LENGTHS):
    _assert_same(fast, slow, params, x, lengths)


def test_hard_sigmoid_input_gate_and_biases():
  fast, slow, params, x = _pair('lstm', cell_options={'variant': 'vanilla', 'forget_bias': 2.0,
                                                      'input_gate_act': 'hard_sigmoid'})
  _assert_same(fast, slow, params, x, LENGTHS)


@pytest.mark.parametrize('cell,opts', [('gru', None), ('elman', {'activation': 'tanh'}),
                                       ('elman', {'activation': 'relu'})])
def test_gru_and_elman_match_generic(cell, opts):
  fast, slow, params, x = _pair(cell, cell_options=opts)
  for lengths in (None, LENGTHS):
    _assert_same(fast, slow, params, x, lengths)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bidirectional_stack_matches_generic(cell):
  fast, slow, params, x = _pair(cell, num_layers=2, bidirectional=True)
  _assert_same(fast, slow, params, x, LENGTHS)


@pytest.mark.parametrize('k', [1, 2, 3])
def test_truncated_bptt_matches_generic(k):
  fast, slow, params, x = _pair('lstm', truncation=k)
  for lengths in (None, LENGTHS):
    _assert_same(fast, slow, params, x, lengths)


def test_unroll_matches_generic():
  fast, slow, params, x = _pair('lstm', unroll=3)
  _assert_same(fast, slow, params, x, LENGTHS)


def test_population_vmap_matches_generic():
  """K members with their own parameters and inputs, as train.py vmaps them."""
  fast, slow, _, _ = _pair('lstm')
  K = 3
  x = jax.random.normal(jax.random.PRNGKey(3), (K, B, T, D))
  params = jax.vmap(lambda k, x: _randomize(slow.init(k, x), k))(
      jax.random.split(jax.random.PRNGKey(4), K), x)
  outs = [jax.jit(jax.vmap(lambda p, x: _loss(layer)(p, x, LENGTHS)))(params, x)
          for layer in (fast, slow)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *outs)


def test_float64_gradients_match_generic_exactly():
  with jax.enable_x64(True):
    fast, slow, params, x = _pair('lstm', cell_options={'variant': 'vanilla'})
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    (l1, g1), (l2, g2) = _loss(fast)(params, x, LENGTHS), _loss(slow)(params, x, LENGTHS)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), g1, g2)


def test_fallbacks_keep_working():
  """Gate collection, carry probes and TBPTT(k1 < k2) take the generic path."""
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  layer = Recurrent('lstm', H, collect_gates=True)
  params = layer.init(jax.random.PRNGKey(1), x)
  (out, _), state = layer.apply(params, x, mutable=['intermediates'])
  assert state['intermediates']['gates_layer0_fwd'][0]['i'].shape == (B, T, H)
  np.testing.assert_allclose(out, Recurrent('lstm', H).apply(params, x)[0], rtol=1e-5, atol=1e-6)
  tb = Recurrent('lstm', H, truncation=2, truncation_k2=4)
  np.testing.assert_allclose(tb.apply(params, x)[0], out, rtol=1e-5, atol=1e-6)


def test_padding_garbage_never_reaches_gradients():
  fast, _, params, x = _pair('lstm')
  x = jnp.where(jnp.arange(T)[None, :, None] < LENGTHS[:, None, None], x, 1e6)
  _, (gp, gx) = _loss(fast)(params, x, LENGTHS)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(gp))
  mask = np.arange(T)[None, :] < np.asarray(LENGTHS)[:, None]
  np.testing.assert_array_equal(np.asarray(gx)[~mask], 0.0)


# ---- the hand-written steps (standard LSTM, GRU) against the generic custom-VJP step ----

def _direct_loss(cell, manual, truncation):
  """Loss over every output and the final carry of fast_scan run directly on the cell's spec."""
  def loss(params, x, lengths):
    _, step, carry0 = cell.apply(params, x)
    mask = length_mask(lengths, B, T)
    ys, final = fast_scan(step.fast, x, carry0(B), mask, truncation, manual=manual)
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize('kind,opts,manual', [('lstm', {'variant': 'standard'}, 'lstm'),
                                              ('lstm', {'variant': 'NP'}, 'lstm'),
                                              ('gru', {}, 'gru')])
@pytest.mark.parametrize('truncation', [0, 3])
def test_hand_written_steps_match_generic_step(kind, opts, manual, truncation):
  cell = make_cell(kind, H, **opts)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  params = _randomize(cell.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2))
  assert cell.apply(params, x)[1].fast.manual == manual
  for lengths in (None, LENGTHS):
    (l1, g1), (l2, g2) = (_direct_loss(cell, m, truncation)(params, x, lengths)
                          for m in (True, False))
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


@pytest.mark.parametrize('opts', [{'variant': 'vanilla'}, {'variant': 'NOAF'}, {'variant': 'FGR'},
                                  {'variant': 'standard', 'input_gate_act': 'hard_sigmoid'}])
def test_other_lstms_use_the_generic_step(opts):
  cell = make_cell('lstm', H, **opts)
  x = jnp.zeros((B, T, D))
  assert cell.apply(cell.init(jax.random.PRNGKey(0), x), x)[1].fast.manual is None


@pytest.mark.parametrize('cell,opts', [('lstm', {'variant': 'standard'}), ('gru', None)])
def test_hand_written_float64_gradients_match_generic_exactly(cell, opts):
  with jax.enable_x64(True):
    fast, slow, params, x = _pair(cell, cell_options=opts, truncation=2)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    (l1, g1), (l2, g2) = _loss(fast)(params, x, LENGTHS), _loss(slow)(params, x, LENGTHS)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), g1, g2)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_hand_written_padding_garbage_never_reaches_gradients(cell):
  fast, _, params, x = _pair(cell, cell_options={'variant': 'standard'} if cell == 'lstm' else None)
  x = jnp.where(jnp.arange(T)[None, :, None] < LENGTHS[:, None, None], x, 1e6)
  _, (gp, gx) = _loss(fast)(params, x, LENGTHS)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(gp))
  mask = np.arange(T)[None, :] < np.asarray(LENGTHS)[:, None]
  np.testing.assert_array_equal(np.asarray(gx)[~mask], 0.0)


@pytest.mark.parametrize('path,arg', [
    ('configs/mnist1d.py', 'model=gru'), ('configs/mnist1d.py', 'model=cnn_gru'),
    ('configs/ucr.py', 'model=lstm_fcn'), ('configs/video.py', 'model=lrcn'),
    ('configs/text.py', 'model=cnn_lstm'), ('configs/synthetic.py', None)])
def test_config_switch_model_fast_reaches_the_layer(path, arg):
  """`--config.model.fast=False` exists on every config with a recurrent layer and
  swaps the custom-VJP op for the autodiff scan (seen in the traced program); on
  MNIST-1D's recurrent models the two give the same gradients."""
  from research import cli
  from research.models import build_model
  config = cli.load_config(path, arg)
  assert config.model.fast is True
  shapes = {'mnist1d': (2, 40, 1), 'ucr': (2, 12, 3), 'video': (2, 4, 16, 16),
            'synthetic': (2, 10, 2)}
  name = path.split('/')[1][:-3]
  if name == 'text':
    x = jnp.arange(24).reshape(2, 12) % 7
  else:
    x = jax.random.normal(jax.random.PRNGKey(0), shapes[name])
  grads, custom = [], []
  for fast in (True, False):
    config.model.fast = fast
    model = build_model(config.model, {'num_outputs': 3, 'num_classes': 3})

    def loss(params, variables):
      return jnp.sum(jnp.sin(model.apply({**variables, 'params': params}, x)))
    if name == 'mnist1d':  # values: compiled (the others only traced, to keep this fast)
      variables = model.init(jax.random.PRNGKey(1), x)
      grads.append(jax.grad(loss)(variables['params'], variables))
    else:
      variables = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)
    # fast_scan's custom VJP (its backward is named `backward`; split_gates' is not)
    jaxpr = jax.make_jaxpr(loss)(variables['params'], variables)
    custom.append('bwd=backward' in str(jaxpr))
  assert custom == [True, False]
  if grads:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)
