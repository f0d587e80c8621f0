"""Several processes, one run: ``jax.distributed`` on CPU, GPU or TPU hosts.

The scripts take ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`` (or JAX's environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; on SLURM and TPU pods JAX finds them
itself with ``--coordinator_address=auto``) and call `initialize` before any JAX
computation. Every process then sees every process's devices in
``jax.devices()``, and `research.mesh` lays the run's (member, data) mesh over
all of them: one program, partitioned by XLA, with collectives between processes
(gloo on CPU, NCCL on GPU). Each process holds its own shards; host reads of
member-sharded arrays gather them (`host`). Only process 0 writes metrics,
TensorBoard, config.json and results.json (`is_writer`); Orbax checkpoints are
written and read by every process, each its own shards.

Sweeps and studies with several processes (``scripts/sweep.py``,
``scripts/reproduce.py``) decide on process 0 alone what depends on the Optuna
storage or on files, and share the decision (`from_writer`: JSON bytes through
``multihost_utils.broadcast_one_to_all``), so that every process takes the same path.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

_ENV = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS', 'num_processes': 'JAX_NUM_PROCESSES',
        'process_id': 'JAX_PROCESS_ID'}


def define_flags(heartbeat_timeout: bool = False):
  """The three absl flags of the scripts (defaults from JAX's environment variables);
  with ``heartbeat_timeout``, also ``--heartbeat_timeout_s`` (`initialize_from_flags`
  reads it)."""
  from absl import flags
  if heartbeat_timeout:
    flags.DEFINE_integer(
        'heartbeat_timeout_s', 100, 'Multi-process runs: seconds without a heartbeat after '
        'which the other processes give up on a dead one (and exit, so a re-run can resume).')
  flags.DEFINE_string('coordinator_address', os.environ.get(_ENV['coordinator_address']),
                      'HOST:PORT of process 0 for a multi-process run (jax.distributed); '
                      "'auto': let JAX detect the cluster (SLURM, TPU pods). Unset: one process.")
  flags.DEFINE_integer('num_processes', _int_env('num_processes'),
                       'Processes in a multi-process run (with --coordinator_address).')
  flags.DEFINE_integer('process_id', _int_env('process_id'),
                       'This process\'s index, 0..num_processes-1 (with --coordinator_address).')


def _int_env(key):
  v = os.environ.get(_ENV[key])
  return int(v) if v not in (None, '') else None


def requested() -> bool:
  """Whether the scripts' flags ask for several processes (a coordinator address)."""
  from absl import flags
  return bool(flags.FLAGS.coordinator_address)


def initialize_from_flags(heartbeat_timeout_s: int | None = None) -> bool:
  """Calls `initialize` with the scripts' flags (``heartbeat_timeout_s`` default:
  ``--heartbeat_timeout_s`` where defined); returns whether the run is multi-process."""
  from absl import flags
  f = flags.FLAGS
  if heartbeat_timeout_s is None and 'heartbeat_timeout_s' in f:
    heartbeat_timeout_s = f.heartbeat_timeout_s
  return initialize(f.coordinator_address, f.num_processes, f.process_id, heartbeat_timeout_s)


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, heartbeat_timeout_s: int | None = None) -> bool:
  """``jax.distributed.initialize`` (with gloo collectives on CPU); a no-op without a
  coordinator address. Raises ValueError (one line) for an incomplete set of flags."""
  if not coordinator_address:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ValueError('--num_processes / --process_id need --coordinator_address=HOST:PORT '
                       '(the address of process 0)')
    return False
  auto = coordinator_address == 'auto'
  if not auto:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in 0..{num_processes - 1} '
                       f'(--num_processes={num_processes})')
    if ':' not in coordinator_address:
      raise ValueError(f'--coordinator_address={coordinator_address!r}: expected HOST:PORT')
  # CPU processes exchange values through gloo (the default CPU client has no
  # cross-process collectives); GPU and TPU bring their own.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kw = {} if heartbeat_timeout_s is None else {'heartbeat_timeout_seconds': heartbeat_timeout_s}
  if auto:
    jax.distributed.initialize(**kw)
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kw)
  return jax.process_count() > 1


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def host(tree):
  """Numpy copies of a tree of arrays on the host. Arrays whose shards live on
  several processes' devices are gathered first (every process must call this at
  the same point: it is a collective)."""
  if jax.process_count() == 1:  # one transfer for the whole tree
    return jax.tree.map(np.asarray, jax.device_get(tree))

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def sync(name: str) -> None:
  """A barrier across processes (a no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _broadcast_bytes(data: bytes | None) -> bytes:
  """Process 0's ``data`` on every process (collective: every process calls it)."""
  from jax.experimental import multihost_utils
  n = int(multihost_utils.broadcast_one_to_all(np.int32(len(data) if is_writer() else 0)))
  buf = np.frombuffer(data, np.uint8) if is_writer() else np.zeros(n, np.uint8)
  return np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes()


_KINDS = {'ValueError': ValueError, 'ImportError': ImportError,
          'FileNotFoundError': FileNotFoundError}


def from_writer(fn):
  """``fn()`` run on process 0 alone; every process returns its result. With one
  process this is ``fn()``. With several, every process must call it at the same
  point (it is a collective); the result travels as JSON, so it must be JSON-able.
  An exception in ``fn`` is raised on every process: on process 0 as it is, on the
  others as the same kind (ValueError, ImportError, FileNotFoundError; else
  RuntimeError) with its message, so that no process waits for one that stopped."""
  if jax.process_count() == 1:
    return fn()
  if not is_writer():
    msg = json.loads(_broadcast_bytes(None))
    if 'error' in msg:
      kind = _KINDS.get(msg['kind'])
      raise kind(msg['error']) if kind else RuntimeError(
          f'process 0 stopped: {msg["kind"]}: {msg["error"]}')
    return msg['ok']
  try:
    out = fn()
    data = json.dumps({'ok': out}).encode()
  except Exception as e:
    kind = next((k for k, t in _KINDS.items() if isinstance(e, t)), type(e).__name__)
    _broadcast_bytes(json.dumps({'error': ' '.join(str(e).split()) or type(e).__name__,
                                 'kind': kind}).encode())
    raise
  return json.loads(_broadcast_bytes(data))['ok']
