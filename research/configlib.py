"""Helpers for `configs/<exp>.py:<arg>` variant strings and config bookkeeping."""
from __future__ import annotations

import ast
from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a variant string such as ``"model=cnn,quick"`` against known defaults.

  Bare words set a boolean switch to True; ``key=value`` values are parsed as
  Python literals when possible (``lr=1e-3`` -> float) and kept as strings
  otherwise. A key not in ``defaults`` is an error, so a typo never passes.
  """
  out = dict(defaults)
  if arg:
    for part in arg.split(','):
      part = part.strip()
      if not part:
        continue
      key, sep, value = part.partition('=')
      key = key.strip()
      if key not in defaults:
        raise ValueError(
            f'Unknown config variant {key!r}; known: {sorted(defaults)}')
      if not sep:
        out[key] = True
        continue
      try:
        out[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        out[key] = value
  return ml_collections.ConfigDict(out)


def model(options: dict[str, Any]) -> ml_collections.ConfigDict:
  """A ``config.model`` ConfigDict from a dict of model options.

  Models with a recurrent layer get ``fast=True`` unless the dict sets it, so
  ``--config.model.fast=False`` (the autodiff scan instead of
  `research.models.fast_rnn`; same values and gradients) works on any config.
  """
  import dataclasses

  from research.models import MODELS
  options = dict(options)
  cls = MODELS.get(options.get('name'))
  if cls is not None and 'fast' in {f.name for f in dataclasses.fields(cls)}:
    options.setdefault('fast', True)
  return ml_collections.ConfigDict(options)


def get_path(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(f'Config has no key {dotted!r}')
    node = node[part]
  return node


def flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  """Flattens a ConfigDict to ``{"a.b": value}``."""
  out = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = value
  return out
