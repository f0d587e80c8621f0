"""Where a result came from: ``results.json``'s ``provenance`` entry.

Package versions, the git commit of the code (and whether the tree had
uncommitted changes), the command line, start and end times (UTC, ISO 8601),
the host and the devices. `research.results.write` adds it to every
``results.json`` it writes.
"""
from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'ml-collections',
            'optuna')
REPO = Path(__file__).resolve().parents[1]
# Roughly when the process started: research is imported first thing by every script.
PROCESS_START = time.time()


def iso(t: float) -> str:
  return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec='seconds')


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {'packages': versions, 'python': sys.version.split()[0], **git_state(REPO),
          'host': socket.gethostname()}


def git_state(repo: Path) -> dict[str, Any]:
  """``{'git_commit': sha or None, 'git_dirty': bool or None}`` of ``repo``."""
  def git(*args):
    return subprocess.run(['git', '-C', str(repo), *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
  try:
    commit = git('rev-parse', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return {'git_commit': None, 'git_dirty': None}
  return {'git_commit': commit, 'git_dirty': dirty}


def collect(start: float | None = None, end: float | None = None) -> dict[str, Any]:
  """The provenance of a result finished now (or at ``end``), started at ``start``
  (default: when this process imported research)."""
  import jax  # here, not at import: scripts set XLA_FLAGS before JAX starts

  devices = jax.devices()
  return {
      **_static(),
      'command': [os.path.basename(sys.executable)] + sys.argv,
      'cwd': os.getcwd(),
      'start': iso(PROCESS_START if start is None else start),
      'end': iso(time.time() if end is None else end),
      'backend': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'process_count': jax.process_count(),
  }
