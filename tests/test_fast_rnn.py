"""The custom-VJP sequence op (research.models.fast_rnn) against the generic autodiff scan.

Same parameters, same inputs: `Recurrent(fast=True)` and `Recurrent(fast=False)`
must give the same outputs, final states and gradients (parameters and inputs)
for every cell and LSTM variant, with masking, both directions, stacks,
truncation, and under vmap (populations). The hand-written steps of the standard
LSTM and the GRU are also checked against fast_rnn's generic (jax.vjp) step, and
the input projection hoisted out of the scan (the GPU/TPU default) against the
one inside it (the CPU default).

`Recurrent` falls back to the generic scan by itself, so a comparison means
something only when the fast side did run fast_scan: every comparison checks
the path each layer and direction took when traced (`record_scan_paths`) and
that the traced program holds one fast_scan op per layer and direction (none on
the generic side). Each fallback reason has its own test.
No timing here: scripts/benchmark.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import cells, fast_rnn
from research.models.cells import LSTM_VARIANTS, make_cell
from research.models.fast_rnn import fast_scan
from research.models.recurrent import (FALLBACK_REASONS, Recurrent, ScanPath, length_mask,
                                       record_scan_paths, scan_path)

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


def _names(layer):
  """The cell of every layer and direction of a Recurrent layer."""
  dirs = ('fwd', 'bwd') if layer.bidirectional else ('fwd',)
  return {f'layer{l}_{d}' for l in range(layer.num_layers) for d in dirs}


def _walk(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          yield from _walk(sub)


def _fast_ops(fn, *args):
  """The fast_scan ops (custom_vjp_call whose backward is fast_scan's) in fn's program."""
  return [e for e in _walk(jax.make_jaxpr(fn)(*args).jaxpr)
          if e.primitive.name.startswith('custom_vjp_call')
          and 'fast_scan_backward' in str(e.params.get('bwd'))]


def _assert_paths(log, layer, path, reasons=(), step=None, hoist=None):
  """Every layer and direction of ``layer`` was traced, each time on ``path``."""
  assert log, 'nothing recorded: the layer was not traced inside record_scan_paths()'
  assert {name.split('/')[-1] for name, _ in log} == _names(layer)
  for name, how in log:
    assert how.path == path and how.reasons == reasons, (name, how)
    if step is not None:
      assert how.step == step, (name, how)
    if hoist is not None:
      assert how.hoist is hoist, (name, how)


def _apply(layer, lengths):
  return jax.jit(lambda p, x: layer.apply(p, x, lengths))  # a new function: traced anew


def _assert_same(fast, slow, params, x, lengths, rtol=1e-5, atol=1e-6, step=None, hoist=None):
  """fast (a fast=True layer) and slow (fast=False) agree in outputs, final states,
  loss and gradients, and each took the path it is named after."""
  with record_scan_paths() as fast_log:
    out_fast, (l1, g1) = _apply(fast, lengths)(params, x), _loss(fast)(params, x, lengths)
  with record_scan_paths() as slow_log:
    out_slow, (l2, g2) = _apply(slow, lengths)(params, x), _loss(slow)(params, x, lengths)
  _assert_paths(fast_log, fast, 'fast', step=step, hoist=hoist)
  _assert_paths(slow_log, slow, 'generic', ('fast=False',))
  assert len(_fast_ops(lambda p, x: fast.apply(p, x, lengths), params, x)) == len(_names(fast))
  assert not _fast_ops(lambda p, x: slow.apply(p, x, lengths), params, x)
  for a, b in zip(out_fast, out_slow):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
  np.testing.assert_allclose(l1, l2, rtol=rtol, atol=atol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


def _lstm_step(variant, input_gate_act='sigmoid'):
  """The elementwise step fast_scan must pick for an LSTM variant."""
  return 'lstm' if variant in ('standard', 'NP') and input_gate_act == 'sigmoid' else 'generic'


@pytest.mark.parametrize('variant', LSTM_VARIANTS)
def test_every_lstm_variant_matches_generic_with_masking(variant):
  fast, slow, params, x = _pair('lstm', cell_options={'variant': variant})
  for lengths in (None, LENGTHS):
    _assert_same(fast, slow, params, x, lengths, step=_lstm_step(variant))


def test_hard_sigmoid_input_gate_and_biases():
  fast, slow, params, x = _pair('lstm', cell_options={'variant': 'vanilla', 'forget_bias': 2.0,
                                                      'input_gate_act': 'hard_sigmoid'})
  _assert_same(fast, slow, params, x, LENGTHS, step='generic')


@pytest.mark.parametrize('cell,opts', [('gru', None), ('elman', {'activation': 'tanh'}),
                                       ('elman', {'activation': 'relu'})])
def test_gru_and_elman_match_generic(cell, opts):
  fast, slow, params, x = _pair(cell, cell_options=opts)
  for lengths in (None, LENGTHS):
    _assert_same(fast, slow, params, x, lengths, step='gru' if cell == 'gru' else 'generic')


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bidirectional_stack_matches_generic(cell):
  fast, slow, params, x = _pair(cell, num_layers=2, bidirectional=True)
  _assert_same(fast, slow, params, x, LENGTHS, step='gru' if cell == 'gru' else 'generic')


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
  logs, outs = [], []
  for layer in (fast, slow):
    with record_scan_paths() as log:
      outs.append(jax.jit(jax.vmap(lambda p, x: _loss(layer)(p, x, LENGTHS)))(params, x))
    logs.append(log)
  _assert_paths(logs[0], fast, 'fast')
  _assert_paths(logs[1], slow, 'generic', ('fast=False',))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *outs)


def test_float64_gradients_match_generic_exactly():
  with jax.enable_x64(True):
    fast, slow, params, x = _pair('lstm', cell_options={'variant': 'vanilla'})
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    with record_scan_paths() as log:
      l1, g1 = _loss(fast)(params, x, LENGTHS)
    _assert_paths(log, fast, 'fast')
    l2, g2 = _loss(slow)(params, x, LENGTHS)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), g1, g2)


class _NoSpecElman(cells.ElmanCell):
  """An Elman cell whose step has no FastSpec (as a cell from outside `cells` might)."""

  def __call__(self, xs):
    xp, step, carry0 = super().__call__(xs)
    return xp, (lambda carry, xp_t: step(carry, xp_t)), carry0


# Per fallback reason: a cell and the Recurrent options that make the layer fall back.
FALLBACKS = {
    'fast=False': ('lstm', dict(fast=False)),
    'truncation_k2': ('lstm', dict(truncation=2, truncation_k2=4)),
    'collect_gates': ('lstm', dict(collect_gates=True)),
    'probe_carry': ('lstm', dict(probe_carry=True)),
    'no FastSpec': ('nospec_elman', {}),
}


def test_every_fallback_reason_has_a_test():
  assert set(FALLBACKS) == set(FALLBACK_REASONS)


@pytest.mark.parametrize('reason', sorted(FALLBACKS))
def test_fallback_runs_the_generic_scan(reason, monkeypatch):
  """The layer says it falls back and why, its traced program has no fast_scan op,
  and it still computes what the fast path computes."""
  monkeypatch.setitem(cells.CELLS, 'nospec_elman', _NoSpecElman)
  cell, kw = FALLBACKS[reason]
  layer = Recurrent(cell, H, bidirectional=True, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  variables = layer.init(jax.random.PRNGKey(1), x, LENGTHS)
  params = {'params': _randomize(variables['params'], jax.random.PRNGKey(2))}
  path = 'tbptt' if reason == 'truncation_k2' else 'generic'
  if reason != 'no FastSpec':  # known from the configuration alone
    assert scan_path(layer) == ScanPath(path, (reason,))
  with record_scan_paths() as log:
    (out, final), state = jax.jit(lambda v, x: layer.apply(v, x, LENGTHS, mutable=True))(
        {**variables, **params}, x)
  _assert_paths(log, layer, path, (reason,))
  assert not _fast_ops(lambda v, x: layer.apply(v, x, LENGTHS, mutable=True),
                       {**variables, **params}, x)
  if reason == 'collect_gates':
    assert state['intermediates']['gates_layer0_bwd'][0]['i'].shape == (B, T, H)
  # The same layer on the fast path: same values (TBPTT's forward values are those of
  # full BPTT).
  fast = Recurrent('elman' if reason == 'no FastSpec' else cell, H, bidirectional=True)
  with record_scan_paths() as fast_log:
    ref = _apply(fast, LENGTHS)(params, x)
  _assert_paths(fast_log, fast, 'fast')
  for a, b in zip((out, final), ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scan_path_lists_every_reason_that_applies():
  layer = Recurrent('lstm', H, fast=False, collect_gates=True, truncation=1, truncation_k2=3)
  assert scan_path(layer) == ScanPath('tbptt', ('fast=False', 'truncation_k2', 'collect_gates'))
  assert scan_path(Recurrent('lstm', H, truncation=3, truncation_k2=3)).path == 'fast'  # k1 == k2
  x = jnp.zeros((B, T, D))
  for cell, opts, step in [('lstm', {'variant': 'standard'}, 'lstm'), ('gru', {}, 'gru'),
                           ('lstm', {'variant': 'FGR'}, 'generic'), ('elman', {}, 'generic')]:
    c = make_cell(cell, H, **opts)
    cell_step = c.apply(c.init(jax.random.PRNGKey(0), x), x)[1]
    how = scan_path(Recurrent(cell, H, cell_options=opts), cell_step)
    assert how == ScanPath('fast', (), step, fast_rnn.default_hoist())


def test_padding_garbage_never_reaches_gradients():
  fast, _, params, x = _pair('lstm')
  x = jnp.where(jnp.arange(T)[None, :, None] < LENGTHS[:, None, None], x, 1e6)
  with record_scan_paths() as log:
    _, (gp, gx) = _loss(fast)(params, x, LENGTHS)
  _assert_paths(log, fast, 'fast')
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
def test_hand_written_steps_match_generic_step(kind, opts, manual, truncation, monkeypatch):
  cell = make_cell(kind, H, **opts)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  params = _randomize(cell.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2))
  spec = cell.apply(params, x)[1].fast
  assert spec.manual == manual
  assert fast_rnn.step_kind(spec) == manual and fast_rnn.step_kind(spec, False) == 'generic'
  built = []  # the elementwise steps fast_scan builds, in order
  for name, make in list(fast_rnn._STEPS.items()):
    monkeypatch.setitem(fast_rnn._STEPS, name,
                        lambda *a, _make=make, _name=name: built.append(_name) or _make(*a))
  for lengths in (None, LENGTHS):
    built.clear()
    (l1, g1), (l2, g2) = (_direct_loss(cell, m, truncation)(params, x, lengths)
                          for m in (True, False))
    assert built == [manual, 'generic']
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
    with record_scan_paths() as log:
      l1, g1 = _loss(fast)(params, x, LENGTHS)
    _assert_paths(log, fast, 'fast')
    l2, g2 = _loss(slow)(params, x, LENGTHS)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), g1, g2)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_hand_written_padding_garbage_never_reaches_gradients(cell):
  fast, _, params, x = _pair(cell, cell_options={'variant': 'standard'} if cell == 'lstm' else None)
  x = jnp.where(jnp.arange(T)[None, :, None] < LENGTHS[:, None, None], x, 1e6)
  with record_scan_paths() as log:
    _, (gp, gx) = _loss(fast)(params, x, LENGTHS)
  _assert_paths(log, fast, 'fast', step=cell)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(gp))
  mask = np.arange(T)[None, :] < np.asarray(LENGTHS)[:, None]
  np.testing.assert_array_equal(np.asarray(gx)[~mask], 0.0)


@pytest.mark.parametrize('path,arg', [
    ('configs/mnist1d.py', 'model=gru'), ('configs/mnist1d.py', 'model=cnn_gru'),
    ('configs/ucr.py', 'model=lstm_fcn'), ('configs/video.py', 'model=lrcn'),
    ('configs/text.py', 'model=cnn_lstm'), ('configs/synthetic.py', None)])
def test_config_switch_model_fast_reaches_the_layer(path, arg):
  """`--config.model.rnn.fast=False` exists on every config with a recurrent layer and
  swaps the custom-VJP op for the autodiff scan (seen in the traced program); on
  MNIST-1D's recurrent models the two give the same gradients."""
  from research import cli
  from research.models import build_model
  config = cli.load_config(path, arg)
  assert config.model.rnn.fast is True
  shapes = {'mnist1d': (2, 40, 1), 'ucr': (2, 12, 3), 'video': (2, 4, 16, 16),
            'synthetic': (2, 10, 2)}
  name = path.split('/')[1][:-3]
  if name == 'text':
    x = jnp.arange(24).reshape(2, 12) % 7
  else:
    x = jax.random.normal(jax.random.PRNGKey(0), shapes[name])
  grads, custom = [], []
  for fast in (True, False):
    config.model.rnn.fast = fast
    model = build_model(config.model, {'num_outputs': 3, 'num_classes': 3})

    def loss(params, variables):
      return jnp.sum(jnp.sin(model.apply({**variables, 'params': params}, x)))
    if name == 'mnist1d':  # values: compiled (the others only traced, to keep this fast)
      variables = model.init(jax.random.PRNGKey(1), x)
      grads.append(jax.grad(loss)(variables['params'], variables))
    else:
      variables = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)
    custom.append(len(_fast_ops(loss, variables['params'], variables)) > 0)
  assert custom == [True, False]
  if grads:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)


