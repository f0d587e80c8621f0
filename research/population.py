"""Populations: K members trained as one program.

``config.population`` is a string such as ``"seed=0,1,2 optim.lr=1e-3,1e-2"``
(keys separated by spaces or ';', values by commas outside parentheses), so it
can be overridden from the command line:
``--config.population='seed=0,1 model.rnn.cell_options.variant=vanilla,NIG'``.
``config.population_mode`` is ``product`` (every combination) or ``zip``
(the i-th values together).

Two kinds of key may vary:

* numeric hyperparameters (`member_keys`): the root ``seed``, the optimizer's
  numeric settings (`research.optim.HPARAM_KEYS`), the std of Gaussian noise
  added to training inputs (``train.input_noise``) and the task's loss weights
  (`Task.hparam_keys`). They are arrays with a member axis (`stack`).
* structure (`research.structure`): the LSTM variant, widths the model
  declares, the optimizer's rule (``optim.name``, ``optim.nesterov``,
  ``optim.schedule``). Their values may be numbers, words, booleans or tuples
  (``model.hidden=(64,64),(256,256)``); `research.structure` makes one program
  of them in which each member computes exactly what its solo run computes.

Anything else (batch size, depth, cell family, model family, sequence length)
needs a separate run; `expand` names the key and says so.
"""
from __future__ import annotations

import ast
import itertools
import re
from typing import Any

import ml_collections
import numpy as np

from research import configlib, optim


def _split_values(values: str) -> list[str]:
  """Splits on commas outside parentheses: '(64,64),(256,256)' -> two values."""
  out, depth, cur = [], 0, ''
  for ch in values:
    depth += ch in '([' and 1 or 0
    depth -= ch in ')]' and 1 or 0
    if ch == ',' and depth == 0:
      out.append(cur)
      cur = ''
    else:
      cur += ch
  out.append(cur)
  return [v.strip() for v in out if v.strip()]


def _value(text: str) -> Any:
  """A number, a boolean, a tuple of numbers, or the word itself."""
  try:
    return float(text)
  except ValueError:
    pass
  if text in ('True', 'False', 'true', 'false'):
    return text.lower() == 'true'
  if text[:1] in '([':
    try:
      v = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ValueError(f'Population value {text!r} is not a tuple of numbers') from None
    return tuple(v) if isinstance(v, (list, tuple)) else v
  return text


def parse_spec(spec: str) -> dict[str, list[Any]]:
  out: dict[str, list[Any]] = {}
  for item in re.split(r'[;\s]+(?![^()\[\]]*[)\]])', spec.strip()):
    if not item:
      continue
    key, sep, values = item.partition('=')
    if not sep or not key or not values.strip(','):
      raise ValueError(f'Bad population entry {item!r}: expected key=v1,v2,...')
    if key in out:
      raise ValueError(f'Population key {key!r} given twice')
    out[key] = [_value(v) for v in _split_values(values)]
    if not out[key]:
      raise ValueError(f'Bad population entry {item!r}: expected key=v1,v2,...')
  return out


def member_keys(task_keys: tuple[str, ...]) -> tuple[str, ...]:
  """The numeric keys: one float (seed: int) per member, stacked into arrays."""
  return ('seed',) + optim.HPARAM_KEYS + ('train.input_noise',) + tuple(task_keys)


def expand(config: ml_collections.ConfigDict, task_keys: tuple[str, ...],
           structural: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
  """Returns one dict per member holding the value of every member key: the
  numeric keys always, and each structural key the population varies.

  ``structural``: the structural keys this config may vary
  (`research.structure.mixable_keys`; computed when None)."""
  keys = member_keys(task_keys)
  spec = parse_spec(config.get('population', '') or '')
  if structural is None and any(k not in keys for k in spec):
    from research import structure
    structural = structure.mixable_keys(config)
  structural = tuple(structural or ())
  for key, values in spec.items():
    if key in keys:
      bad = [v for v in values if isinstance(v, (str, bool, tuple))]
      if bad:
        raise ValueError(f'Population values for {key!r} must be numbers, got {bad[0]!r}')
      continue
    try:
      configlib.get_path(config, key)
    except KeyError:
      raise ValueError(f'Population key {key!r} is not a config key') from None
    if key not in structural:
      raise ValueError(
          f'Population key {key!r} cannot vary inside one population (numeric keys: '
          f'{list(keys)}; structural keys this model allows: {list(structural) or "none"}); '
          'it needs a separate run per value')
  base = {k: float(configlib.get_path(config, k)) for k in keys}
  for key in spec:
    if key not in keys:
      base[key] = _plain(configlib.get_path(config, key))
  mode = config.get('population_mode', 'product')
  names, values = list(spec), list(spec.values())
  if mode == 'product':
    combos = list(itertools.product(*values)) if names else [()]
  elif mode == 'zip':  # a key with one value gives it to every member
    lengths = {len(v) for v in values} - {1}
    if len(lengths) > 1:
      raise ValueError(f'population_mode=zip needs equally long value lists (or one value), '
                       f'got {dict(zip(names, map(len, values)))}')
    n = lengths.pop() if lengths else 1
    combos = list(zip(*[v * n if len(v) == 1 else v for v in values])) if names else [()]
  else:
    raise ValueError(f"population_mode must be 'product' or 'zip', got {mode!r}")
  members = []
  for combo in combos:
    m = dict(base)
    for k, v in zip(names, combo):
      m[k] = v if k in keys else _like(v, base[k], k)
    m['seed'] = int(m['seed'])
    members.append(m)
  return members


def _plain(v: Any) -> Any:
  return tuple(v) if isinstance(v, list) else v


def _like(v: Any, default: Any, key: str) -> Any:
  """A structural value in the type of the config's own value."""
  if isinstance(default, bool):
    if not isinstance(v, bool):
      raise ValueError(f'Population values for {key!r} must be True or False, got {v!r}')
    return v
  if isinstance(default, int) and not isinstance(default, bool):
    if isinstance(v, float) and v.is_integer():
      return int(v)
    raise ValueError(f'Population values for {key!r} must be integers, got {v!r}')
  if isinstance(default, tuple):
    if not isinstance(v, tuple):
      raise ValueError(f'Population values for {key!r} must be tuples like {default!r}, '
                       f'got {v!r}')
    return tuple(int(x) if isinstance(x, float) and x.is_integer() else x for x in v)
  if isinstance(default, str):
    return v if isinstance(v, str) else str(v)
  return v


def stack(members: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """The numeric member keys -> dict of arrays with a leading member axis."""
  return {k: np.asarray([m[k] for m in members],
                        dtype=np.int32 if k == 'seed' else np.float32)
          for k in members[0] if _numeric(members[0][k])}


def _numeric(v: Any) -> bool:
  return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def varied_keys(members: list[dict[str, Any]]) -> list[str]:
  return [k for k in members[0] if len({_hashable(m[k]) for m in members}) > 1]


def _hashable(v):
  return tuple(v) if isinstance(v, list) else v


def format_value(v: Any) -> str:
  if isinstance(v, bool) or isinstance(v, str):
    return str(v)
  if isinstance(v, (tuple, list)):
    return '(' + ','.join(format_value(x) for x in v) + ')'
  return f'{v:g}'


def group_name(member: dict[str, Any], varied: list[str]) -> str:
  """A row name for the member's group: its varied keys except the seed."""
  parts = [f'{k.split(".")[-1]}={format_value(member[k])}' for k in varied if k != 'seed']
  return ','.join(parts)
