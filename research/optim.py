"""Config -> optax transformation.

``build_optimizer(config.optim, total_steps)`` returns a
``GradientTransformationExtraArgs`` built with ``optax.inject_hyperparams``,
so the learning rate, weight decay, clip norm and momentum are arrays in the optimizer
state (``opt_state.hyperparams``) and may differ per population member
without recompiling. Set them after ``init`` with ``set_hparams``.

The chain, in order::

    clip_by_global_norm(clip_norm)          if any member clips
    scale_by_adam | scale_by_rms [+ trace] | trace (SGD momentum/Nesterov)
    add_decayed_weights(weight_decay)       decoupled, as in AdamW/SGDW
    scale_by_schedule(multiplier)           schedule shape, peak 1
    reduce_on_plateau                       schedule == 'plateau' only
    scale_by_learning_rate(lr)

so the effective step size is ``lr * multiplier(step)``: identical to optax's
``adam``/``adamw``/``sgd`` given the schedule ``lr * multiplier``. For
'plateau' the update must receive ``value=loss`` (the training loop does).

Rules as member data. The optimizer's *rule* -- ``optim.name``,
``optim.nesterov`` and ``optim.schedule`` (``RULE_KEYS``) -- changes the
chain's structure, so it cannot be an injected array. Members may still differ
in it: ``build_optimizer(..., rules=[{'name': 'sgd', 'nesterov': True}, ...])``
builds one chain per rule (the config with that rule's overrides, the same
clip/decay/momentum stages) and keeps all of their states in a ``RulesState``
whose ``rule`` is an int32 array, set per member by ``set_hparams`` from
``hp['optim.rule']``. ``update`` runs every chain and keeps, with
``jnp.where``, the updates and the advanced state of rule ``rule`` only; the
other rules' states are returned unchanged. Each member thus steps as a solo
run of its own rule would, at the cost of computing all R updates. With
``rules=None`` the state is the plain injected state, as before.
``schedule_multipliers`` gives the per-rule schedules ``step_size`` then takes.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

# Numeric optimizer settings that may differ between population members.
HPARAM_KEYS = ('optim.lr', 'optim.weight_decay', 'optim.clip_norm', 'optim.momentum')
_INJECTED = {'optim.lr': 'learning_rate', 'optim.weight_decay': 'weight_decay',
             'optim.clip_norm': 'clip_norm', 'optim.momentum': 'momentum'}

SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'exponential', 'step', 'plateau')
OPTIMIZERS = ('adam', 'rmsprop', 'sgd')

# Structural settings that may differ between members as data: see ``RulesState``.
RULE_KEYS = ('optim.name', 'optim.nesterov', 'optim.schedule')
_RULE_FIELDS = {'name': str, 'nesterov': bool, 'schedule': str}


class RulesState(NamedTuple):
  """State of ``build_optimizer(..., rules=...)``: ``states[k]`` is rule k's own
  optimizer state; ``rule`` (int32 scalar, per member) is the one that steps."""
  rule: jnp.ndarray
  states: tuple


def rule_config(config: ml_collections.ConfigDict,
                rule: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with a rule's overrides (short names, e.g. ``'name'``)."""
  unknown = sorted(set(rule) - set(_RULE_FIELDS))
  if unknown:
    raise ValueError(f'Unknown optimizer rule key {unknown[0]!r}; known: {list(_RULE_FIELDS)}')
  cfg = ml_collections.ConfigDict(config.to_dict())
  for key, value in rule.items():
    cfg[key] = _RULE_FIELDS[key](value)
  return cfg


def schedule_multiplier(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The schedule's shape with peak value 1; the learning rate scales it."""
  name = config.schedule
  if name in ('constant', 'plateau'):
    return optax.constant_schedule(1.0)
  if name == 'cosine':
    return optax.cosine_decay_schedule(1.0, max(total_steps, 1), alpha=config.final_lr_fraction)
  if name == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, 1.0, config.warmup_steps, max(total_steps, config.warmup_steps + 1),
        end_value=config.final_lr_fraction)
  if name == 'exponential':
    return optax.exponential_decay(1.0, config.decay_steps, config.decay_rate)
  if name == 'step':
    boundaries = range(config.decay_steps, max(total_steps, 1), config.decay_steps)
    return optax.piecewise_constant_schedule(1.0, {b: config.decay_rate for b in boundaries})
  raise ValueError(f'Unknown optim.schedule {name!r}; known: {list(SCHEDULES)}')


