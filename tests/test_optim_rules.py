"""Optimizer rules (name / nesterov / schedule) as per-member data.

A vmapped population whose members follow different rules is checked against
optax's public optimizers, each run alone.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import optim

STEPS = 30
RTOL, ATOL = 1e-5, 1e-6
DIM, BATCH = 4, 8

# Schedule settings shared by all members (they live in the config, not the rule).
SHARED = dict(rms_decay=0.9, eps=1e-8, b1=0.9, b2=0.999, warmup_steps=5,
              final_lr_fraction=0.1, decay_steps=8, decay_rate=0.5,
              plateau_patience=2, plateau_cooldown=0, plateau_window=1)

RULES = [
    {'name': 'adam', 'schedule': 'constant'},
    {'name': 'rmsprop', 'schedule': 'cosine'},
    {'name': 'sgd', 'nesterov': True, 'schedule': 'warmup_cosine'},
    {'name': 'sgd', 'schedule': 'step'},
    {'name': 'adam', 'schedule': 'plateau'},
    {'name': 'sgd', 'schedule': 'exponential'},
]


def _sched(kind, lr):
  """The reference schedule ``lr * shape`` built from optax's schedules."""
  s = SHARED
  if kind == 'constant':
    return optax.constant_schedule(lr)
  if kind == 'cosine':
    return optax.cosine_decay_schedule(lr, STEPS, alpha=s['final_lr_fraction'])
  if kind == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, s['warmup_steps'], STEPS,
                                              end_value=lr * s['final_lr_fraction'])
  if kind == 'step':
    return optax.piecewise_constant_schedule(lr, {8: 0.5, 16: 0.5, 24: 0.5})
  if kind == 'exponential':
    return optax.exponential_decay(lr, s['decay_steps'], s['decay_rate'])
  raise AssertionError(kind)


def _plateau():
  return optax.contrib.reduce_on_plateau(factor=SHARED['decay_rate'],
                                         patience=SHARED['plateau_patience'],
                                         cooldown=0, accumulation_size=1)


# (rule index, hparams, reference optimizer, reference schedule) per member.
# optax.rmsprop = scale_by_rms (eps inside the sqrt, no centring / bias
# correction) then the learning rate; optax.sgd(momentum, nesterov) = trace then
# the learning rate; optax.adamw = decoupled decay scaled by the schedule too.
def _members():
  m = []
  lr = 3e-2
  m.append((0, dict(lr=lr), optax.adam(lr), _sched('constant', lr)))
  s = _sched('cosine', 1e-2)
  m.append((1, dict(lr=1e-2), optax.rmsprop(s, decay=0.9, eps=1e-8), s))
  s = _sched('warmup_cosine', 5e-2)
  m.append((2, dict(lr=5e-2, momentum=0.9), optax.sgd(s, momentum=0.9, nesterov=True), s))
  s = _sched('step', 5e-2)
  m.append((3, dict(lr=5e-2), optax.sgd(s), s))
  # optax's documented pairing: chain(optimizer, reduce_on_plateau); the step
  # size is then lr * state.scale.
  m.append((4, dict(lr=5e-2), optax.chain(optax.adam(5e-2), _plateau()), None))
  m.append((0, dict(lr=2e-2, weight_decay=0.1), optax.adamw(2e-2, weight_decay=0.1),
            _sched('constant', 2e-2)))
  s = _sched('exponential', 5e-2)
  m.append((5, dict(lr=5e-2, momentum=0.5, clip_norm=0.2),
            optax.chain(optax.clip_by_global_norm(0.2), optax.sgd(s, momentum=0.5)), s))
  return m


def _hp(rule, h):
  return {'optim.rule': rule, 'optim.lr': h['lr'],
          'optim.weight_decay': h.get('weight_decay', 0.0),
          'optim.clip_norm': h.get('clip_norm', 0.0), 'optim.momentum': h.get('momentum', 0.0)}


