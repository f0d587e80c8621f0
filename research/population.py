"""Populations: K members that differ only in numeric hyperparameters.

``config.population`` is a string such as ``"seed=0,1,2 optim.lr=1e-3,1e-2"``
(keys separated by spaces or ';', values by commas), so it can be overridden
from the command line: ``--config.population='seed=0,1 optim.lr=3e-3'``.
``config.population_mode`` is ``product`` (every combination) or ``zip``
(the i-th values together). Keys that may vary are the root ``seed``, the
optimizer's numeric settings (`research.optim.HPARAM_KEYS`), the std of
Gaussian noise added to training inputs (``train.input_noise``) and the task's
loss weights (`Task.hparam_keys`); anything that changes the model's structure
belongs in a separate population (a separate config or run).
"""
from __future__ import annotations

import itertools
import re
from typing import Any

import ml_collections
import numpy as np

from research import configlib, optim


def parse_spec(spec: str) -> dict[str, list[float]]:
  out: dict[str, list[float]] = {}
  for item in re.split(r'[;\s]+', spec.strip()):
    if not item:
      continue
    key, sep, values = item.partition('=')
    if not sep or not key or not values.strip(','):
      raise ValueError(f'Bad population entry {item!r}: expected key=v1,v2,...')
    if key in out:
      raise ValueError(f'Population key {key!r} given twice')
    try:
      out[key] = [float(v) for v in values.split(',') if v]
    except ValueError:
      raise ValueError(f'Population values for {key!r} must be numbers, got {values!r}') from None
  return out


def member_keys(task_keys: tuple[str, ...]) -> tuple[str, ...]:
  return ('seed',) + optim.HPARAM_KEYS + ('train.input_noise',) + tuple(task_keys)


def expand(config: ml_collections.ConfigDict, task_keys: tuple[str, ...]) -> list[dict[str, Any]]:
  """Returns one dict per member holding the value of every member key."""
  keys = member_keys(task_keys)
  spec = parse_spec(config.get('population', '') or '')
  for key in spec:
    if key not in keys:
      try:
        configlib.get_path(config, key)
      except KeyError:
        raise ValueError(f'Population key {key!r} is not a config key') from None
      raise ValueError(
          f'Population key {key!r} cannot vary inside one population (allowed: '
          f'{list(keys)}); structural settings need separate runs')
  base = {k: float(configlib.get_path(config, k)) for k in keys}
  mode = config.get('population_mode', 'product')
  names, values = list(spec), list(spec.values())
  if mode == 'product':
    combos = list(itertools.product(*values)) if names else [()]
  elif mode == 'zip':
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
      raise ValueError(f'population_mode=zip needs equally long value lists, got '
                       f'{dict(zip(names, map(len, values)))}')
    combos = list(zip(*values)) if names else [()]
  else:
    raise ValueError(f"population_mode must be 'product' or 'zip', got {mode!r}")
  members = []
  for combo in combos:
    m = dict(base)
    m.update(dict(zip(names, combo)))
    m['seed'] = int(m['seed'])
    members.append(m)
  return members


def stack(members: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Member dicts -> dict of arrays with a leading member axis."""
  return {k: np.asarray([m[k] for m in members],
                        dtype=np.int32 if k == 'seed' else np.float32)
          for k in members[0]}


def varied_keys(members: list[dict[str, Any]]) -> list[str]:
  return [k for k in members[0] if len({m[k] for m in members}) > 1]


def group_name(member: dict[str, Any], varied: list[str]) -> str:
  """A row name for the member's group: its varied keys except the seed."""
  parts = [f'{k.split(".")[-1]}={member[k]:g}' for k in varied if k != 'seed']
  return ','.join(parts)
