"""VAE pieces against closed forms, the IWAE bound on a model with a known
log p(x), the elbo task's knobs, the digits image loader, and training."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate, stats

from research import cli
from research.data import load_dataset
from research.models import build_model
from research.models import vae
from research.tasks import kl_weight, make_task, mean_over_batch


def test_gaussian_kl_matches_numerical_integration():
  for mu, logvar in ((0.0, 0.0), (1.3, -0.7), (-0.4, 1.1)):
    s = math.exp(0.5 * logvar)
    q, p = stats.norm(mu, s), stats.norm(0, 1)
    ref, _ = integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)), -30, 30)
    with jax.enable_x64(True):
      got = float(vae.gaussian_kl(jnp.float64(mu), jnp.float64(logvar)))
    assert got == pytest.approx(ref, rel=1e-8, abs=1e-10)


def test_log_likelihoods_match_scipy():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    logits = rng.normal(size=(6, 17))
    k = rng.integers(0, 17, size=6)
    ref = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))[np.arange(6), k]
    np.testing.assert_allclose(vae.categorical_log_prob(jnp.asarray(logits), jnp.asarray(k)),
                               ref, rtol=1e-12)
    l, x = rng.normal(size=20) * 3, rng.integers(0, 2, size=20).astype(float)
    np.testing.assert_allclose(vae.bernoulli_log_prob(jnp.asarray(l), jnp.asarray(x)),
                               stats.bernoulli.logpmf(x, 1 / (1 + np.exp(-l))), rtol=1e-10)
    x, m, lv = rng.normal(size=(3, 20))
    np.testing.assert_allclose(vae.log_normal(jnp.asarray(x), jnp.asarray(m), jnp.asarray(lv)),
                               stats.norm.logpdf(x, m, np.exp(0.5 * lv)), rtol=1e-12)


def _vae(**kw):
  c = cli.load_config('configs/vae_digits.py', 'quick').model
  for k, v in kw.items():
    c[k] = v
  return build_model(c, {})


@pytest.mark.parametrize('kw', [dict(likelihood='categorical'), dict(likelihood='bernoulli'),
                                dict(likelihood='gaussian', gaussian_variance='learned'),
                                dict(encoder='conv', decoder='conv')])
def test_vae_log_px_is_the_likelihood_of_the_decoded_sample(kw):
  model = _vae(**kw)
  x = jnp.asarray(np.random.default_rng(1).integers(0, 17, (5, 8, 8, 1)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  key = jax.random.PRNGKey(3)
  out = model.apply(variables, x, rngs={'sample': key})
  mu, logvar = model.apply(variables, x, method=vae.VAE.encode)
  np.testing.assert_allclose(out['mu'], mu, rtol=1e-6)
  np.testing.assert_allclose(out['kl'], vae.gaussian_kl(mu, logvar), rtol=1e-6)
  # log_px is log p(x | z) of the reparameterised sample z = mu + std * eps.
  np.testing.assert_allclose(
      out['log_px'], model.apply(variables, out['z'], x, method=vae.VAE.log_px_given_z), rtol=1e-5)
  eps = (out['z'] - mu) / jnp.exp(0.5 * logvar)
  assert 0.5 < float(jnp.std(eps)) < 1.5 and not np.allclose(eps, 0)
  dec = model.apply(variables, mu, method=vae.VAE.decode)
  assert dec.shape[:4] == (5, 8, 8, 1)
  img = model.apply(variables, dec, method=vae.VAE.mean_image)
  assert img.shape == (5, 8, 8, 1) and float(img.min()) >= 0 and float(img.max()) <= 1
  assert out['log_px'].shape == (5,) and bool(jnp.all(jnp.isfinite(out['log_px'])))
  if model.likelihood != 'gaussian':
    assert bool(jnp.all(out['log_px'] < 0))  # a probability of a discrete image
  # Without a 'sample' rng (evaluation) the noise is fixed: the same numbers twice.
  a, b = model.apply(variables, x), model.apply(variables, x)
  np.testing.assert_array_equal(a['log_px'], b['log_px'])
  if 'gaussian_variance' in kw:
    assert variables['params']['log_sigma'].shape == (8, 8, 1)


def test_vae_rejects_bad_options_by_name():
  with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
    _vae(likelihood='poisson').init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match='do not match model.image_shape'):
    _vae().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 9, 1)))


# ---- the importance-weighted bound on a linear Gaussian model (log p(x) in closed form) ----

def _linear_gaussian(exact_posterior: bool):
  """p(z) = N(0, I_2), p(x|z) = N(W z + b, s^2 I_4), W with orthogonal columns so the
  true posterior is diagonal: N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1."""
  rng = np.random.default_rng(0)
  Q, _ = np.linalg.qr(rng.normal(size=(4, 2)))
  W, b, s = Q * np.array([1.5, 0.7]), rng.normal(size=4), 0.5
  S = np.linalg.inv(np.eye(2) + W.T @ W / s ** 2)
  assert abs(S[0, 1]) < 1e-12
  shrink = 1.0 if exact_posterior else 0.6  # a worse (too narrow, shrunk) posterior

  def encode(x):
    mu = ((x - b) @ W / s ** 2) @ S * shrink
    return mu, jnp.broadcast_to(jnp.log(jnp.diag(S)) + (0.0 if exact_posterior else -1.0),
                                mu.shape)

  def log_lik(z, x):
    return jnp.sum(vae.log_normal(x, z @ W.T + b, 2 * math.log(s)), -1)

  x = rng.normal(size=(3, 4)) * 2
  log_px = stats.multivariate_normal(b, W @ W.T + s ** 2 * np.eye(4)).logpdf(x)
  return encode, log_lik, x, log_px, W, b, s


def test_iwae_is_exact_with_the_true_posterior_for_every_k_and_chunking():
  with jax.enable_x64(True):
    encode, log_lik, x, log_px, *_ = _linear_gaussian(exact_posterior=True)
    for k, chunk in ((1, 1), (10, 4), (10, 10), (37, 8)):  # 10 / 4: 2 masked samples
      got = vae.importance_weighted_bound(encode, log_lik, jnp.asarray(x), k,
                                          jax.random.PRNGKey(k), chunk)
      np.testing.assert_allclose(got, log_px, rtol=1e-10, err_msg=f'k={k}')


def test_iwae_equals_elbo_at_k1_and_increases_with_k():
  with jax.enable_x64(True):
    encode, log_lik, x, log_px, W, b, s = _linear_gaussian(exact_posterior=False)
    x = jnp.asarray(x)
    # The ELBO in closed form: E_q log N(x; W z + b, s^2) - KL(q || p).
    mu, logvar = encode(x)
    var = np.exp(np.asarray(logvar))
    mean_ll = (np.asarray(log_lik(mu, x))
               - 0.5 * np.einsum('ij,bj->b', W ** 2, var) / s ** 2)
    elbo = mean_ll - np.asarray(vae.gaussian_kl(mu, logvar)).sum(-1)
    f = jax.jit(jax.vmap(lambda key, k: vae.importance_weighted_bound(encode, log_lik, x, k, key, 50),
                         in_axes=(0, None)), static_argnums=1)
    reps = 4000
    means = {}
    for k in (1, 5, 50):
      draws = np.asarray(f(jax.random.split(jax.random.PRNGKey(k), reps), k))  # (reps, 3)
      means[k], se = draws.mean(0), draws.std(0) / math.sqrt(reps)
      if k == 1:  # L_1 is an unbiased estimate of the ELBO
        assert np.all(np.abs(means[1] - elbo) < 4 * se), (means[1], elbo, se)
    assert np.all(elbo < means[5]) and np.all(means[5] < means[50]) and np.all(means[50] < log_px)
    L5000 = np.asarray(vae.importance_weighted_bound(encode, log_lik, x, 5000,
                                                     jax.random.PRNGKey(9), 500))
    assert np.all(means[50] < L5000) and np.all(L5000 <= log_px + 1e-3)
    assert np.all(log_px - L5000 < 0.5 * (log_px - elbo))  # most of the gap closed


# ---- the elbo task ----

def _task(**kw):
  return make_task(ml_collections.ConfigDict(dict(kind='elbo', **kw)))


def _hp(beta=1.0, free_bits=0.0, anneal_steps=0, step=None):
  hp = {'task.beta': jnp.float32(beta), 'task.free_bits': jnp.float32(free_bits),
        'task.anneal_steps': jnp.float32(anneal_steps)}
  if step is not None:
    hp['step'] = jnp.int32(step)
  return hp


def test_elbo_terms_beta_and_annealing():
  rng = np.random.default_rng(0)
  out = {'log_px': jnp.asarray(-rng.random(4) * 100), 'kl': jnp.asarray(rng.random((4, 3)))}
  recon, kl = -np.asarray(out['log_px']), np.asarray(out['kl']).sum(-1)
  per = _task().per_example(out, {}, _hp(beta=4.0))
  np.testing.assert_allclose(per['nelbo'], recon + kl, rtol=1e-6)
  np.testing.assert_allclose(per['recon'], recon, rtol=1e-6)
  np.testing.assert_allclose(per['loss'], recon + 4 * kl, rtol=1e-6)
  # Linear annealing halfway: weight 1/2 in training, 1 in evaluation (no step).
  lin = _task(anneal='linear')
  np.testing.assert_allclose(lin.per_example(out, {}, _hp(2.0, 0, 100, step=50))['loss'],
                             recon + kl, rtol=1e-6)
  np.testing.assert_allclose(lin.per_example(out, {}, _hp(2.0, 0, 100))['loss'],
                             recon + 2 * kl, rtol=1e-6)


def test_kl_weight_schedules():
  w = lambda kind, step, steps=100: float(kl_weight(kind, step, steps))
  assert [w('linear', s) for s in (0, 25, 100, 500)] == [0.0, 0.25, 1.0, 1.0]
  assert w('sigmoid', 50) == pytest.approx(0.5) and w('sigmoid', 0) < 0.01 and w('sigmoid', 100) == 1
  # Fu et al. 2019: each period rises linearly over its first half (ratio 0.5), then holds 1.
  assert [w('cyclical', s) for s in (0, 25, 50, 99, 100, 125)] == pytest.approx(
      [0.0, 0.5, 1.0, 1.0, 0.0, 0.5])
  assert w('linear', 10, steps=0) == 1.0 and w('cyclical', None) == 1.0
  with pytest.raises(ValueError, match="Unknown task.anneal 'cosine'"):
    _task(anneal='cosine')


def test_free_bits_objective_and_gradient():
  kl = jnp.asarray([[0.1, 2.0, 0.3], [0.3, 1.0, 0.5]])  # unit means 0.2, 1.5, 0.4
  lam = 0.35
  task = _task()

  def objective(kl_units):
    per = task.per_example({'log_px': jnp.zeros(2), 'kl': kl_units}, {}, _hp(free_bits=lam))
    return mean_over_batch(per)['loss']

  # Batch mean of the objective: sum_j max(lambda, mean_b KL_bj).
  assert float(objective(kl)) == pytest.approx(0.35 + 1.5 + 0.4, rel=1e-6)
  g = jax.grad(objective)(kl)  # no gradient through units under lambda
  np.testing.assert_allclose(g, [[0, 0.5, 0.5], [0, 0.5, 0.5]])
  plain = task.per_example({'log_px': jnp.zeros(2), 'kl': kl}, {}, _hp(free_bits=0.0))
  np.testing.assert_allclose(plain['loss'], kl.sum(-1))  # lambda = 0 changes nothing


def test_digits_images_follow_tomczaks_split():
  from sklearn.datasets import load_digits
  ds = load_dataset(ml_collections.ConfigDict(dict(name='digits_images')))
  assert ds.sizes() == {'train': 1000, 'val': 350, 'test': 447}
  raw = load_digits().images
  np.testing.assert_array_equal(ds.train['x'][0, ..., 0], raw[0])
  np.testing.assert_array_equal(ds.test['x'][-1, ..., 0], raw[-1])
  levels = np.unique(np.concatenate([s['x'].ravel() for s in (ds.train, ds.val, ds.test)]))
  np.testing.assert_array_equal(levels, np.arange(17))
  with pytest.raises(ValueError, match='split must be'):
    load_dataset(ml_collections.ConfigDict(dict(name='digits_images', split='random')))


def test_beta_population_trains_and_larger_beta_means_less_kl(tmp_path):
  from research.train import train_and_evaluate
  c = cli.load_config('configs/vae_digits.py', 'quick')
  c.population = 'task.beta=0.2,8'
  c.train.epochs = 6
  c.train.eval_every = 3
  out = train_and_evaluate(c, tmp_path)
  low, high = out['members']
  assert low['hparams']['task.beta'] == 0.2 and high['hparams']['task.beta'] == 8
  for m in out['members']:
    assert m['test/nelbo'] == pytest.approx(m['test/recon'] + m['test/kl'], rel=1e-5)
    assert m['test/loss'] == pytest.approx(m['test/recon'] + m['hparams']['task.beta'] * m['test/kl'],
                                           rel=1e-4)
  assert high['test/kl'] < 0.5 * low['test/kl']
  assert high['test/recon'] > low['test/recon']
  assert {r['metric'] for r in out['rows']} == {'test_nelbo', 'test_loss'}