def schedule_multipliers(config: ml_collections.ConfigDict, total_steps: int,
                         rules: Sequence[Mapping[str, Any]]) -> tuple[optax.Schedule, ...]:
  """``schedule_multiplier`` of each rule's config, in rule order."""
  return tuple(schedule_multiplier(rule_config(config, r), total_steps) for r in rules)


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                    clip: bool | None = None, decay: bool | None = None,
                    momentum: bool | None = None,
                    steps_per_epoch: int = 1,
                    rules: Sequence[Mapping[str, Any]] | None = None,
                    ) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer. ``clip``/``decay``/``momentum`` force those stages
  in or out (a population includes them when any member uses them; a member
  with momentum 0 inside a momentum stage steps exactly like plain SGD).
  For 'plateau', ``plateau_window=0`` averages the loss over one epoch
  (``steps_per_epoch`` updates), so ``plateau_patience`` counts epochs, as
  Keras' ReduceLROnPlateau does. ``rules``: None, or R >= 1 dicts of
  overrides of ``name``/``nesterov``/``schedule``, giving a ``RulesState``
  optimizer that steps rule ``state.rule`` (module docstring)."""
  if rules is not None:
    return _build_rules(config, total_steps, clip, decay, momentum, steps_per_epoch, rules)
  if config.name not in OPTIMIZERS:
    raise ValueError(f'Unknown optim.name {config.name!r}; known: {list(OPTIMIZERS)}')
  clip = config.clip_norm > 0 if clip is None else clip
  decay = config.weight_decay > 0 if decay is None else decay
  use_momentum = config.momentum > 0 if momentum is None else momentum
  multiplier = schedule_multiplier(config, total_steps)

  def make(learning_rate, weight_decay, clip_norm, momentum):
    parts = []
    if clip:
      parts.append(optax.clip_by_global_norm(clip_norm))
    if config.name == 'adam':
      parts.append(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps))
    elif config.name == 'rmsprop':
      parts.append(optax.scale_by_rms(decay=config.rms_decay, eps=config.eps))
      if use_momentum:
        parts.append(optax.trace(decay=momentum, nesterov=config.nesterov))
    elif use_momentum:  # sgd
      parts.append(optax.trace(decay=momentum, nesterov=config.nesterov))
    if decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_schedule(multiplier))
    if config.schedule == 'plateau':
      parts.append(optax.contrib.reduce_on_plateau(
          factor=config.decay_rate, patience=config.plateau_patience,
          cooldown=config.plateau_cooldown,
          accumulation_size=config.plateau_window or steps_per_epoch,
          min_scale=config.get('plateau_min_scale', 0.0)))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)

  return optax.inject_hyperparams(make)(
      learning_rate=config.lr, weight_decay=config.weight_decay,
      clip_norm=_clip_value(config.clip_norm), momentum=config.momentum)


def _build_rules(config, total_steps, clip, decay, momentum, steps_per_epoch, rules):
  rules = list(rules)
  if not rules:
    raise ValueError('optimizer rules: need at least one rule, got []')
  txs = tuple(build_optimizer(rule_config(config, r), total_steps, clip=clip, decay=decay,
                              momentum=momentum, steps_per_epoch=steps_per_epoch)
              for r in rules)

  def init_fn(params):
    return RulesState(rule=jnp.zeros((), jnp.int32), states=tuple(tx.init(params) for tx in txs))

  def update_fn(updates, state, params=None, **extra_args):
    rule = _selected(state)
    out, states = None, []
    for k, tx in enumerate(txs):
      u, new = tx.update(updates, state.states[k], params, **extra_args)
      chosen = rule == k
      out = u if out is None else _where(chosen, u, out)
      states.append(_where(chosen, new, state.states[k]))
    return out, RulesState(rule=state.rule, states=tuple(states))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _selected(state: RulesState) -> jnp.ndarray:
  # An index outside [0, R) (only possible when traced) is clamped.
  return jnp.clip(state.rule, 0, len(state.states) - 1)


def _where(cond, new, old):
  return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _clip_value(c):
  # A member that does not clip inside a population that does: clip at +inf.
  return jnp.where(jnp.asarray(c) > 0, c, jnp.inf)


def set_hparams(opt_state: Any, hp: dict[str, Any]) -> Any:
  """Writes per-member values (possibly traced) into an injected opt_state; for a
  ``RulesState`` also the rule index ``hp['optim.rule']`` and every rule's values."""
  if isinstance(opt_state, RulesState):
    rule = opt_state.rule
    if 'optim.rule' in hp:
      r = hp['optim.rule']
      n = len(opt_state.states)
      if not isinstance(r, jax.core.Tracer):
        bad = [int(v) for v in np.ravel(r) if not 0 <= int(v) < n]
        if bad:
          raise ValueError(f'optim.rule {bad[0]} out of range; {n} rules')
      rule = jnp.asarray(r, jnp.int32)
    return RulesState(rule=rule, states=tuple(set_hparams(s, hp) for s in opt_state.states))
  values = {}
  for key, name in _INJECTED.items():
    if key in hp:
      v = hp[key]
      values[name] = _clip_value(v) if key == 'optim.clip_norm' else v
  return optax.tree_utils.tree_set(opt_state, **values)


def default_config() -> ml_collections.ConfigDict:
  """Defaults for ``config.optim``; experiments override what they need."""
  return ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
      momentum=0.0, nesterov=False, rms_decay=0.9,
      weight_decay=0.0, clip_norm=0.0,
      schedule='constant', warmup_steps=0, final_lr_fraction=0.0,
      decay_steps=1000, decay_rate=0.5,
      plateau_patience=10, plateau_cooldown=0, plateau_window=1, plateau_min_scale=0.0,
  ))


def step_size(opt_state: Any, multiplier: optax.Schedule | Sequence[optax.Schedule],
              step) -> jnp.ndarray:
  """The learning rate a member's next update uses: ``lr * multiplier(step)``, times
  reduce-on-plateau's current scale when the schedule is 'plateau'. For a
  ``RulesState``, ``multiplier`` is ``schedule_multipliers(...)`` and the result
  is the selected rule's step size."""
  if isinstance(opt_state, RulesState):
    if len(multiplier) != len(opt_state.states):
      raise ValueError(f'step_size: {len(multiplier)} multipliers for '
                       f'{len(opt_state.states)} rules')
    rule = _selected(opt_state)
    sizes = [step_size(s, m, step) for s, m in zip(opt_state.states, multiplier)]
    out = sizes[0]
    for k, size in enumerate(sizes[1:], start=1):
      out = jnp.where(rule == k, size, out)
    return out
  lr = opt_state.hyperparams['learning_rate'] * multiplier(step)
  scales = [s.scale for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState))
            if isinstance(s, optax.contrib.ReduceLROnPlateauState)]
  for scale in scales:
    lr = lr * scale
  return lr
