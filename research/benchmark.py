"""Speed of the recurrent layers and of populations, against Flax's and PyTorch's.

Everything is timed *interleaved* in one process: each round runs every
candidate of a case once, in turn, so a change in machine load hits all of
them alike; per candidate we keep the median and minimum wall time per call and
the median process CPU time per call (all threads; ``time.process_time``).
Ratios compare medians inside one case of one run.

Cases:

* ``matmul``: one jitted n x n float32 matmul, the machine's achievable GFLOP/s.
* ``<cell> train`` / ``<cell> forward``: a one-layer recurrent classifier on
  (B, T, D) inputs, hidden H, a linear head on the last step, softmax
  cross-entropy, Adam. Candidates: ours (`Recurrent(fast=True)`, the custom-VJP
  op of `research.models.fast_rnn`), ours generic (`fast=False`, autodiff of
  `lax.scan`), Flax's ``nn.RNN`` with its own cell (``OptimizedLSTMCell``,
  ``GRUCell``, ``SimpleCell``) and, when PyTorch is importable, ``nn.LSTM`` /
  ``nn.GRU`` / ``nn.RNN`` with ``torch.optim.Adam``.
* ``population``: K members of one model (each with its own parameters, Adam
  state and batch) as one vmapped jitted step, with the member axis sharded
  over the CPU devices when there are several, against K one-by-one steps of
  the single-member program.

GFLOP/s counts the matmuls only: forward ``2 T B (D + H) G H`` for G gate blocks
(LSTM 4, GRU 3, Elman 1) plus the head; a training step is 3x the forward
(the backward pass costs two matmuls per forward matmul).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.models.recurrent import Recurrent

GATE_BLOCKS = {'lstm': 4, 'gru': 3, 'elman': 1}
CELLS = tuple(GATE_BLOCKS)
MODES = ('train', 'forward')  # train: forward + backward + Adam update
REFERENCES = ('generic', 'flax', 'torch')


def check_choices(what: str, values: list[str], allowed: tuple[str, ...]) -> None:
  """Raises ValueError naming every value of ``values`` not in ``allowed``."""
  bad = [v for v in values if v not in allowed]
  if bad:
    raise ValueError(f'unknown {what} {", ".join(map(repr, bad))}; allowed: '
                     f'{", ".join(allowed)}')


def parse_counts(what: str, values: list[str]) -> list[int]:
  """Positive integers from strings; ValueError naming a bad one."""
  out = []
  for v in values:
    try:
      n = int(v)
    except ValueError:
      n = 0
    if n < 1:
      raise ValueError(f'{what} must be positive integers, got {v!r}')
    out.append(n)
  return out


def parse_shape(spec: str) -> tuple[str, tuple[int, int, int, int]]:
  """``'name:BxTxDxH'`` -> (name, (B, T, D, H)); ValueError naming a malformed spec."""
  name, sep, dims = spec.partition(':')
  parts = dims.split('x')
  try:
    values = tuple(int(v) for v in parts)
  except ValueError:
    values = ()
  if not (name and sep and len(values) == 4 and min(values) > 0):
    raise ValueError(f'population shape {spec!r} is not name:BxTxDxH with positive integers '
                     '(e.g. small:32x50x8x32)')
  return name, values


@dataclasses.dataclass
class Shape:
  batch: int = 64
  length: int = 100
  input: int = 32
  hidden: int = 128
  classes: int = 10

  def flops(self, cell: str, train: bool) -> float:
    B, T, D, H, C = self.batch, self.length, self.input, self.hidden, self.classes
    fwd = 2 * T * B * (D + H) * GATE_BLOCKS[cell] * H + 2 * B * H * C
    return 3 * fwd if train else fwd


# ---- timing ----

def time_interleaved(fns: dict[str, Callable[[], Any]], rounds: int,
                     max_seconds: float | None = None,
                     warmup: int = 0) -> dict[str, dict[str, Any]]:
  """Calls every fn once per round, in turn; returns per-fn timing statistics (ms).

  ``warmup``: untimed calls of each fn right before its timed one, so that it is
  timed in its steady state (caches holding its own buffers, as in a training
  loop) and not just after another candidate evicted them. Stops early (after
  at least 3 rounds) once ``max_seconds`` have passed."""
  wall = {k: [] for k in fns}
  cpu = {k: [] for k in fns}
  start = time.perf_counter()
  for r in range(rounds):
    for k, fn in fns.items():
      for _ in range(warmup):
        fn()
      c0, t0 = time.process_time(), time.perf_counter()
      fn()
      wall[k].append(time.perf_counter() - t0)
      cpu[k].append(time.process_time() - c0)
    if max_seconds and r >= 2 and time.perf_counter() - start > max_seconds:
      break
  return {k: {'median_ms': 1e3 * statistics.median(wall[k]), 'min_ms': 1e3 * min(wall[k]),
              'cpu_ms': 1e3 * statistics.median(cpu[k]), 'rounds': len(wall[k]),
              'wall_ms': [1e3 * w for w in wall[k]]} for k in fns}


@dataclasses.dataclass
class Candidate:
  run: Callable[[], Any]  # one step, blocking until done
  compile_s: float | None = None  # lowering + compilation of the step
  first_step_s: float | None = None  # compile + first call (what a user waits for)


def _compiled(fn, *args):
  t0 = time.perf_counter()
  exe = jax.jit(fn).lower(*args).compile()
  return exe, time.perf_counter() - t0


# ---- JAX candidates ----

class LastStepClassifier(nn.Module):
  """Our recurrent layer + a linear head on the last step (the benchmark model)."""
  cell: str = 'lstm'
  hidden: int = 128
  classes: int = 10
  fast: bool = True
  cell_options: Any = None

  @nn.compact
  def __call__(self, x):
    _, final = Recurrent(self.cell, self.hidden, cell_options=self.cell_options,
                         fast=self.fast)(x)
    return nn.Dense(self.classes)(final)


class FlaxReference(nn.Module):
  """Flax's own cell under ``nn.RNN`` + a linear head on the last step."""
  cell: str = 'lstm'
  hidden: int = 128
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    cell = {'lstm': nn.OptimizedLSTMCell, 'gru': nn.GRUCell, 'elman': nn.SimpleCell}[self.cell]
    h = nn.RNN(cell(self.hidden))(x)
    return nn.Dense(self.classes)(h[:, -1])


