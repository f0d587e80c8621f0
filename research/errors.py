"""The lab's exceptions and the exit codes the scripts map them to.

Every script in ``scripts/`` runs its ``main`` through `research.cli.guard`,
which turns these (and ``ValueError`` / ``FileNotFoundError``, the errors of bad
input) into one ``error: ...`` line on stderr and the exit code below; no
Python traceback reaches a user for an input mistake.

| exit | meaning |
|---|---|
| 0 | done |
| 1 | training failed (every member diverged) |
| 2 | bad input: a flag, config key, config file, data file, workdir |
| 75 | hung: no step finished within ``train.watchdog_s`` (``hang-*.txt`` in the workdir); re-run to resume |
| 130 | interrupted by Ctrl-C (SIGINT); a checkpoint was saved, re-run to resume |
| 143 | stopped by SIGTERM; a checkpoint was saved, re-run to resume |
"""
from __future__ import annotations

EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_HANG = 75  # EX_TEMPFAIL: "try again"; reproduce.py and sweep workers resume on it
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class UserError(ValueError):
  """Bad input a user can fix (a flag, config value, file or workdir)."""


class Interrupted(Exception):
  """The run stopped on a signal after saving a checkpoint; re-running resumes."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
