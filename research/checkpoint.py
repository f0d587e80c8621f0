"""Orbax checkpoints of the whole population state.

Each save writes the stacked member state (params, optimizer state, rng, best
params, early-stopping and divergence bookkeeping) plus a small JSON of loop
metadata. Orbax writes into a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous checkpoint intact; on restore
an unreadable newest checkpoint is reported and the next older one is used.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


class Checkpointer:
  def __init__(self, directory: str | Path, keep: int = 2):
    self.directory = Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True))

  def save(self, step: int, state: Any, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def restore_latest(self, like: Any) -> tuple[int, Any, dict] | None:
    """Restores the newest readable checkpoint into the structure of ``like``.

    Returns None when there is no checkpoint; raises CheckpointError when
    checkpoints exist but none can be read.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    errors = []
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        if errors:
          logging.warning('Resumed from older checkpoint %d; newer ones unreadable: %s',
                          step, '; '.join(errors))
        return step, restored['state'], restored['meta']
      except Exception as e:  # noqa: BLE001 - report every failure, then fall back
        msg = f'step {step}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        logging.warning('Checkpoint unreadable (%s)', msg)
        errors.append(msg)
    raise CheckpointError(
        f'No readable checkpoint in {self.directory} ({"; ".join(errors)}). '
        'Move the directory away to start afresh; nothing was deleted.')

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