def make_config(**overrides):
  cfg = optim.default_config()
  for k, v in {**SHARED, **overrides}.items():
    setattr(cfg, k, v)
  return cfg


def make_data():
  """Noisy least squares: a fresh mini-batch every step (so the loss is noisy
  and reduce_on_plateau really reduces its scale)."""
  rng = np.random.default_rng(0)
  w_true = rng.normal(size=(DIM,)).astype(np.float32)
  x = rng.normal(size=(STEPS, BATCH, DIM)).astype(np.float32)
  y = x @ w_true + 0.5 * rng.normal(size=(STEPS, BATCH)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def init_params():
  rng = np.random.default_rng(1)
  return {'w': jnp.asarray(rng.normal(size=(DIM,)).astype(np.float32)),
          'b': jnp.float32(1.5)}


def loss_fn(params, x, y):
  return jnp.mean((x @ params['w'] + params['b'] - y) ** 2)


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def assert_tree_allclose(a, b, rtol=RTOL, atol=ATOL):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)  # same structure, close leaves


def assert_tree_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run_reference(tx, x, y):
  """One member alone (not vmapped) with an optax optimizer."""
  params = init_params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  states = [state]
  for t in range(STEPS):
    params, state = step(params, state, x[t], y[t])
    states.append(state)
  return params, states


# ------------------------------------------------------------------ population

@pytest.fixture(scope='module')
def population():
  members = _members()
  n = len(members)
  x, y = make_data()
  cfg = make_config(name='adam', schedule='constant')
  tx = optim.build_optimizer(cfg, STEPS, clip=True, decay=True, momentum=True, rules=RULES)
  multipliers = optim.schedule_multipliers(cfg, STEPS, RULES)
  hp = stack([{k: jnp.asarray(v) for k, v in _hp(r, h).items()} for r, h, _, _ in members])
  hp['optim.rule'] = hp['optim.rule'].astype(jnp.int32)
  params = stack([init_params()] * n)  # same start: members differ only by rule / hparams

  def init(p, h):
    return optim.set_hparams(tx.init(p), h)

  def train_step(carry, batch):
    params, state, step = carry
    xb, yb = batch

    def one(p, s):
      loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
      lr = optim.step_size(s, multipliers, step)
      updates, s = tx.update(grads, s, p, value=loss)
      return optax.apply_updates(p, updates), s, lr

    params, state, lr = jax.vmap(one)(params, state)
    return (params, state, step + 1), lr

  @jax.jit
  def train(params, hp):
    state0 = jax.vmap(init)(params, hp)
    (params, state, _), lrs = jax.lax.scan(train_step, (params, state0, jnp.int32(0)), (x, y))
    return params, state0, state, lrs

  final, state0, state, lrs = train(params, hp)
  refs = [run_reference(ref, x, y) for _, _, ref, _ in members]
  return dict(members=members, final=final, state0=state0, state=state, lrs=lrs, refs=refs)


def test_each_member_matches_its_solo_optax_optimizer(population):
  members, final, refs = population['members'], population['final'], population['refs']
  for i, (rule, h, _, _) in enumerate(members):
    try:
      assert_tree_allclose(member(final, i), refs[i][0])
    except AssertionError as e:
      raise AssertionError(f'member {i} (rule {RULES[rule]}, {h}): {e}') from None
  # The comparison is meaningful: from one start, every member ends elsewhere.
  for i in range(len(members)):
    for j in range(i):
      assert not np.allclose(member(final, i)['w'], member(final, j)['w'], rtol=1e-3)
  # Plateau really reduced its scale; the clip really clipped (grad norm at step 0).
  assert float(refs[4][1][-1][1].scale) < 1.0
  x, y = make_data()
  assert float(optax.tree.norm(jax.grad(loss_fn)(init_params(), x[0], y[0]))) > 0.2


