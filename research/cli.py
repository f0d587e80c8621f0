"""Shared set-up for the absl entry points in scripts/."""
from __future__ import annotations

import importlib.util
import logging as py_logging
from pathlib import Path

import ml_collections
from absl import logging

REPO = Path(__file__).resolve().parents[1]


class _QuietLibraries(py_logging.Filter):
  """Drops INFO chatter of Orbax and JAX's backend probing; keeps warnings."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    path = record.pathname.replace('\\', '/')
    return not any(s in path for s in ('/orbax/', '/jax/_src/', '/etils/'))


def setup_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  py_logging.getLogger('jax').setLevel(py_logging.WARNING)


def load_config(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads ``get_config(arg)`` from a config file, as ``--config=path:arg`` does."""
  path = Path(path)
  if not path.is_absolute() and not path.exists():
    path = REPO / path
  spec = importlib.util.spec_from_file_location(f'config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser, with a one-line error for an unknown config key.

  ml_collections raises a KeyError/AttributeError with a traceback when an
  override names a key the (locked) config lacks; we name the flag instead.
  """
  import re
  import sys

  from absl import app
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    text = str(e).replace('\\n', ' ').replace('\n', ' ').strip('\'" ')
    m = re.search(r'instead of "([\w-]+)"', text) or re.search(r"([\w-]+)", text)
    missing = m.group(1) if m else ''
    overrides = [a[2:].split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    culprit = next((o for o in overrides if missing in o.split('.')), None)
    hint = re.search(r'(Did you mean .*\?)', text)
    print(f'error: unknown config key {culprit or missing!r}'
          + (f' ({hint.group(1)})' if hint else ''), file=sys.stderr)
    sys.exit(2)


def guard(main):
  """Wraps an absl ``main`` so that input errors end in one line, not a traceback.

  ``ValueError`` (and `research.errors.UserError`), ``FileNotFoundError`` and
  `research.checkpoint.CheckpointError` print ``error: <message>`` on stderr and
  exit 2; `research.train.DivergenceError` exits 1; `research.errors.Interrupted`
  prints its message and exits with its code (130 / 143). Anything else is a bug
  and keeps its traceback.
  """
  import functools
  import sys

  from research import errors

  @functools.wraps(main)
  def wrapped(argv):
    from research.checkpoint import CheckpointError
    from research.train import DivergenceError
    try:
      return main(argv)
    except errors.Interrupted as e:
      print(str(e), file=sys.stderr)
      sys.exit(e.exit_code)
    except DivergenceError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(errors.EXIT_DIVERGED)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
      msg = str(e).strip() or type(e).__name__
      if isinstance(e, FileNotFoundError) and e.filename and e.filename not in msg:
        msg = f'{msg}: {e.filename}'
      print(f'error: {msg}', file=sys.stderr)
      sys.exit(errors.EXIT_USAGE)
  return wrapped
