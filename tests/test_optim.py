"""`research.optim.build_optimizer` against optax's own reference optimizers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import optim

STEPS = 5
RTOL, ATOL = 1e-5, 1e-7


def make_config(**overrides):
  cfg = optim.default_config()
  for k, v in overrides.items():
    setattr(cfg, k, v)
  return cfg


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'dense': {'w': rng.normal(size=(3, 4)).astype(np.float32),
                'b': rng.normal(size=(4,)).astype(np.float32)},
      'out': rng.normal(size=(5,)).astype(np.float32),
  }


def make_grads(params, step, seed=1):
  """Random gradients, global norm ~4.5, different at every step."""
  rng = np.random.default_rng(1000 * seed + step)
  return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)


def assert_tree_allclose(a, b, rtol=RTOL, atol=ATOL):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def trajectory(tx, steps=STEPS, seed=0, extra=None):
  """Updates of ``tx`` over ``steps`` steps, applying them to the params."""
  params = jax.tree.map(jnp.asarray, make_params(seed))
  state = tx.init(params)
  update = lambda g, s, p: tx.update(g, s, p, **(extra or {}))  # noqa: E731 (eager: compiling costs more)
  out = []
  for t in range(steps):
    updates, state = update(make_grads(params, t, seed + 1), state, params)
    out.append(updates)
    params = optax.apply_updates(params, updates)
  return out


def assert_same_updates(ours, ref, steps=STEPS):
  u_ours, u_ref = trajectory(ours, steps), trajectory(ref, steps)
  for t, (a, b) in enumerate(zip(u_ours, u_ref)):
    try:
      assert_tree_allclose(a, b)
    except AssertionError as e:
      raise AssertionError(f'updates differ at step {t}: {e}') from None
  # The comparison must be meaningful: updates are not all zero.
  assert any(float(optax.tree.norm(u)) > 0 for u in u_ref)
  return u_ours


def assert_differs(ours, other, steps=STEPS):
  """Sanity check that a test can fail: ``other`` gives different updates."""
  a, b = trajectory(ours, steps), trajectory(other, steps)
  assert any(not np.allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
             for ua, ub in zip(a, b)
             for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)))


# --------------------------------------------------------------------------- adam

def test_adam_constant_matches_optax_adam():
  cfg = make_config(name='adam', lr=3e-3, b1=0.8, b2=0.99, eps=1e-6)
  ours = optim.build_optimizer(cfg, total_steps=100)
  assert_same_updates(ours, optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6))
  assert_differs(ours, optax.adam(3e-3))  # b1/b2/eps from the config are honoured


def test_adam_default_config_matches_optax_adam_defaults():
  cfg = make_config()
  assert cfg.name == 'adam' and cfg.schedule == 'constant'
  assert_same_updates(optim.build_optimizer(cfg, 10), optax.adam(cfg.lr))


def test_adam_weight_decay_is_decoupled_like_adamw():
  cfg = make_config(name='adam', lr=1e-2, weight_decay=0.1)
  ours = optim.build_optimizer(cfg, total_steps=100)
  assert_same_updates(ours, optax.adamw(1e-2, weight_decay=0.1))
  assert_differs(ours, optax.adam(1e-2))
  # Decoupled, not an L2 term added to the gradient before Adam's scaling.
  assert_differs(ours, optax.chain(optax.add_decayed_weights(0.1), optax.adam(1e-2)))


def test_adam_cosine_matches_optax_schedule():
  lr, total, alpha = 1e-2, 6, 0.1
  cfg = make_config(name='adam', lr=lr, schedule='cosine', final_lr_fraction=alpha)
  ours = optim.build_optimizer(cfg, total_steps=total)
  assert_same_updates(ours, optax.adam(optax.cosine_decay_schedule(lr, total, alpha)))
  assert_differs(ours, optax.adam(lr))


def test_warmup_cosine_matches_optax_schedule():
  lr, warmup, total, frac = 1e-2, 2, 6, 0.05
  cfg = make_config(name='adam', lr=lr, schedule='warmup_cosine', warmup_steps=warmup,
                    final_lr_fraction=frac)
  ours = optim.build_optimizer(cfg, total_steps=total)
  ref = optax.adam(optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, total, end_value=lr * frac))
  updates = assert_same_updates(ours, ref, steps=6)
  # Warmup starts at 0: the first update is zero.
  assert float(optax.tree.norm(updates[0])) == 0.0
  assert_differs(ours, optax.adam(lr), steps=6)


def test_exponential_matches_optax_exponential_decay():
  lr = 1e-2
  cfg = make_config(name='adam', lr=lr, schedule='exponential', decay_steps=2, decay_rate=0.5)
  ours = optim.build_optimizer(cfg, total_steps=100)
  assert_same_updates(ours, optax.adam(optax.exponential_decay(lr, 2, 0.5)))
  assert_differs(ours, optax.adam(lr))


def test_step_matches_optax_piecewise_constant():
  lr, total = 1e-2, 7
  cfg = make_config(name='sgd', lr=lr, schedule='step', decay_steps=2, decay_rate=0.5)
  ours = optim.build_optimizer(cfg, total_steps=total)
  ref = optax.sgd(optax.piecewise_constant_schedule(lr, {2: 0.5, 4: 0.5, 6: 0.5}))
  assert_same_updates(ours, ref, steps=total)
  assert_differs(ours, optax.sgd(lr), steps=total)


# ---------------------------------------------------------------- sgd / rmsprop

def test_sgd_nesterov_matches_optax_sgd():
  cfg = make_config(name='sgd', lr=0.1, momentum=0.9, nesterov=True)
  ours = optim.build_optimizer(cfg, total_steps=100)
  assert_same_updates(ours, optax.sgd(0.1, momentum=0.9, nesterov=True))
  assert_differs(ours, optax.sgd(0.1, momentum=0.9, nesterov=False))


def test_sgd_momentum_matches_optax_sgd():
  cfg = make_config(name='sgd', lr=0.1, momentum=0.5)
  assert_same_updates(optim.build_optimizer(cfg, 100), optax.sgd(0.1, momentum=0.5))


def test_plain_sgd_matches_optax_sgd():
  cfg = make_config(name='sgd', lr=0.1)
  ours = optim.build_optimizer(cfg, total_steps=100)
  assert_same_updates(ours, optax.sgd(0.1))
  # Plain SGD: the update is exactly -lr * grad.
  params = make_params()
  u, _ = ours.update(make_grads(params, 0), ours.init(params), params)
  assert_tree_allclose(u, jax.tree.map(lambda g: -0.1 * g, make_grads(params, 0)))


def test_rmsprop_matches_optax_rmsprop():
  cfg = make_config(name='rmsprop', lr=1e-2, rms_decay=0.95, eps=1e-6)
  ours = optim.build_optimizer(cfg, total_steps=100)
  # optax.rmsprop's defaults: eps inside the sqrt, initial_scale 0, no
  # centering and no bias correction -- the same as scale_by_rms's.
  assert_same_updates(ours, optax.rmsprop(1e-2, decay=0.95, eps=1e-6))
  assert_differs(ours, optax.rmsprop(1e-2, decay=0.95, eps=1e-6, eps_in_sqrt=False))


def test_rmsprop_momentum_matches_optax_rmsprop():
  cfg = make_config(name='rmsprop', lr=1e-2, momentum=0.9, nesterov=True)
  ours = optim.build_optimizer(cfg, total_steps=100)
  assert_same_updates(ours, optax.rmsprop(1e-2, decay=0.9, eps=1e-8, momentum=0.9,
                                          nesterov=True))


@pytest.mark.parametrize('name,ref', [('adam', optax.adam), ('sgd', optax.sgd)])
def test_clip_norm_matches_optax_chain(name, ref):
  cfg = make_config(name=name, lr=1e-2, clip_norm=0.5)
  ours = optim.build_optimizer(cfg, total_steps=100)
  assert_same_updates(ours, optax.chain(optax.clip_by_global_norm(0.5), ref(1e-2)))
  assert_differs(ours, ref(1e-2))  # the gradients (norm ~4) really are clipped


# --------------------------------------------------------------------- plateau

def _plateau_update_norms(losses, patience=3, decay_rate=0.5):
  cfg = make_config(name='sgd', lr=0.1, schedule='plateau', plateau_patience=patience,
                    decay_rate=decay_rate)
  tx = optim.build_optimizer(cfg, total_steps=100)
  params = make_params()
  grads = make_grads(params, 0)  # constant gradients: only the step size changes
  state = tx.init(params)
  update = jax.jit(lambda s, v: tx.update(grads, s, params, value=v))
  norms = []
  for loss in losses:
    u, state = update(state, jnp.float32(loss))
    norms.append(float(optax.tree.norm(u)))
  return np.asarray(norms), float(optax.tree.norm(grads))


def test_plateau_reduces_step_size_after_patience():
  patience, rate = 3, 0.5
  norms, gnorm = _plateau_update_norms([1.0] * (2 * patience + 1), patience, rate)
  full = 0.1 * gnorm
  # The first loss improves on +inf; the next ones do not, and the
  # `patience`-th non-improving step (index `patience`) reduces the scale by
  # decay_rate; `patience` further non-improving steps reduce it again.
  np.testing.assert_allclose(norms[:patience], full, rtol=1e-5)
  np.testing.assert_allclose(norms[patience:2 * patience], rate * full, rtol=1e-5)
  np.testing.assert_allclose(norms[2 * patience], rate ** 2 * full, rtol=1e-5)


def test_plateau_keeps_step_size_while_loss_improves():
  norms, gnorm = _plateau_update_norms([1.0 / (t + 1) for t in range(8)], patience=3)
  np.testing.assert_allclose(norms, 0.1 * gnorm, rtol=1e-5)


def test_plateau_update_requires_value():
  cfg = make_config(name='sgd', schedule='plateau')
  tx = optim.build_optimizer(cfg, total_steps=10)
  params = make_params()
  with pytest.raises(TypeError):
    tx.update(make_grads(params, 0), tx.init(params), params)


# ------------------------------------------------------ per-member hyperparameters

@pytest.mark.parametrize('name', ['adam', 'sgd'])
def test_vmapped_members_match_separate_optimizers(name):
  lrs = np.asarray([1e-3, 1e-2, 3e-2], np.float32)
  clips = np.asarray([0.0, 0.5, 2.0], np.float32)  # 0: this member does not clip
  wds = np.asarray([0.0, 1e-2, 0.1], np.float32)
  # SGD: member 0 has no momentum (plain SGD inside the momentum stage).
  moms = np.asarray([0.0, 0.5, 0.9] if name == 'sgd' else [0.0] * 3, np.float32)
  k = len(lrs)
  base = make_config(name=name, lr=1e-3)
  tx = optim.build_optimizer(base, total_steps=100, clip=True, decay=True,
                             momentum=name == 'sgd')

  member_params = [make_params(seed=i) for i in range(k)]
  params = jax.tree.map(lambda *xs: jnp.stack(xs), *member_params)

  def init(p, lr, c, wd, mom):
    state = tx.init(p)
    return optim.set_hparams(state, {'optim.lr': lr, 'optim.clip_norm': c,
                                     'optim.weight_decay': wd, 'optim.momentum': mom})

  states = jax.vmap(init)(params, lrs, clips, wds, moms)
  update = jax.jit(jax.vmap(tx.update))

  refs = []
  for i in range(k):
    cfg = make_config(name=name, lr=float(lrs[i]), clip_norm=float(clips[i]),
                      weight_decay=float(wds[i]), momentum=float(moms[i]))
    ref_tx = optim.build_optimizer(cfg, total_steps=100)  # stages only where used
    refs.append((ref_tx, ref_tx.init(member_params[i]), member_params[i]))

  for t in range(STEPS):
    grads = [make_grads(member_params[i], t, seed=i + 1) for i in range(k)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
    updates, states = update(stacked, states, params)
    params = optax.apply_updates(params, updates)
    for i, (ref_tx, ref_state, ref_params) in enumerate(refs):
      ref_u, ref_state = ref_tx.update(grads[i], ref_state, ref_params)
      refs[i] = (ref_tx, ref_state, optax.apply_updates(ref_params, ref_u))
      assert_tree_allclose(jax.tree.map(lambda x: x[i], updates), ref_u)

  hp = states.hyperparams
  np.testing.assert_allclose(hp['learning_rate'], lrs)
  np.testing.assert_allclose(hp['weight_decay'], wds)
  np.testing.assert_allclose(hp['momentum'], moms)
  np.testing.assert_array_equal(hp['clip_norm'], [np.inf, 0.5, 2.0])


def test_set_hparams_zero_clip_means_no_clipping():
  cfg = make_config(name='sgd', lr=0.1)
  tx = optim.build_optimizer(cfg, total_steps=10, clip=True)
  params = make_params()
  grads = make_grads(params, 0)
  state = optim.set_hparams(tx.init(params), {'optim.clip_norm': 0.0})
  u, _ = tx.update(grads, state, params)
  assert_tree_allclose(u, jax.tree.map(lambda g: -0.1 * g, grads))
  state = optim.set_hparams(tx.init(params), {'optim.clip_norm': 1.0})
  u, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(float(optax.tree.norm(u)), 0.1, rtol=1e-5)


# ---------------------------------------------------------------------- errors

def test_unknown_optimizer_raises():
  with pytest.raises(ValueError, match="'adagrad'"):
    optim.build_optimizer(make_config(name='adagrad'), total_steps=10)


def test_unknown_schedule_raises():
  with pytest.raises(ValueError, match="'linear'"):
    optim.build_optimizer(make_config(schedule='linear'), total_steps=10)
