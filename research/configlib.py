"""Helpers for `configs/<exp>.py:<arg>` variant strings and config bookkeeping."""
from __future__ import annotations

import ast
from typing import Any, Callable, Iterable

import ml_collections


class OneOf:
  """A variant default whose value must be one of ``allowed`` (see `parse_arg`)."""

  def __init__(self, default: Any, allowed: Iterable[Any]):
    self.default = default
    self.allowed = tuple(allowed)
    if default not in self.allowed:
      raise ValueError(f'default {default!r} is not one of {self.allowed}')


def one_of(default: Any, allowed: Iterable[Any]) -> OneOf:
  """``parse_arg(arg, model=one_of('cnn', MODELS))``: ``model`` must be a key of MODELS."""
  return OneOf(default, allowed)


def split_arg(arg: str) -> list[str]:
  """Splits ``"a=1,b=(2, 3),c"`` at the commas outside brackets and quotes."""
  parts, depth, quote, cur = [], 0, '', ''
  for ch in arg:
    if quote:
      quote = '' if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth = max(0, depth - 1)
    elif ch == ',' and depth == 0:
      parts.append(cur)
      cur = ''
      continue
    cur += ch
  parts.append(cur)
  return [p.strip() for p in parts if p.strip()]


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return text


def _convert(key: str, text: str, default: Any) -> Any:
  """``text`` as the type of ``default`` (bool, int, float, str; else a literal)."""
  value = _literal(text)
  if isinstance(default, bool):
    if isinstance(value, str) and value.lower() in ('true', 'false'):
      return value.lower() == 'true'
    if isinstance(value, (bool, int)) and value in (0, 1):
      return bool(value)
    raise ValueError(f'config variant {key}={text!r}: {key} is a switch (True or False; '
                     f'a bare {key!r} means True)')
  if isinstance(default, int):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    raise ValueError(f'config variant {key}={text!r}: {key} must be an integer')
  if isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    raise ValueError(f'config variant {key}={text!r}: {key} must be a number')
  if isinstance(default, str):  # the text as written; None stays the literal None
    return value if isinstance(value, str) or value is None else text.strip()
  return value


def _did_you_mean(value: Any, known: Iterable[Any]) -> str:
  import difflib
  known = [k for k in known if isinstance(k, str) and k]
  close = difflib.get_close_matches(str(value), known, n=1) if isinstance(value, str) else []
  return f' (did you mean {close[0]!r}?)' if close else ''


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a variant string such as ``"model=cnn,quick"`` against known defaults.

  Bare words set a boolean switch to True. ``key=value`` values take the type of
  the key's default: a bool switch takes True/False (or 1/0), an int an integer,
  a float any number, a string the text as written or None (``lr=1e-3`` -> 0.001
  for a float default, ``path=a/b.mat`` stays a string). A default written
  ``one_of(default, allowed)`` admits only the allowed values. Commas inside
  brackets or quotes do not separate variants. A key not in ``defaults``, a key
  given twice, a value of the wrong type or outside its allowed values is a
  ``ValueError`` that names the value and lists what is allowed, so a typo never
  passes.
  """
  allowed = {k: d.allowed for k, d in defaults.items() if isinstance(d, OneOf)}
  defaults = {k: d.default if isinstance(d, OneOf) else d for k, d in defaults.items()}
  out = dict(defaults)
  seen = set()
  for part in split_arg(arg or ''):
    key, sep, text = part.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'unknown config variant {key!r}{_did_you_mean(key, defaults)}; '
                       f'allowed variants: {", ".join(sorted(defaults))}')
    if key in seen:
      raise ValueError(f'config variant {key!r} is given twice')
    seen.add(key)
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f'config variant {key!r} needs a value ({key}=..., default '
                         f'{default!r})')
      out[key] = True
      continue
    value = _convert(key, text.strip(), default)
    if key in allowed and value not in allowed[key]:
      raise ValueError(f'unknown {key} {value!r} (config variant {key}=...)'
                       f'{_did_you_mean(value, allowed[key])}; allowed: '
                       f'{", ".join(repr(v) if v == "" else str(v) for v in allowed[key])}')
    out[key] = value
  return ml_collections.ConfigDict(out)


def model(options: dict[str, Any]) -> ml_collections.ConfigDict:
  """A ``config.model`` ConfigDict from a dict of model options.

  A model with a recurrent layer (an ``rnn`` field) gets the whole ``model.rnn``
  sub-config: every option of `research.models.recurrent.Recurrent` with the value
  its layer would get (`recurrent.rnn_config`: the given ``rnn`` over the model's
  defaults over Recurrent's), so ``--config.model.rnn.fast=False`` (the autodiff scan
  instead of `research.models.fast_rnn`), ``--config.model.rnn.truncation=20`` or
  ``--config.model.rnn.collect_gates=True`` work on any such config.
  """
  import dataclasses

  from research.models import MODELS
  from research.models.recurrent import rnn_config
  options = dict(options)
  cls = MODELS.get(options.get('name'))
  if cls is not None and 'rnn' in {f.name for f in dataclasses.fields(cls)}:
    options['rnn'] = rnn_config(cls, options.get('rnn'))
  return ml_collections.ConfigDict(options)


def get_path(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(f'Config has no key {dotted!r}')
    node = node[part]
  return node


def set_path(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """``config.a.b.c = value`` for ``dotted='a.b.c'``: the parents must exist (a
  KeyError names the key otherwise); the last key is set, or added to an unlocked
  config, with ml_collections' type checks."""
  *parents, last = dotted.split('.')
  node = get_path(config, '.'.join(parents)) if parents else config
  if not isinstance(node, ml_collections.ConfigDict):
    raise KeyError(f'Config key {".".join(parents)!r} is a value, not a section: cannot set '
                   f'{dotted!r}')
  node[last] = value


def with_values(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
  """``config`` with every dotted ``key: value`` of ``values`` set (`set_path`); returns it."""
  for key, value in values.items():
    set_path(config, key, value)
  return config


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


def once_per_config(fn: Callable[[ml_collections.ConfigDict], Any]) -> Callable:
  """``fn`` of a config, called once per distinct config (by its sorted JSON)."""
  cache: dict[str, Any] = {}

  def once(config: ml_collections.ConfigDict) -> Any:
    key = config.to_json_best_effort(sort_keys=True)
    if key not in cache:
      cache[key] = fn(config)
    return cache[key]
  return once
