"""Task losses and metrics against direct NumPy computations."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.tasks import make_task, mean_over_batch


def test_regress_within_tolerance_counts_every_output():
  task = make_task(ml_collections.ConfigDict(dict(kind='regress', tolerance=0.04)))
  y = jnp.asarray([0.5, 0.5, 0.5, 0.5])
  pred = jnp.asarray([0.5, 0.539, 0.541, 0.45])
  per = task.per_example(pred[:, None], {'y': y}, {})
  np.testing.assert_array_equal(per['within_tol'], [1, 1, 0, 0])
  np.testing.assert_allclose(per['mse'], (np.asarray(pred) - 0.5) ** 2, rtol=1e-5)


def test_weighted_batch_mean_is_per_frame():
  per = {'loss': jnp.asarray([1.0, 4.0]), 'weight': jnp.asarray([3.0, 1.0])}
  assert float(mean_over_batch(per)['loss']) == pytest.approx((3 * 1 + 4) / 4)
  assert 'weight' not in mean_over_batch(per)
  assert float(mean_over_batch({'loss': jnp.asarray([1.0, 4.0])})['loss']) == 2.5


def test_multilabel_sequence_nll_against_numpy():
  task = make_task(ml_collections.ConfigDict(dict(kind='multilabel_sequence')))
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 88)).astype(np.float32)
  y = (rng.random((2, 5, 88)) < 0.1).astype(np.float32)
  lengths = np.asarray([5, 2])
  per = task.per_example(jnp.asarray(logits), {'y': jnp.asarray(y), 'lengths': lengths}, {})
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  nll = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1)  # (2, 5)
  np.testing.assert_allclose(per['loss'], [nll[0].mean(), nll[1, :2].mean()], rtol=1e-5)
  np.testing.assert_array_equal(per['weight'], [5, 2])


def test_each_task_lists_exactly_the_metrics_it_reports():
  import ml_collections
  from research.tasks import KINDS, make_task
  B, T, C = 3, 4, 5
  samples = {
      'classify': (jnp.zeros((B, C)), {'y': jnp.zeros(B, jnp.int32)}),
      'regress': (jnp.zeros(B), {'y': jnp.zeros(B)}),
      'sequence_classify': (jnp.zeros((B, T, C)), {'y': jnp.zeros((B, T), jnp.int32)}),
      'multilabel_sequence': (jnp.zeros((B, T, C)), {'y': jnp.zeros((B, T, C))}),
      'elbo': ({'log_px': jnp.zeros(B), 'kl': jnp.zeros((B, C))}, {}),
  }
  for kind in KINDS:
    task = make_task(ml_collections.ConfigDict(dict(kind=kind, label_smoothing=0.0)))
    out, batch = samples[kind]
    per = task.per_example(out, batch, {'task.label_smoothing': 0.0, 'task.beta': 1.0,
                                        'task.free_bits': 0.0, 'task.anneal_steps': 0})
    assert set(per) - {'weight'} == set(task.metrics), kind


def test_adding_success_criteria_match_the_papers():
  """configs/synthetic.py's tolerances against the papers' own error counts: Pascanu et al.
  2013 (their code: target (X1 + X2) / 2, error when the squared error > 0.04) for the
  two-marker form, whose target here is X1 + X2; Hochreiter & Schmidhuber 1997 (absolute
  error >= 0.04 on the target 0.5 + (X1 + X2) / 4, which our adding_hs generates)."""
  from research import cli
  rng = np.random.default_rng(0)
  y = rng.uniform(0, 2, size=2000).astype(np.float32)
  pred = (y + rng.normal(0, 0.3, size=y.shape)).astype(np.float32)
  task = make_task(cli.load_config('configs/synthetic.py', 'task=adding').task)
  ours = np.asarray(task.per_example(jnp.asarray(pred), {'y': jnp.asarray(y)}, {})['within_tol'])
  pascanu_error = (pred / 2 - y / 2) ** 2 > 0.04
  margin = np.abs(np.abs(pred - y) - 0.4) > 1e-4  # float ties at the boundary
  np.testing.assert_array_equal(ours[margin], ~pascanu_error[margin])
  assert 0.05 < pascanu_error.mean() < 0.5  # the draw exercises both sides
  y_hs = rng.uniform(0, 1, size=2000).astype(np.float32)
  pred_hs = (y_hs + rng.normal(0, 0.04, size=y_hs.shape)).astype(np.float32)
  task = make_task(cli.load_config('configs/synthetic.py', 'task=adding_hs').task)
  ours = np.asarray(task.per_example(jnp.asarray(pred_hs), {'y': jnp.asarray(y_hs)}, {})['within_tol'])
  margin = np.abs(np.abs(pred_hs - y_hs) - 0.04) > 1e-5
  np.testing.assert_array_equal(ours[margin], (np.abs(pred_hs - y_hs) < 0.04)[margin])
