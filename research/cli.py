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


def load_config_module(path: str | Path):
  """Imports a config file as module ``config_<stem>`` (in ``sys.modules``, so that
  classes it defines work as in any module); a relative path missing from the cwd
  is taken from the repo. The one loader of config files: `load_config`, the
  studies and ``scripts/sweep.py`` (``get_search_space``) use it."""
  import sys
  path = Path(path)
  if not path.is_absolute() and not path.exists():
    path = REPO / path
  if not path.is_file():
    raise FileNotFoundError(f'config file {str(path)!r} not found')
  spec = importlib.util.spec_from_file_location(f'config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    sys.modules.pop(spec.name, None)
    raise
  return module


def load_config(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads ``get_config(arg)`` from a config file, as ``--config=path:arg`` does."""
  return load_config_module(path).get_config(arg)


CONFIGS = REPO / 'configs'
_HELP = ('--help', '-help', '--helpshort', '-helpshort', '-?', '-h')
_HELPFULL = ('--helpfull', '-helpfull')


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())


def _fail(message: str) -> None:
  import sys

  from research import errors
  message = _one_line(message)
  if message.lower().startswith('error:'):
    message = message[len('error:'):].strip()
  print(f'error: {message}', file=sys.stderr)
  sys.exit(errors.EXIT_USAGE)


def _root_cause(e: BaseException) -> BaseException:
  """The innermost exception of a chain (``raise ... from`` or raised while handling)."""
  seen = {id(e)}
  while True:
    nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    if nxt is None or id(nxt) in seen:
      return e
    seen.add(id(nxt))
    e = nxt


def _first_cause(e: BaseException, wrapper: type) -> BaseException | None:
  """The first exception under ``e`` that is not a ``wrapper`` (absl's flag error) nor
  ml_collections' "Error whilst parsing config file" copy of it: the error a config's
  ``get_config`` or a flag's parser raised."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if not isinstance(e, wrapper) and not str(e).startswith('Error whilst parsing config file'):
      return e
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  return None


def config_files(directory: Path = CONFIGS) -> list[str]:
  return [f'configs/{p.name}' for p in sorted(Path(directory).glob('*.py'))
          if not p.name.startswith('_')]


def configs_help(directory: Path = CONFIGS) -> str:
  """The config files in ``directory`` with their variants, from their docstrings.

  Each file's docstring is read with `ast` (nothing is imported): its first line
  and its ``Variants:`` paragraph (up to the next blank line). ``%`` is escaped
  for absl's usage text, which formats the main module's docstring.
  """
  import ast

  lines = ['', 'Config files (--config=configs/<file>.py[:variant=value,...]; a relative path',
           'that does not exist in the current directory is taken from the repository):']
  for path in sorted(Path(directory).glob('*.py')):
    if path.name.startswith('_'):
      continue
    try:
      doc = ast.get_docstring(ast.parse(path.read_text())) or ''
    except (OSError, SyntaxError, ValueError):
      doc = ''
    doc_lines = doc.splitlines()
    lines += ['', f'  configs/{path.name}: {doc_lines[0].strip() if doc_lines else ""}']
    start = next((i for i, l in enumerate(doc_lines) if l.lstrip().startswith('Variants:')),
                 None)
    if start is None:
      continue
    for line in doc_lines[start:]:
      if not line.strip():
        break
      lines.append('    ' + line.rstrip())
  return '\n'.join(lines).replace('%', '%%') + '\n'


def _config_file_flags() -> list[str]:
  from absl import flags
  from ml_collections.config_flags import config_flags as impl
  return [name for name, flag in flags.FLAGS._flags().items()  # noqa: SLF001
          if isinstance(getattr(flag, 'parser', None), impl.ConfigFileFlagParser)]


def _resolve_config_arg(name: str, value: str) -> str:
  """``path[:variant]`` with a relative path found from the cwd, else from the repo."""
  path, sep, variant = value.partition(':')
  p = Path(path).expanduser()
  if p.exists():
    resolved = p
  elif not p.is_absolute() and path and (REPO / p).exists():
    resolved = REPO / p
  else:
    known = ', '.join(config_files())
    where = ('' if p.is_absolute() else f' (looked in {Path.cwd()}'
             + ('' if Path.cwd().resolve() == REPO else f' and {REPO}') + ')')
    _fail(f'--{name}={value}: config file {path!r} not found{where}; config files: {known}')
  if resolved.is_dir():
    _fail(f'--{name}={value}: {path!r} is a directory, not a config file; config files: '
          f'{", ".join(config_files())}')
  return str(resolved) + sep + variant


def _rewrite_config_args(argv: list[str], names: list[str]) -> list[str]:
  """``argv`` with the value of every config file flag resolved (`_resolve_config_arg`)."""
  out = list(argv[:1])
  i = 1
  while i < len(argv):
    a = argv[i]
    if a == '--':
      return out + argv[i:]
    for name in names:
      prefix = next((p for p in (f'--{name}=', f'-{name}=') if a.startswith(p)), None)
      if prefix:
        a = prefix + _resolve_config_arg(name, a[len(prefix):])
      elif a in (f'--{name}', f'-{name}') and i + 1 < len(argv):  # --config path
        out.append(a)
        i += 1
        a = _resolve_config_arg(name, argv[i])
      else:
        continue
      break
    out.append(a)
    i += 1
  return out


def _override_count(argv: list[str], flag: str) -> tuple[int, str | None]:
  """How often ``--flag`` is given, and its (last) text."""
  n, text = 0, None
  for i, a in enumerate(argv[1:], 1):
    if a == '--':
      break
    for prefix in (f'--{flag}', f'-{flag}'):
      if a.startswith(prefix + '='):
        n, text = n + 1, a[len(prefix) + 1:]
      elif a == prefix and i + 1 < len(argv):
        n, text = n + 1, argv[i + 1]
  return n, text


def _check_parsed_configs(argv: list[str], names: list[str]) -> None:
  """Errors that ml_collections defers or lets through, as one line each.

  A config file that failed to load (an ``OSError`` inside it) is kept as an
  object that raises on first use: report it now. A tuple-valued key set once to
  a bare scalar (``--config.model.hidden=256``) would silently become a
  one-element tuple ``(256,)``: refuse it and say how to write a tuple.
  """
  import ast

  from absl import flags
  from ml_collections import config_flags
  from ml_collections.config_flags import config_flags as impl
  error_type = getattr(impl, '_ErrorConfig', None)
  for name in names:
    flag = flags.FLAGS[name]
    value = flag.value
    if error_type is not None and isinstance(value, error_type):
      err = object.__getattribute__(value, '_error')
      lines = [l.strip() for l in str(_root_cause(err)).splitlines() if l.strip()]
      try:
        where = f'--{name}={config_flags.get_config_filename(flag)}: '
      except Exception:  # noqa: BLE001 - only for the message
        where = f'--{name}: '
      _fail(f'{where}cannot load the config file: '
            f'{lines[-1] if lines else type(err).__name__}')
    if value is None:
      continue
    for path, new in config_flags.get_override_values(flag).items():
      if not isinstance(new, tuple):
        continue
      n, text = _override_count(argv, f'{name}.{path}')
      if n != 1 or text is None:
        continue
      try:
        literal = ast.literal_eval(text)
      except (ValueError, SyntaxError, TypeError):
        literal = text
      if isinstance(literal, (tuple, list)):
        continue
      default = flags.FLAGS[f'{name}.{path}'].default
      default = tuple(default) if isinstance(default, list) else default
      _fail(f'--{name}.{path}={text}: {path} is a tuple (default {default!r}); one bare value '
            f"would silently become the 1-tuple ({literal!r},): write --{name}.{path}='({text},)' "
            f"for one element, '({text}, {text})' for two")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser, with every input error as one ``error: ...`` line and exit 2.

  * ``--help`` (``-h``, ``--helpshort``) prints the usage (the main module's docstring
    and its flags) on stdout and exits 0; ``--helpfull`` lists every flag.
  * A config file flag (``--config=path[:variant]``): a relative path that does not
    exist from the cwd is taken from the repository root; a missing file is named
    with the list of config files.
  * A failure inside the config's ``get_config`` (an unknown variant), a bad flag
    value, a missing required flag or a flag validator's error: the innermost
    message, on one line.
  * An override naming a key the (locked) config lacks: ml_collections raises a
    KeyError/AttributeError with a traceback; we name the flag instead.
  * A tuple-valued key overridden by one bare value (see `_check_parsed_configs`).
  """
  import re
  import sys

  from absl import app, flags
  args = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  if any(a in _HELP or a in _HELPFULL for a in args):
    app.usage(shorthelp=not any(a in _HELPFULL for a in args), writeto_stdout=True)
    sys.exit(0)
  names = _config_file_flags()
  argv = _rewrite_config_args(argv, names)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    cause = _first_cause(e, flags.Error)
    text = str(e)
    if cause is not None:
      lines = [l.strip() for l in str(cause).splitlines() if l.strip()]
      m = re.match(r'flag (--.+?): Error whilst parsing config file', text)
      head = m.group(1) if m else text.split(': ', 1)[0]
      text = f'{head}: {lines[-1] if lines else type(cause).__name__}'
    _fail(text)
  except (AttributeError, KeyError) as e:
    text = str(e).replace('\\n', ' ').replace('\n', ' ').strip('\'" ')
    m = re.search(r'instead of "([\w-]+)"', text) or re.search(r"([\w-]+)", text)
    missing = m.group(1) if m else ''
    overrides = [a.lstrip('-').split('=')[0] for a in argv[1:]
                 if any(a.lstrip('-').startswith(n + '.') for n in names)]
    overrides = [o.split('.', 1)[1] for o in overrides]
    culprit = next((o for o in overrides if missing in o.split('.')), None)
    hint = re.search(r'(Did you mean .*\?)', text)
    _fail(f'unknown config key {culprit or missing!r}'
          + (f' ({hint.group(1)})' if hint else ''))
  except OSError as e:  # a config that failed to load, used by an override
    lines = [l.strip() for l in str(_root_cause(e)).splitlines() if l.strip()]
    _fail(f'cannot load the config: {lines[-1] if lines else type(e).__name__}')
  _check_parsed_configs(argv, names)
  return rest


def guard(main):
  """Wraps an absl ``main`` so that input errors end in one line, not a traceback.

  ``ValueError`` (and `research.errors.UserError`), ``FileNotFoundError``,
  `research.checkpoint.CheckpointError` and absl's ``UsageError`` print
  ``error: <message>`` (the message on one line) on stderr and exit 2;
  `research.train.DivergenceError` exits 1; `research.errors.Interrupted`
  prints its message and exits with its code (130 / 143). Anything else is a bug
  and keeps its traceback.
  """
  import functools
  import sys

  from research import errors

  def line(e: BaseException) -> str:
    msg = _one_line(str(e)) or type(e).__name__
    if msg.lower().startswith('error:'):
      msg = msg[len('error:'):].strip()
    return msg

  @functools.wraps(main)
  def wrapped(argv):
    from absl import app

    from research.checkpoint import CheckpointError
    from research.train import DivergenceError
    try:
      return main(argv)
    except errors.Interrupted as e:
      print(str(e), file=sys.stderr)
      sys.exit(e.exit_code)
    except DivergenceError as e:
      print(f'error: {line(e)}', file=sys.stderr)
      sys.exit(errors.EXIT_DIVERGED)
    except (ValueError, FileNotFoundError, CheckpointError, app.UsageError) as e:
      msg = line(e)
      if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
        msg = f'{msg}: {e.filename}'
      print(f'error: {msg}', file=sys.stderr)
      sys.exit(errors.EXIT_USAGE)
  return wrapped
