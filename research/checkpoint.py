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
    (one line: the step, the directory and the cause) if it cannot be written. The
    previous checkpoints are untouched by a failed save."""
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - one line for a user, the cause kept
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
        moved = [self._move_aside(s) for s in bad]
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
    self.manager.wait_until_finished()
    self.manager.close()