# ---- the input projection hoisted out of the scan (GPU/TPU default) on CPU ----

def _scan_dots(layer, params, x):
  """Per fast_scan op: the matmuls in its forward scan's loop body (x_t @ W when not
  hoisted, and rec_in(carry) @ R) and outside the loop (the hoisted x @ W)."""
  counts = []
  for op in _fast_ops(lambda p, x: layer.apply(p, x, LENGTHS), params, x):
    eqns = op.params['call_jaxpr'].jaxpr.eqns
    (scan,) = [e for e in eqns if e.primitive.name == 'scan']
    body = scan.params['jaxpr'].jaxpr.eqns
    counts.append((sum(e.primitive.name == 'dot_general' for e in body),
                   sum(e.primitive.name == 'dot_general' for e in eqns)))
  return counts


def test_hoist_default_by_backend():
  assert fast_rnn.default_hoist('cpu') is False
  assert fast_rnn.default_hoist('gpu') is True and fast_rnn.default_hoist('tpu') is True
  assert fast_rnn.default_hoist('some_new_backend') is True
  layer, _, params, x = _pair('gru')
  want = fast_rnn.default_hoist()
  assert scan_path(layer).hoist is want
  assert _scan_dots(layer, params, x) == [(1, 1) if want else (2, 0)]


