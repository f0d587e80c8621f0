"""The device mesh a run trains on: a 2-D ``jax.sharding.Mesh`` with axes
``('member', 'data')``.

* **member**: the population's member axis is split over ``members`` devices;
  each device trains its own members and no values cross it in a step.
* **data**: each member's batch is split over ``data`` devices. Parameters and
  optimizer state are replicated along it; the batch is constrained to
  ``P('data')`` inside the vmapped step (``jax.vmap(..., spmd_axis_name='member')``
  puts the member axis in front), so XLA partitions the forward and backward
  pass by examples and inserts the all-reduces itself: gradients, the loss
  mean and batch-norm statistics are over the whole batch, as on one device.
  There is no ``pmap`` and no hand-written ``psum``.

``train.data_parallel`` picks the data axis: 0 (default) puts as many devices
on the member axis as divide K, then gives the devices left over to the data
axis (as many as divide the batch size) on GPU and TPU; on CPU it leaves them
idle, because the forced host devices share the same cores and one device's
XLA program already uses them (`scripts/benchmark.py --benchmark=data_parallel`
measured a batch split over 2 CPU devices at 0.86x one device); N > 0 asks for N data devices (N must
divide the device count and the batch size), the member axis then takes as
many of the rest as divide K. With several processes (`research.distributed`)
``jax.devices()`` lists every process's devices and the mesh spans them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

P = jax.sharding.PartitionSpec


@dataclasses.dataclass(frozen=True)
class Layout:
  """The mesh of a run (None on one device) and its two axis sizes."""
  mesh: Any
  members: int
  data: int

  @property
  def devices(self) -> int:
    return self.members * self.data

  @property
  def member(self):
    """Sharding of arrays with a leading member axis (None: one device)."""
    return None if self.mesh is None else jax.sharding.NamedSharding(self.mesh, P('member'))

  @property
  def replicated(self):
    """Sharding of arrays every device holds whole (the device-resident splits)."""
    return None if self.mesh is None else jax.sharding.NamedSharding(self.mesh, P())

  def put(self, tree):
    """Host arrays with a leading member axis onto the devices, sharded by member."""
    if self.mesh is None:
      return jax.tree.map(jax.numpy.asarray, tree)
    return jax.device_put(tree, self.member)

  def shard_batch(self, tree, size: int | None = None):
    """Inside the member-vmapped step: splits the leading (example) axis of every
    leaf over the data axis. A no-op without a data axis, or when ``size`` (the
    batch's length) is not a multiple of it (evaluation batches may not be)."""
    if self.data <= 1 or (size is not None and size % self.data):
      return tree
    s = jax.sharding.NamedSharding(self.mesh, P('data'))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, s), tree)

  def vmap(self, fn, **kw):
    """``jax.vmap`` whose mapped axis is the mesh's member axis (for the
    sharding constraints of `shard_batch` inside ``fn``)."""
    if self.mesh is not None:
      kw['spmd_axis_name'] = 'member'
    return jax.vmap(fn, **kw)

  def record(self) -> dict:
    """What results.json records: axis sizes and the devices, in mesh order."""
    devs = [] if self.mesh is None else [str(d) for d in self.mesh.devices.flat]
    return {'member': self.members, 'data': self.data, 'devices': devs,
            'processes': jax.process_count()}


NONE = Layout(None, 1, 1)


def mesh_shape(num_members: int, n_devices: int, batch_size: int | None = None,
               data_parallel: int = 0) -> tuple[int, int]:
  """(member devices, data devices) of the mesh for ``num_members`` members on
  ``n_devices`` devices (the rule in the module docstring). Raises ValueError, one
  line naming what is allowed, for a ``data_parallel`` that does not fit."""
  if not isinstance(data_parallel, int) or isinstance(data_parallel, bool) or data_parallel < 0:
    raise ValueError(f'train.data_parallel={data_parallel!r}: must be 0 (automatic) or a '
                     'positive number of devices per member')
  if data_parallel:
    if n_devices % data_parallel:
      raise ValueError(f'train.data_parallel={data_parallel} does not divide the {n_devices} '
                       f'device(s); allowed: 0 (automatic) or one of '
                       f'{[d for d in range(1, n_devices + 1) if n_devices % d == 0]}')
    if batch_size is not None and batch_size % data_parallel:
      raise ValueError(f'train.data_parallel={data_parallel} does not divide '
                       f'train.batch_size={batch_size}: each data device takes an equal '
                       'share of the batch')
    data = data_parallel
    members = max(i for i in range(1, n_devices // data + 1) if num_members % i == 0)
  else:
    members = max(i for i in range(1, n_devices + 1) if num_members % i == 0)
    left = n_devices // members
    data = max(i for i in range(1, left + 1) if batch_size is None or batch_size % i == 0)
  return members, data


def make_layout(num_members: int, batch_size: int | None = None, data_parallel: int = 0,
                devices=None) -> Layout:
  """The layout a run of ``num_members`` members with ``batch_size`` examples per step
  takes on ``devices`` (default: all, of every process); see `mesh_shape`."""
  devices = list(jax.devices() if devices is None else devices)
  if data_parallel == 0 and devices and devices[0].platform == 'cpu':
    data_parallel = 1  # automatic on CPU: no data axis (see the module docstring)
  members, data = mesh_shape(num_members, len(devices), batch_size, data_parallel)
  if members * data == 1:
    return NONE
  grid = np.array(devices[:members * data]).reshape(members, data)
  return Layout(jax.sharding.Mesh(grid, ('member', 'data')), members, data)
