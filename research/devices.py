"""CPU devices for populations: one XLA host device per core, set before JAX starts.

XLA's CPU backend runs one program on one device, and the ops of a small
recurrent model are too small for its intra-op thread pool to keep a second
core busy. With ``--xla_force_host_platform_device_count=N`` the CPU shows up
as N devices; `research.train` then shards a population's member axis over
them (`train.member_sharding`), so each core trains its own members.

`configure_cpu_devices()` must run before ``import jax`` (the scripts call it
first thing); it never overrides a count the user already put in
``XLA_FLAGS``, and ``RESEARCH_CPU_DEVICES=1`` turns it off.
"""
from __future__ import annotations

import os
import sys

FLAG = '--xla_force_host_platform_device_count'


def configure_cpu_devices(count: int | None = None) -> int | None:
  """Adds ``FLAG=count`` (default: the usable cores) to XLA_FLAGS; returns the count set.

  Returns None (and changes nothing) when JAX is already imported, when the
  user set the flag, or when the count is 1."""
  if 'jax' in sys.modules:
    return None
  flags = os.environ.get('XLA_FLAGS', '')
  if FLAG in flags:
    return None
  if count is None:
    count = int(os.environ.get('RESEARCH_CPU_DEVICES', 0)) or usable_cores()
  if count <= 1:
    return None
  os.environ['XLA_FLAGS'] = f'{flags} {FLAG}={count}'.strip()
  return count


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1