def _data(shape: Shape, seed: int = 0, members: int | None = None):
  rng = np.random.default_rng(seed)
  lead = () if members is None else (members,)
  x = rng.normal(size=lead + (shape.batch, shape.length, shape.input)).astype(np.float32)
  y = rng.integers(0, shape.classes, size=lead + (shape.batch,)).astype(np.int32)
  return x, y


def make_train_step(model: nn.Module, lr: float = 1e-3):
  """(init(key, x) -> state, step(state, x, y) -> (state, loss)): Adam on cross-entropy."""
  tx = optax.adam(lr)

  def init(key, x):
    params = model.init(key, x)
    return params, tx.init(params)

  def step(state, x, y):
    params, opt = state

    def loss_fn(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), loss

  return init, step


def jax_candidate(model: nn.Module, shape: Shape, train: bool) -> Candidate:
  x, y = _data(shape)
  x, y = jnp.asarray(x), jnp.asarray(y)
  init, step = make_train_step(model)
  state = [jax.jit(init)(jax.random.PRNGKey(0), x)]
  t0 = time.perf_counter()
  if train:
    exe, compile_s = _compiled(step, state[0], x, y)

    def run():
      state[0], loss = exe(state[0], x, y)
      loss.block_until_ready()
  else:
    exe, compile_s = _compiled(model.apply, state[0][0], x)

    def run():
      exe(state[0][0], x).block_until_ready()
  run()
  return Candidate(run, compile_s, time.perf_counter() - t0)


# ---- PyTorch candidates ----

def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def torch_candidate(cell: str, shape: Shape, train: bool, threads: int) -> Candidate:
  import torch
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  rnn = {'lstm': torch.nn.LSTM, 'gru': torch.nn.GRU, 'elman': torch.nn.RNN}[cell](
      shape.input, shape.hidden, batch_first=True)
  head = torch.nn.Linear(shape.hidden, shape.classes)
  opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
  x, y = _data(shape)
  x, y = torch.from_numpy(x), torch.from_numpy(y).long()

  def run():
    if train:
      opt.zero_grad(set_to_none=True)
      out, _ = rnn(x)
      loss = torch.nn.functional.cross_entropy(head(out[:, -1]), y)
      loss.backward()
      opt.step()
    else:
      with torch.no_grad():
        out, _ = rnn(x)
        head(out[:, -1])

  t0 = time.perf_counter()
  run()
  return Candidate(run, None, time.perf_counter() - t0)


# ---- cases ----

