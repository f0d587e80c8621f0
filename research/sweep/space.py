"""Search spaces: dotted config keys -> ranges, log scales, choices, conditions.

A config file declares its space beside ``get_config`` (``get_search_space(arg)``)::

    {'optim.lr': Float(1e-4, 3e-2, log=True, grid=(3e-4, 3e-3)),
     'model.latent': Choice((2, 8, 32)),
     'optim.name': Choice(('adam', 'sgd')),
     'optim.momentum': Float(0.0, 0.99, when={'optim.name': 'sgd'})}

``when`` makes a parameter conditional: it is drawn only when every named
(earlier) parameter has the given value (or one of a tuple of values); the
config keeps its own value otherwise. ``grid`` lists the values a grid search
visits (a Choice visits all its values unless given a subset). `validate`
checks a space against a config and names the offending key in every error.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections

from research import configlib

_PRIMITIVE = (bool, int, float, str, type(None))


@dataclasses.dataclass(frozen=True)
class Float:
  low: float
  high: float
  log: bool = False
  grid: Sequence[float] | None = None
  when: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Int:
  low: int
  high: int
  log: bool = False
  grid: Sequence[int] | None = None
  when: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Choice:
  values: Sequence[Any]
  grid: Sequence[Any] | None = None
  when: Mapping[str, Any] | None = None


Param = Float | Int | Choice


class SearchSpaceError(ValueError):
  """A search space that cannot be searched; the message names the key."""


def _allowed(v) -> tuple:
  return tuple(v) if isinstance(v, (tuple, list)) and not isinstance(v, str) else (v,)


def label(value: Any) -> Any:
  """What Optuna stores for a choice: the value itself, or its repr (tuples...)."""
  return value if isinstance(value, _PRIMITIVE) else repr(value)


def validate(space: Mapping[str, Param], config: ml_collections.ConfigDict | None = None) -> None:
  """Raises SearchSpaceError naming the key for every kind of mistake."""
  if not space:
    raise SearchSpaceError('The search space is empty')
  seen: dict[str, Param] = {}
  for key, p in space.items():
    where = f'search space key {key!r}'
    if config is not None:
      try:
        current = configlib.get_path(config, key)
      except KeyError:
        raise SearchSpaceError(f'{where} is not a config key') from None
      if isinstance(current, ml_collections.ConfigDict):
        raise SearchSpaceError(f'{where} names a config section, not a value')
    if isinstance(p, (Float, Int)):
      kind = type(p).__name__
      if isinstance(p, Int) and not (isinstance(p.low, int) and isinstance(p.high, int)):
        raise SearchSpaceError(f'{where}: Int bounds must be integers, got {p.low}, {p.high}')
      if not p.low < p.high:
        raise SearchSpaceError(f'{where}: {kind} needs low < high, got low={p.low}, high={p.high}')
      if p.log and p.low <= 0:
        raise SearchSpaceError(f'{where}: a log scale needs low > 0, got low={p.low}')
      for g in p.grid or ():
        if not p.low <= g <= p.high:
          raise SearchSpaceError(f'{where}: grid value {g} lies outside [{p.low}, {p.high}]')
    elif isinstance(p, Choice):
      values = list(p.values)
      if not values:
        raise SearchSpaceError(f'{where}: Choice needs at least one value')
      labels = [label(v) for v in values]
      if len(set(map(repr, labels))) != len(labels):
        raise SearchSpaceError(f'{where}: Choice values repeat: {values}')
      for g in p.grid or ():
        if label(g) not in labels:
          raise SearchSpaceError(f'{where}: grid value {g!r} is not one of the choices {values}')
    else:
      raise SearchSpaceError(f'{where}: expected Float, Int or Choice, got {type(p).__name__}')
    if p.grid is not None and not list(p.grid):
      raise SearchSpaceError(f'{where}: an empty grid')
    for parent, allowed in (p.when or {}).items():
      if parent not in seen:
        raise SearchSpaceError(
            f'{where}: condition on {parent!r}, which is not an earlier key of the space '
            '(conditions refer to parameters declared before them)')
      pp = seen[parent]
      if not isinstance(pp, Choice):
        raise SearchSpaceError(f'{where}: conditions must name a Choice; {parent!r} is '
                               f'{type(pp).__name__}')
      for a in _allowed(allowed):
        if label(a) not in [label(v) for v in pp.values]:
          raise SearchSpaceError(f'{where}: condition {parent}={a!r} can never hold '
                                 f'(choices: {list(pp.values)})')
    seen[key] = p


def active(p: Param, chosen: Mapping[str, Any]) -> bool:
  """Whether a conditional parameter applies, given the values chosen so far."""
  return all(k in chosen and label(chosen[k]) in [label(a) for a in _allowed(v)]
             for k, v in (p.when or {}).items())


def suggest(trial, space: Mapping[str, Param]) -> dict[str, Any]:
  """Draws one point through an Optuna trial (or replays an enqueued one).
  Returns config values (choices decoded back from their labels)."""
  chosen: dict[str, Any] = {}
  for key, p in space.items():
    if not active(p, chosen):
      continue
    if isinstance(p, Float):
      chosen[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
    elif isinstance(p, Int):
      chosen[key] = trial.suggest_int(key, p.low, p.high, log=p.log)
    else:
      labels = [label(v) for v in p.values]
      picked = trial.suggest_categorical(key, labels)
      chosen[key] = list(p.values)[labels.index(picked)]
  return chosen


def decode(space: Mapping[str, Param], params: Mapping[str, Any]) -> dict[str, Any]:
  """Optuna's stored params -> config values."""
  out = {}
  for key, v in params.items():
    p = space.get(key)
    if isinstance(p, Choice):
      labels = [label(c) for c in p.values]
      v = list(p.values)[labels.index(v)] if v in labels else v
    out[key] = v
  return out


def grid_points(space: Mapping[str, Param]) -> list[dict[str, Any]]:
  """Every point of the grid, exactly once: the product of the unconditional
  parameters' grids, each point extended by the grids of the parameters whose
  conditions it meets. Values are Optuna labels (for ``enqueue_trial``)."""
  points: list[dict[str, Any]] = [{}]
  for key, p in space.items():
    if isinstance(p, Choice):
      values = [label(v) for v in (p.grid if p.grid is not None else p.values)]
    elif p.grid is not None:
      values = list(p.grid)
    else:
      raise SearchSpaceError(
          f'search space key {key!r}: grid search needs grid=(...) values for a '
          f'{type(p).__name__} range')
    out = []
    for pt in points:
      if active(p, decode(space, pt)):
        out += [{**pt, key: v} for v in values]
      else:
        out.append(pt)
    points = out
  return points