def test_step_size_is_the_reference_schedule(population):
  members, lrs, refs = population['members'], population['lrs'], population['refs']
  assert lrs.shape == (STEPS, len(members))
  for i, (_, h, _, sched) in enumerate(members):
    for t in (0, 1, 4, 5, 9, 17, 29):
      if sched is None:  # plateau: lr times the reference's scale before step t
        want = h['lr'] * float(refs[i][1][t][1].scale)
      else:
        want = float(sched(t))
      np.testing.assert_allclose(float(lrs[t, i]), want, rtol=1e-5, atol=1e-9,
                                 err_msg=f'member {i} step {t}')
  # The plateau member's step size did drop during the run.
  assert float(lrs[-1, 4]) < float(lrs[0, 4])


def test_unselected_rule_states_stay_unchanged(population):
  members, state0, state = population['members'], population['state0'], population['state']
  np.testing.assert_array_equal(state.rule, [r for r, _, _, _ in members])
  for i, (rule, _, _, _) in enumerate(members):
    for k in range(len(RULES)):
      before, after = member(state0.states[k], i), member(state.states[k], i)
      if k == rule:
        assert int(after.count) == STEPS
      else:
        assert_tree_equal(after, before)


def test_unselected_states_unchanged_solo():
  cfg = make_config(name='sgd', lr=0.1)
  rules = [{'name': 'adam'}, {'name': 'sgd', 'schedule': 'cosine'}, {'name': 'rmsprop'}]
  tx = optim.build_optimizer(cfg, STEPS, momentum=True, rules=rules)
  params = init_params()
  # float32 values, as the training loop's per-member arrays are (a Python float
  # would come back from jnp.where as a float32 array: same value, other type).
  state = optim.set_hparams(tx.init(params), {'optim.rule': 1,
                                              'optim.momentum': jnp.float32(0.9)})
  start = state
  x, y = make_data()
  for t in range(3):
    grads = jax.grad(loss_fn)(params, x[t], y[t])
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert_tree_equal(state.states[0], start.states[0])
  assert_tree_equal(state.states[2], start.states[2])
  assert int(state.states[1].count) == 3
  # The selected rule's momentum buffer moved (trace is the first chain stage).
  assert float(optax.tree.norm(state.states[1].inner_state[0].trace)) > 0


# -------------------------------------------------------------- set_hparams / API

def test_set_hparams_writes_rule_and_hyperparameters():
  cfg = make_config()
  tx = optim.build_optimizer(cfg, 10, clip=True, decay=True, momentum=True,
                             rules=[{'name': 'adam'}, {'name': 'sgd', 'nesterov': True}])
  params = init_params()
  state = tx.init(params)
  assert isinstance(state, optim.RulesState)
  assert state.rule.dtype == jnp.int32 and state.rule.shape == () and int(state.rule) == 0
  hp = {'optim.rule': 1, 'optim.lr': 0.3, 'optim.weight_decay': 0.01,
        'optim.clip_norm': 0.0, 'optim.momentum': 0.7}
  state = optim.set_hparams(state, hp)
  assert int(state.rule) == 1 and state.rule.dtype == jnp.int32
  for s in state.states:
    np.testing.assert_allclose(s.hyperparams['learning_rate'], 0.3)
    np.testing.assert_allclose(s.hyperparams['weight_decay'], 0.01)
    np.testing.assert_allclose(s.hyperparams['momentum'], 0.7)
    assert s.hyperparams['clip_norm'] == np.inf  # 0: does not clip
  # Without 'optim.rule' the index is kept.
  assert int(optim.set_hparams(state, {'optim.lr': 0.1}).rule) == 1
  # Traced per-member values under vmap.
  rules_hp = {'optim.rule': jnp.asarray([1, 0, 1], jnp.int32),
              'optim.lr': jnp.asarray([0.1, 0.2, 0.3])}
  states = jax.jit(jax.vmap(lambda p, h: optim.set_hparams(tx.init(p), h)))(
      stack([params] * 3), rules_hp)
  np.testing.assert_array_equal(states.rule, [1, 0, 1])
  for s in states.states:
    np.testing.assert_allclose(s.hyperparams['learning_rate'], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match='optim.rule 2 out of range; 2 rules'):
    optim.set_hparams(tx.init(params), {'optim.rule': 2})