def recurrent_case(cell: str, shape: Shape, train: bool, rounds: int, torch_threads: list[int],
                   references: list[str], variant: str | None = None,
                   max_seconds: float | None = None, warmup: int = 0) -> dict[str, Any]:
  """Times ours (fast, generic) against the references on one cell and shape."""
  opts = {'variant': variant or 'standard'} if cell == 'lstm' else None
  cands: dict[str, Candidate] = {
      'ours': jax_candidate(LastStepClassifier(cell, shape.hidden, shape.classes, True, opts),
                            shape, train)}
  if 'generic' in references:
    cands['ours generic'] = jax_candidate(
        LastStepClassifier(cell, shape.hidden, shape.classes, False, opts), shape, train)
  if 'flax' in references and (variant in (None, 'standard', 'NP')):
    cands['flax'] = jax_candidate(FlaxReference(cell, shape.hidden, shape.classes), shape, train)
  if 'torch' in references and torch_available() and (variant in (None, 'standard', 'NP')):
    for n in torch_threads:
      cands[f'torch {n}T'] = torch_candidate(cell, shape, train, n)
  stats = time_interleaved({k: c.run for k, c in cands.items()}, rounds, max_seconds, warmup)
  flops = shape.flops(cell, train)
  out = {}
  for k, c in cands.items():
    s = stats[k]
    out[k] = {**s, 'gflops': flops / (s['median_ms'] * 1e6), 'compile_s': c.compile_s,
              'first_step_s': c.first_step_s}
  label = f'{cell if cell != "lstm" or not variant else f"lstm {variant}"}'
  return {'case': f'{label} {"train" if train else "forward"}', 'cell': cell,
          'variant': variant, 'train': train, 'warmup': warmup,
          'shape': dataclasses.asdict(shape),
          'flops': flops, 'candidates': out}


def matmul_case(n: int, rounds: int) -> dict[str, Any]:
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)).astype(np.float32))
  exe, _ = _compiled(lambda a, b: a @ b, a, a)
  exe(a, a).block_until_ready()
  s = time_interleaved({'matmul': lambda: exe(a, a).block_until_ready()}, rounds)['matmul']
  return {'case': f'matmul {n}', 'n': n, **s, 'gflops': 2 * n ** 3 / (s['median_ms'] * 1e6)}


def population_case(shape: Shape, members: list[int], rounds: int, cell: str = 'lstm',
                    label: str = 'small', max_seconds: float | None = None) -> list[dict]:
  """K members as one vmapped (and, with several devices, sharded) step vs K one-by-one."""
  model = LastStepClassifier(cell, shape.hidden, shape.classes, True,
                             {'variant': 'standard'} if cell == 'lstm' else None)
  init, step = make_train_step(model)
  x1, y1 = (jnp.asarray(a) for a in _data(shape))
  single_state = [jax.jit(init)(jax.random.PRNGKey(0), x1)]
  single, single_compile = _compiled(step, single_state[0], x1, y1)

  def one():
    single_state[0], loss = single(single_state[0], x1, y1)
    return loss

  devices = jax.devices()
  out = []
  for K in members:
    xs, ys = (jnp.asarray(a) for a in _data(shape, members=K))
    keys = jax.random.split(jax.random.PRNGKey(1), K)
    states = jax.jit(jax.vmap(init))(keys, xs)
    vstep = jax.vmap(step)
    fns: dict[str, Callable] = {}
    info: dict[str, Any] = {}

    def add(name, state, x, y):
      exe, compile_s = _compiled(vstep, state, x, y)
      box = [state]

      def run():
        box[0], loss = exe(box[0], x, y)
        loss.block_until_ready()
      run()
      fns[name] = run
      info[name] = compile_s

    add('vmapped', states, xs, ys)
    d = max(i for i in range(1, len(devices) + 1) if K % i == 0)
    if d > 1:
      mesh = jax.sharding.Mesh(np.array(devices[:d]), ('member',))
      shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('member'))
      put = lambda t: jax.device_put(t, shard)
      add(f'vmapped, sharded over {d} devices', put(states), put(xs), put(ys))

    def one_by_one():
      loss = None
      for _ in range(K):
        loss = one()
      loss.block_until_ready()
    fns['one-by-one'] = one_by_one
    stats = time_interleaved(fns, rounds, max_seconds)
    base = stats['one-by-one']['median_ms']
    for name, s in stats.items():
      out.append({'case': f'population {label}', 'members': K, 'how': name,
                  'shape': dataclasses.asdict(shape), **s,
                  'member_steps_per_s': K / (s['median_ms'] / 1e3),
                  'speedup': base / s['median_ms'],
                  'compile_s': info.get(name, single_compile)})
  return out


def environment() -> dict[str, Any]:
  env = {'load_avg': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
         'cpu_count': os.cpu_count(), 'machine': platform.machine(),
         'processor': platform.processor(), 'python': platform.python_version(),
         'jax': jax.__version__, 'jaxlib': jax.lib.__version__ if hasattr(jax.lib, '__version__')
         else None, 'backend': jax.default_backend(),
         'devices': [str(d) for d in jax.devices()], 'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
         'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY')}
  import flax
  env['flax'] = flax.__version__
  if torch_available():
    import torch
    env['torch'] = torch.__version__
  return env
