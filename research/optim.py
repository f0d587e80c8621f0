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
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Numeric optimizer settings that may differ between population members.
HPARAM_KEYS = ('optim.lr', 'optim.weight_decay', 'optim.clip_norm', 'optim.momentum')
_INJECTED = {'optim.lr': 'learning_rate', 'optim.weight_decay': 'weight_decay',
             'optim.clip_norm': 'clip_norm', 'optim.momentum': 'momentum'}

SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'exponential', 'step', 'plateau')
OPTIMIZERS = ('adam', 'rmsprop', 'sgd')


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


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                    clip: bool | None = None, decay: bool | None = None,
                    momentum: bool | None = None,
                    steps_per_epoch: int = 1) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer. ``clip``/``decay``/``momentum`` force those stages
  in or out (a population includes them when any member uses them; a member
  with momentum 0 inside a momentum stage steps exactly like plain SGD).
  For 'plateau', ``plateau_window=0`` averages the loss over one epoch
  (``steps_per_epoch`` updates), so ``plateau_patience`` counts epochs, as
  Keras' ReduceLROnPlateau does."""
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


def _clip_value(c):
  # A member that does not clip inside a population that does: clip at +inf.
  return jnp.where(jnp.asarray(c) > 0, c, jnp.inf)


def set_hparams(opt_state: Any, hp: dict[str, Any]) -> Any:
  """Writes per-member values (possibly traced) into an injected opt_state."""
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


def step_size(opt_state: Any, multiplier: optax.Schedule, step) -> jnp.ndarray:
  """The learning rate a member's next update uses: ``lr * multiplier(step)``, times
  reduce-on-plateau's current scale when the schedule is 'plateau'."""
  lr = opt_state.hyperparams['learning_rate'] * multiplier(step)
  scales = [s.scale for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState))
            if isinstance(s, optax.contrib.ReduceLROnPlateauState)]
  for scale in scales:
    lr = lr * scale
  return lr
