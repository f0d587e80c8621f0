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
    ('rnn', {'cell': 'gru', 'hidden': 6, 'bidirectional': True}, 5110),  # GRUBase, Flax GRU biases
])
def test_mnist1d_models_have_the_reference_sizes(name, kwargs, params):
  model = build_model(ml_collections.ConfigDict(dict(name=name, **kwargs)), {'num_classes': 10})
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 40)))
  assert model.apply(variables, jnp.ones((2, 40))).shape == (2, 10)
  assert sum(x.size for x in jax.tree.leaves(variables)) == params


def test_unknown_model_option_is_named():
  with pytest.raises(ValueError, match=r"no option\(s\) \['hiden'\]"):
    build_model(ml_collections.ConfigDict(dict(name='mlp', hiden=3)), {'num_classes': 10})