@pytest.mark.parametrize('cell,opts,step', [
    ('lstm', {'variant': 'standard'}, 'lstm'), ('lstm', {'variant': 'FGR'}, 'generic'),
    ('gru', None, 'gru'), ('elman', None, 'generic')])
def test_hoisted_input_projection_matches_in_loop(cell, opts, step):
  """hoist=True (one (T*B, D) @ (D, K) matmul before the scan) against hoist=False
  (x_t @ W in the loop) and the generic scan: values and gradients, with masking,
  both directions and truncation."""
  kw = dict(cell_options=opts, bidirectional=True, truncation=3)
  hoisted, slow, params, x = _pair(cell, hoist=True, **kw)
  in_loop = Recurrent(cell, H, fast=True, hoist=False, **kw)
  assert _scan_dots(hoisted, params, x) == [(1, 1)] * 2  # really hoisted: one matmul in the loop
  assert _scan_dots(in_loop, params, x) == [(2, 0)] * 2
  logs, results = [], []
  for layer in (hoisted, in_loop, slow):
    with record_scan_paths() as log:
      results.append((_apply(layer, LENGTHS)(params, x), _loss(layer)(params, x, LENGTHS)))
    logs.append(log)
  _assert_paths(logs[0], hoisted, 'fast', step=step, hoist=True)
  _assert_paths(logs[1], in_loop, 'fast', step=step, hoist=False)
  _assert_paths(logs[2], slow, 'generic', ('fast=False',))
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, results[0], results[1])  # hoisted against in the loop: float rounding
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               results[0], results[2])


@pytest.mark.parametrize('cell,opts', [('lstm', {'variant': 'standard'}), ('lstm', None),
                                       ('gru', None)])
def test_hoisted_float64_gradients_match_in_loop_exactly(cell, opts):
  with jax.enable_x64(True):
    hoisted, _, params, x = _pair(cell, cell_options=opts, hoist=True, truncation=2)
    in_loop = Recurrent(cell, H, fast=True, hoist=False, cell_options=opts, truncation=2)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    with record_scan_paths() as log:
      l1, g1 = _loss(hoisted)(params, x, LENGTHS)
    _assert_paths(log, hoisted, 'fast', hoist=True)
    l2, g2 = _loss(in_loop)(params, x, LENGTHS)
    np.testing.assert_allclose(l1, l2, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), g1, g2)
