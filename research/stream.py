"""Streaming input (``data.stream=True``): the training split stays in host memory.

The device-resident epoch (`research.train.Trainer._train_epoch`) holds the whole
training split on every device and gathers each member's batches inside one
jitted ``lax.scan``. A streamed epoch (`research.train.Trainer.stream_epoch`)
computes the same numbers with the split in NumPy on the host:

1. ``Trainer.shuffle`` (jitted, member-vmapped) performs the resident epoch's
   own rng split and permutation (`Trainer._shuffle`, which ``_train_epoch``
   calls too) and returns each member's new rng and its (steps, batch) order;
   the orders come to the host, (K, steps, bs).
2. The host gathers the batches of ``chunk`` steps at a time (`place`; `chunk_size`:
   ``data.stream_chunk``, or about 16 MiB of batches, the whole epoch if smaller): arrays
   (K, chunk, bs, ...), placed with the member axis over the mesh's ``member``
   devices and the examples over its ``data`` devices (``P('member', None,
   'data')``; each device's shard is gathered on its own, so with several
   processes each process gathers only its devices' share), one plain
   ``device_put`` on one device.
3. A background thread (`prefetch`) gathers and places the next chunks while the
   current one trains: ``Trainer.train_chunk``, a jitted, member-vmapped
   ``lax.scan`` of the same ``train_step`` under the same ``shard_batch``
   constraint. Augmentation, input noise and dropout draw from the state's rng
   inside ``train_step``, so they are the resident run's too.

The per-step metrics of the chunks are joined into the (K, steps) arrays the
resident epoch returns. Only the training split streams: validation and test
splits (and the training split a run without validation evaluates for
selection) stay on the device, as evaluation scans them whole.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

P = jax.sharding.PartitionSpec

AUTO_CHUNK_BYTES = 16 << 20  # data.stream_chunk=0: chunks of about this many bytes


def step_bytes(split: dict[str, np.ndarray], members: int, batch_size: int) -> int:
  """Bytes of one training step's batches, all ``members`` together."""
  per_example = sum(np.asarray(v[:1]).nbytes for v in split.values())
  return members * batch_size * per_example


def chunk_size(steps: int, chunk: int = 0, nbytes: int = 0) -> int:
  """Steps per chunk of an epoch of ``steps`` steps whose batches take ``nbytes`` a
  step: ``chunk`` (at most the epoch), or for ``chunk`` 0 (automatic) the epoch cut
  into equal chunks of at most `AUTO_CHUNK_BYTES` (the whole epoch when it fits:
  on MNIST-1D, 3 members take 49 kB a step; a video batch may take megabytes). A
  last, shorter chunk (37 steps in chunks of 13: 13, 13, 11) is a second compiled
  shape."""
  if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
    raise ValueError(f'data.stream_chunk={chunk!r}: must be 0 (automatic) or a positive '
                     'number of training steps')
  if chunk:
    return min(chunk, steps)
  most = max(1, min(steps, AUTO_CHUNK_BYTES // max(int(nbytes), 1)))
  pieces = -(-steps // most)
  return -(-steps // pieces)


def chunk_bounds(steps: int, chunk: int) -> list[tuple[int, int]]:
  """[start, stop) of each chunk of an epoch."""
  return [(a, min(a + chunk, steps)) for a in range(0, steps, chunk)]


def host_split(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The split as C-contiguous NumPy arrays in the dtypes JAX computes with
  (float64 -> float32, int64 -> int32 without x64), as ``jnp.asarray`` would turn
  them, so that a streamed batch holds the resident batch's values."""
  out = {}
  for k, v in split.items():
    v = np.asarray(v)
    out[k] = np.ascontiguousarray(v, dtype=jax.dtypes.canonicalize_dtype(v.dtype))
  return out


def sharding(layout) -> Any:
  """How a chunk (K, chunk, bs, ...) lies on ``layout``'s mesh (None: one device)."""
  if layout.mesh is None:
    return None
  return jax.sharding.NamedSharding(layout.mesh, P('member', None, 'data'))


def place(layout, split: dict[str, np.ndarray], idx: np.ndarray,
          device=None) -> dict[str, jax.Array]:
  """``split[k][idx]`` for every key (``idx``: (K, chunk, bs) example indices) on the
  devices: without a mesh one ``device_put`` to ``device`` (the state's: the prefetch
  thread does not see the caller's ``jax.default_device``); on a mesh each device's
  shard is gathered from its block of ``idx`` (`sharding`)."""
  s = sharding(layout)
  if s is None:
    return {k: jax.device_put(v[idx], device) for k, v in split.items()}

  def shard(v):
    def get(index):
      block = v[idx[index[:3]]]
      return block[(slice(None),) * 3 + tuple(index[3:])]
    return jax.make_array_from_callback(idx.shape + v.shape[1:], s, get)
  return {k: shard(v) for k, v in split.items()}


def prefetch(make: Callable[[Any], Any], items: Sequence[Any], depth: int = 2) -> Iterator[Any]:
  """``make(item)`` for each item, in order, computed on a background thread up to
  ``depth`` items ahead of the consumer. An exception in ``make`` is raised in the
  consumer; closing the generator early (an exception in the consumer) stops the
  thread."""
  q: queue.Queue = queue.Queue(maxsize=max(1, depth))
  stop = threading.Event()

  def put(entry) -> bool:
    while not stop.is_set():
      try:
        q.put(entry, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def work():
    try:
      for item in items:
        if not put((True, make(item))):
          return
    except BaseException as e:  # noqa: BLE001 (handed to the consumer)
      put((False, e))

  thread = threading.Thread(target=work, name='stream-prefetch', daemon=True)
  thread.start()
  try:
    for _ in range(len(items)):
      ok, value = q.get()
      if not ok:
        raise value
      yield value
  finally:
    stop.set()
    thread.join(timeout=10)
