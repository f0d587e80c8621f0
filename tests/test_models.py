"""Model building blocks against references."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import flax.linen as nn

from research.models import build_model
from research.models.cnn import Conv1D


@pytest.mark.parametrize('k,s,p,t', [(5, 2, 1, 40), (3, 2, 1, 19), (3, 1, 0, 7), (4, 3, 2, 11)])
def test_conv1d_matches_flax_conv(k, s, p, t):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, t, 3))
  ours = Conv1D(6, k, s, p)
  params = ours.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda a: a + 0.1, params)  # non-zero bias too
  ref = nn.Conv(6, (k,), strides=(s,), padding=[(p, p)])
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  # Gradients with respect to parameters and input agree as well.
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_ours, g_ref)


def test_conv1d_rejects_too_short_input():
  with pytest.raises(ValueError, match='shorter than kernel'):
    Conv1D(2, 5).init(jax.random.PRNGKey(0), jnp.ones((1, 3, 1)))


@pytest.mark.parametrize('name,kwargs,params', [
    ('linear', {}, 410),                 # MNIST-1D LinearBase: 40*10 + 10
    ('mlp', {'hidden': 100}, 15210),     # MLPBase: 4100 + 10100 + 1010
    ('cnn', {}, 5210),                   # ConvBase: 150 + 1900 + 1900 + 1260
    ('rnn', {'rnn': {'cell': 'gru', 'hidden': 6, 'bidirectional': True}}, 5110),  # GRUBase
])
def test_mnist1d_models_have_the_reference_sizes(name, kwargs, params):
  model = build_model(ml_collections.ConfigDict(dict(name=name, **kwargs)), {'num_classes': 10})
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 40)))
  assert model.apply(variables, jnp.ones((2, 40))).shape == (2, 10)
  assert sum(x.size for x in jax.tree.leaves(variables)) == params


def test_unknown_model_option_is_named():
  with pytest.raises(ValueError, match=r"no option\(s\) \['hiden'\]"):
    build_model(ml_collections.ConfigDict(dict(name='mlp', hiden=3)), {'num_classes': 10})


def test_unknown_rnn_option_is_named():
  model = build_model(ml_collections.ConfigDict(dict(name='cnn_rnn', rnn=dict(hiden=3))),
                      {'num_classes': 10})
  with pytest.raises(ValueError, match=r"CNNRNN: rnn has no option\(s\) \['hiden'\]"):
    model.init(jax.random.PRNGKey(0), jnp.ones((2, 40)))


# Variable trees (paths and shapes) of every config with a recurrent layer, recorded before
# the recurrent options moved into the one `rnn` field: checkpoints stay loadable and runs
# identical. Digest: sha256 of the sorted 'collection/path:shape' lines, first 16 hex digits.
PINNED_TREES = {
    'mnist1d:model=gru': (10, 'abfbdfe29389a768'),
    'mnist1d:model=cnn_gru': (14, '2157e3dfcc16154f'),
    'ucr:model=lstm_fcn': (23, '987cf631e4a198b8'),
    'ucr:model=lstm_fcn_t': (23, 'e77e986bf46b7df3'),
    'ucr:model=conv_lstm': (34, 'c32407b5c57b8d5f'),
    'ucr:model=lstm': (14, '3d9b3441922d870d'),
    'video:model=lrcn': (18, '3c1b6fadca2d4463'),
    'video:model=cnn': (12, '8ed9d221cc45eb59'),
    'video:model=lstm': (8, 'fd73e9d6463101c1'),
    'text:model=cnn_lstm': (11, '6c1c4b641d89e07d'),
    'text:model=lstm': (9, '0048c205af760e0c'),
    'text:model=cnn': (9, '1be65a8a5a0f3ddc'),
    'forecast:model=conv_lstm': (12, '2d9d85ccc25f22ac'),
    'forecast:model=lstm': (8, '64111276aa4c8173'),
    'synthetic:cell=lstm,variant=FGR': (9, 'bceac71153f42d01'),
    'synthetic:cell=gru': (6, '1ebef4ae8d7e11b4'),
    'music:cell=lstm,variant=NIG': (7, 'cb63dfc94a108bd3'),
    'music:cell=elman': (5, 'adf2c16f1529dac7'),
}
INPUT_SHAPES = {'mnist1d': (2, 40, 1), 'ucr': (2, 12, 3), 'video': (2, 4, 16, 16),
                'forecast': (2, 24, 1), 'synthetic': (2, 10, 2), 'music': (2, 10, 88)}
PINNED_GRU = {  # mnist1d:model=gru in full
    'params/Dense_0/bias': (3,), 'params/Dense_0/kernel': (480, 3),
    **{f'params/Recurrent_0/layer0_{d}/{k}': s for d in ('fwd', 'bwd')
       for k, s in (('R', (6, 18)), ('W', (1, 18)), ('b', (18,)), ('b_hn', (6,)))}}


def _variable_tree(case):
  from research import cli
  config_name, arg = case.split(':')
  config = cli.load_config(f'configs/{config_name}.py', arg)
  model = build_model(config.model, {'num_outputs': 3, 'num_classes': 3})
  shape = INPUT_SHAPES.get(config_name)
  x = jnp.zeros((2, 12), jnp.int32) if shape is None else jnp.zeros(shape)
  rngs = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, x))
  return {'/'.join(str(k.key) for k in path): tuple(a.shape)
          for path, a in jax.tree_util.tree_leaves_with_path(variables)}


@pytest.mark.parametrize('case', sorted(PINNED_TREES))
def test_recurrent_models_keep_their_variable_trees(case):
  import hashlib
  tree = _variable_tree(case)
  if case == 'mnist1d:model=gru':
    assert tree == PINNED_GRU
  lines = '\n'.join(f'{path}:{shape}' for path, shape in sorted(tree.items()))
  assert (len(tree), hashlib.sha256(lines.encode()).hexdigest()[:16]) == PINNED_TREES[case], tree


@pytest.mark.parametrize('cfg', [
    dict(name='rnn', rnn=dict(cell='lstm', hidden=4, bidirectional=True, collect_gates=True)),
    dict(name='cnn_rnn', channels=(5,), kernels=(3,), strides=(1,), padding='same',
         rnn=dict(cell='gru', hidden=4, num_layers=2, bidirectional=False,
                  collect_gates=True)),
    dict(name='lstm_fcn', channels=(4, 4, 4), kernels=(3, 3, 3), lstm_input='temporal',
         rnn=dict(hidden=3, collect_gates=True)),
])
def test_gate_statistics_of_any_model_with_a_recurrent_layer(cfg):
  """`model.rnn.collect_gates` reaches the layer of every model, and gate_statistics
  finds its gates by path, over the valid steps of a padded batch."""
  from research.analysis.gradients import find_gates, gate_statistics
  from research.masks import length_mask
  model = build_model(ml_collections.ConfigDict(cfg), {'num_classes': 3})
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 2))
  lengths = jnp.asarray([9, 4, 6])
  variables = model.init(jax.random.PRNGKey(1), x, lengths=lengths)
  _, state = model.apply(variables, x, lengths=lengths, mutable=['intermediates'])
  gates = find_gates(state['intermediates'])
  rnn = cfg['rnn']
  dirs = ('fwd', 'bwd') if rnn.get('bidirectional') else ('fwd',)
  layers = [f'Recurrent_0/gates_layer{l}_{d}' for l in range(rnn.get('num_layers', 1)) for d in dirs]
  assert sorted(gates) == sorted(layers)
  stats = gate_statistics(state['intermediates'], mask=length_mask(lengths, 3, 9))
  names = ('r', 'u') if rnn.get('cell') == 'gru' else ('i', 'f', 'o')
  assert sorted(stats) == sorted(f'{layer}/{g}' for layer in layers for g in names)
  a = np.asarray(gates[layers[0]][names[0]])
  valid = np.concatenate([a[b, :int(n)] for b, n in enumerate(lengths)])
  assert stats[f'{layers[0]}/{names[0]}']['mean'] == pytest.approx(valid.mean(), rel=1e-6)
