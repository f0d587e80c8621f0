"""Orbax checkpoints of the whole population state.

Each save writes the stacked member state (params, optimizer state, rng, best
params, early-stopping and divergence bookkeeping) plus a small JSON of loop
metadata. Orbax writes into a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous checkpoint intact; on restore
an unreadable newest checkpoint is reported, moved aside to ``<step>.corrupt``
and the next older one is used.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


@contextlib.contextmanager
def _quiet_asyncio():
  """Orbax reads with asyncio tasks; a garbled file fails several of them and asyncio
  logs each as 'Task exception was never retrieved' (hundreds of lines). The failure
  itself reaches us as an exception, so those duplicates are dropped while reading."""
  log = logging.getLogger('asyncio')
  level = log.level
  log.setLevel(logging.CRITICAL + 1)
  try:
    yield
  finally:
    log.setLevel(level)


class Checkpointer:
  def __init__(self, directory: str | Path, keep: int = 2):
    self.directory = Path(directory).absolute()
    self.keep = keep
    self.failed = False
    self.manager = self._manager()

  def _manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Saves ``state`` and ``meta`` as checkpoint ``step``; raises CheckpointError
    (one line: the step, the directory and the cause) if it cannot be written, e.g.
    on a full disk. The previous checkpoints are untouched by a failed save."""
    try:
      with _orbax_errors_dropped():  # they come back to us as the exception below
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - one line for a user, the cause kept
      self.failed = True
      cause = e
      while cause.__cause__ is not None or cause.__context__ is not None:
        if isinstance(cause, OSError):
          break
        cause = cause.__cause__ or cause.__context__
      text = (cause.strerror if isinstance(cause, OSError) and cause.strerror
              else str(cause).splitlines()[0] if str(cause) else type(cause).__name__)
      raise CheckpointError(
          f'could not write checkpoint {step} in {self.directory}: {text}; the '
          'checkpoints before it are kept') from e

  def restore_latest(self, like: Any) -> tuple[int, Any, dict] | None:
    """Restores the newest readable checkpoint into the structure of ``like``.

    Returns None when there is no checkpoint. Unreadable checkpoints newer than
    the one restored are moved aside to ``<step>.corrupt`` (never deleted), so
    training can write those steps again. Raises CheckpointError when
    checkpoints exist but none can be read (then nothing is moved).
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    errors, bad = [], []
    for step in steps:
      try:
        with _quiet_asyncio():
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - report every failure, then fall back
        msg = f'step {step}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        errors.append(msg)
        bad.append(step)
        continue
      if bad:
        from research import distributed
        # every process found the same steps unreadable; process 0 moves them
        moved = ([self._move_aside(s) for s in bad] if distributed.is_writer() else
                 [self.directory / f'{s}.corrupt' for s in bad])
        distributed.sync('checkpoints-moved-aside')
        logging.warning('Checkpoint(s) %s unreadable, moved aside to %s; resuming from '
                        'checkpoint %d (%s)', bad, [m.name for m in moved], step,
                        '; '.join(errors))
        self.manager.close()
        self.manager = self._manager()
      return step, restored['state'], restored['meta']
    raise CheckpointError(
        f'no readable checkpoint in {self.directory} ({"; ".join(errors)}); move the '
        'directory away to start afresh (nothing was changed)')

  def _move_aside(self, step: int) -> Path:
    src = self.directory / str(step)
    dst = self.directory / f'{step}.corrupt'
    n = 1
    while dst.exists():
      dst = self.directory / f'{step}.corrupt.{n}'
      n += 1
    os.rename(src, dst)
    return dst

  def close(self) -> None:
    """Waits for a save in flight and closes the manager. After a failed save the
    error was already raised; closing then only logs what else fails."""
    try:
      with _orbax_errors_dropped():
        self.manager.wait_until_finished()
        self.manager.close()
    except Exception as e:  # noqa: BLE001
      if not self.failed:
        raise
      logging.debug('closing the checkpoint manager after a failed save: %s', e)


class _DropOrbaxErrors(logging.Filter):
  """Drops records logged by Orbax, and asyncio's reports of Orbax tasks whose
  exception nobody retrieved (a write task garbage-collected during the save)."""
  def filter(self, record: logging.LogRecord) -> bool:
    if '/orbax/' in record.pathname.replace('\\', '/'):
      return False
    return not (record.name == 'asyncio' and 'orbax' in record.getMessage())


def _echo_of_failed_write(exc_type, exc_value) -> bool:
  return ((issubclass(exc_type, RuntimeError) and 'Event loop is closed' in str(exc_value))
          or issubclass(exc_type, OSError))


@contextlib.contextmanager
def _orbax_errors_dropped():
  """A failed write (a full disk) reaches us as one exception, but Orbax also logs it
  from its worker threads, and TensorStore callbacks that land on Orbax's closed
  event loop print their own tracebacks. While saving, those echoes are dropped;
  the exception raised to the caller says what happened."""
  f = _DropOrbaxErrors()
  loggers = [logging.getLogger(), logging.getLogger('absl')]
  handlers = [h for lg in loggers for h in lg.handlers]
  for h in handlers:
    h.addFilter(f)
  old_except, old_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(t, v, tb):
    if not _echo_of_failed_write(t, v):
      old_except(t, v, tb)

  def unraisablehook(u):
    if not _echo_of_failed_write(u.exc_type, u.exc_value):
      old_unraisable(u)

  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
  before = set(threading.enumerate())
  try:
    yield
  except Exception:
    # Orbax's writer threads go on failing for a moment after the error reached us;
    # let them finish now, not during interpreter shutdown. Their later log lines and
    # the tasks they leave behind (asyncio: 'Task exception was never retrieved') are
    # echoes of the same failure, so the filters stay on for the rest of the process.
    for t in set(threading.enumerate()) - before:
      if t is not threading.current_thread() and not t.daemon:
        t.join(timeout=30)
    logging.getLogger('asyncio').setLevel(logging.CRITICAL + 1)
    raise
  else:
    sys.excepthook, sys.unraisablehook = old_except, old_unraisable
    for h in handlers:
      h.removeFilter(f)
