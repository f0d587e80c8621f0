"""Named registries of models, datasets, task kinds and studies.

One pattern for all four: a `Registry` maps names to objects, filled by a
decorator beside the definition::

    from research import models

    @models.register('my_model')
    class MyModel(nn.Module):
      ...

A registry that belongs to a package (``research.models``, ``research.data``,
``research.experiments``) imports that package's own modules the first time a
name is looked up that is not registered yet (first the module named like the
entry, then all of them), so a new file in the package is found without an
import list to edit. Code outside ``research/`` registers the same way; it only
has to be imported before the name is used (a config file, being Python, can
import it, see docs/ARCHITECTURE.md "How to add a model / dataset / task /
study").

An unknown name is a `research.errors.UserError`, one line naming the closest
known name and all of them.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import pkgutil
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar('T')
_MISSING = object()


def _origin(obj: Any) -> str:
  """Where ``obj`` was defined, 'file:qualname': the same for a definition executed
  again (a config file that registers what it defines, loaded twice)."""
  try:
    where = inspect.getfile(obj)
  except TypeError:  # defined in a module that is not in sys.modules
    where = getattr(obj, '__module__', '?')
  return f'{where}:{getattr(obj, "__qualname__", type(obj).__qualname__)}'


def did_you_mean(name: Any, known) -> str:
  """`` (did you mean 'x'?)`` for the closest of ``known``, or ''."""
  known = [k for k in known if isinstance(k, str) and k]
  close = difflib.get_close_matches(name, known, n=1) if isinstance(name, str) else []
  return f' (did you mean {close[0]!r}?)' if close else ''


class Registry(Generic[T]):
  """Names -> objects of one kind (``kind`` names it in errors: 'model', 'dataset', ...).

  ``package``: the dotted name of a package whose modules register into this
  registry; they are imported lazily, on the first lookup of a name not yet
  registered. Mapping-like: ``name in r``, ``r[name]`` (an unknown name raises
  `unknown`), ``r.get(name, default)``, iteration over the sorted names, ``items()``.
  """

  def __init__(self, kind: str, package: str | None = None):
    self.kind = kind
    self.package = package
    self._entries: dict[str, T] = {}
    self._discovered = package is None
    self._failed: dict[str, str] = {}  # module -> why it could not be imported

  # ---- registering ----

  def register(self, name: str, obj: T | Any = _MISSING) -> Callable[[T], T] | T:
    """``@registry.register('name')`` above a class or function, or
    ``registry.register('name', obj)``; returns the object. A name taken by
    another definition is a ValueError; the same definition executed again (a
    config file loaded twice) replaces its earlier self."""
    if not isinstance(name, str) or not name:
      raise TypeError(f'a {self.kind} name must be a non-empty string, got {name!r}')

    def add(o: T) -> T:
      old = self._entries.get(name, _MISSING)
      if old is not _MISSING and old is not o and _origin(old) != _origin(o):
        raise ValueError(f'{self.kind} {name!r} is already registered (by {_origin(old)}); '
                         f'{_origin(o)} needs another name')
      self._entries[name] = o
      return o

    return add if obj is _MISSING else add(obj)

  def __setitem__(self, name: str, obj: T) -> None:
    self.register(name, obj)

  # ---- looking up ----

  def __getitem__(self, name: str) -> T:
    if not self._find(name):
      raise self.unknown(name)
    return self._entries[name]

  def get(self, name: str, default: Any = None) -> T | Any:
    """The entry ``name``, or ``default`` when there is none (``registry[name]`` raises)."""
    return self._entries[name] if self._find(name) else default

  def __contains__(self, name: object) -> bool:
    return self._find(name)

  def names(self) -> list[str]:
    self.discover()
    return sorted(self._entries)

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self.names())

  def keys(self) -> list[str]:
    return self.names()

  def items(self) -> list[tuple[str, T]]:
    return [(n, self._entries[n]) for n in self.names()]

  def values(self) -> list[T]:
    return [self._entries[n] for n in self.names()]

  def unknown(self, name: Any) -> Exception:
    """The error for an unknown name: one line, the closest name and all of them."""
    from research.errors import UserError
    known = self.names()
    failed = ''
    if self._failed:
      failed = '; could not import ' + ', '.join(f'{m} ({why})' for m, why in self._failed.items())
    return UserError(f'unknown {self.kind} {name!r}{did_you_mean(name, known)}; known: '
                     f'{", ".join(known) or "none"}{failed}')

  # ---- discovery ----

  def discover(self) -> None:
    """Imports every module of the package (once); modules starting with '_' are skipped."""
    if self._discovered:
      return
    self._discovered = True
    package = importlib.import_module(self.package)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
      if not info.name.startswith('_'):
        self._import(f'{self.package}.{info.name}')

  def _find(self, name: object) -> bool:
    if not isinstance(name, str):
      return False
    if name in self._entries:
      return True
    if not self._discovered:
      module = f'{self.package}.{name}'
      if name.isidentifier() and importlib.util.find_spec(module) is not None:
        self._import(module)  # the module named like the entry, before all the others
      if name not in self._entries:
        self.discover()
    return name in self._entries

  def _import(self, module: str) -> None:
    try:
      importlib.import_module(module)
    except ImportError as e:  # an optional dependency of one module fails only its entries
      self._failed[module] = ' '.join(f'{type(e).__name__}: {e}'.split())

  def __repr__(self) -> str:
    return f'Registry({self.kind!r}, {sorted(self._entries)})'