def test_each_rule_state_is_that_rules_plain_state():
  cfg = make_config(name='sgd')
  tx = optim.build_optimizer(cfg, 10, momentum=True, rules=RULES)
  params = init_params()
  state = tx.init(params)
  assert len(state.states) == len(RULES)
  for rule, s in zip(RULES, state.states):
    plain = optim.build_optimizer(optim.rule_config(cfg, rule), 10, momentum=True).init(params)
    assert jax.tree.structure(s) == jax.tree.structure(plain)


def test_single_rule_steps_like_rules_none():
  cfg = make_config(name='sgd', lr=0.05, momentum=0.9, nesterov=True, schedule='cosine')
  plain = optim.build_optimizer(cfg, STEPS)
  ruled = optim.build_optimizer(make_config(lr=0.05, momentum=0.9), STEPS,
                                rules=[{'name': 'sgd', 'nesterov': True, 'schedule': 'cosine'}])
  x, y = make_data()
  p1 = p2 = init_params()
  s1, s2 = plain.init(p1), ruled.init(p2)
  for t in range(4):
    u1, s1 = plain.update(jax.grad(loss_fn)(p1, x[t], y[t]), s1, p1)
    u2, s2 = ruled.update(jax.grad(loss_fn)(p2, x[t], y[t]), s2, p2)
    assert_tree_allclose(u1, u2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  (m,) = optim.schedule_multipliers(make_config(), STEPS, [{'schedule': 'cosine'}])
  np.testing.assert_allclose(float(optim.step_size(s2, (m,), 3)),
                             float(optim.step_size(s1, optim.schedule_multiplier(cfg, STEPS), 3)))


def test_rules_none_keeps_the_injected_state_structure():
  cfg = make_config()  # adam, constant, no clip / decay / momentum
  params = init_params()
  state = optim.build_optimizer(cfg, 10).init(params)
  assert not isinstance(state, optim.RulesState)
  ref = optax.inject_hyperparams(
      lambda learning_rate, weight_decay, clip_norm, momentum: optax.chain(
          optax.scale_by_adam(), optax.scale_by_schedule(optax.constant_schedule(1.0)),
          optax.scale_by_learning_rate(learning_rate)))(
              learning_rate=1e-3, weight_decay=0.0, clip_norm=jnp.inf, momentum=0.0)
  ref_state = ref.init(params)
  assert type(state) is type(ref_state)
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)


# ---------------------------------------------------------------------- errors

def _one_line(excinfo):
  assert '\n' not in str(excinfo.value)


def test_unknown_rule_name_raises_one_line():
  with pytest.raises(ValueError, match=r"^Unknown optim.name 'adagrad'; known: "
                                       r"\['adam', 'rmsprop', 'sgd'\]$") as e:
    optim.build_optimizer(make_config(), 10, rules=[{'name': 'adam'}, {'name': 'adagrad'}])
  _one_line(e)
  with pytest.raises(ValueError, match=r"^Unknown optim.schedule 'linear'; known: \[") as e:
    optim.build_optimizer(make_config(), 10, rules=[{'schedule': 'linear'}])
  _one_line(e)
  with pytest.raises(ValueError, match=r"^Unknown optim.schedule 'linear'") as e:
    optim.schedule_multipliers(make_config(), 10, [{'schedule': 'linear'}])
  with pytest.raises(ValueError, match=r"^Unknown optimizer rule key 'lr'; known: "
                                       r"\['name', 'nesterov', 'schedule'\]$") as e:
    optim.build_optimizer(make_config(), 10, rules=[{'lr': 0.1}])
  _one_line(e)
  with pytest.raises(ValueError, match='at least one rule'):
    optim.build_optimizer(make_config(), 10, rules=[])


def test_rule_keys():
  assert optim.RULE_KEYS == ('optim.name', 'optim.nesterov', 'optim.schedule')
