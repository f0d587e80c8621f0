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
* ``programs`` (`programs_case`): a population whose members differ in
  structure (LSTM variant x hidden size x seeds) trained by `research.train`'s
  jitted epoch as ONE program (`research.structure`: mixed cell, widest
  shapes), against one program per distinct structure (a population of its
  seeds each, run one after another), and against the partition that
  `research.structure.program_groups` picks with the cost model. Every
  candidate trains every member for the same epochs, so the benchmark also
  checks that each member's losses agree between the ways.
* ``calibrate`` (`calibrate_case`): fits the cost model's
  ``step_overhead_s`` and ``flops_per_s`` (`research.structure.COST`) to the
  seconds per step of programs of K = 1, 2, 4, ... members of one structure at
  a few widths (and, per width, the same fit on that width's points alone).
* ``stream`` (`stream_case`): one config's training epoch with the training
  split on the device against the same epoch streamed from host memory
  (``data.stream``, `research.stream`); examples per second of each, their
  ratio, and a check that both end bit-identical.

GFLOP/s counts the matmuls only: forward ``2 T B (D + H) G H`` for G gate blocks
(LSTM 4, GRU 3, Elman 1) plus the head; a training step is 3x the forward
(the backward pass costs two matmuls per forward matmul).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
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


# ---- programs: members of different structure as one program or as several ----

VARIANT_KEY = 'model.rnn.cell_options.variant'
HIDDEN_KEY = 'model.rnn.hidden'
PROGRAM_VARIANTS = ('vanilla', 'NIG', 'NFG', 'NOG', 'NIAF', 'NOAF', 'NP', 'CIFG')
PROGRAM_DATA = ('copy', 'music')
PROGRAM_CANDIDATES = ('mixed', 'cost', 'fitted', 'grouped', 'kinds')  # besides 'separate', always run
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class ProgramShape:
  """The task the programs train on. ``data='copy'``: the copy-memory task of
  ``configs/synthetic.py`` (10 one-hot inputs, a 9-class output at every step,
  sequences of ``length`` = T + 20 steps, ``batch * steps`` training sequences);
  ``'music'``: JSB Chorales (``configs/music.py``, the file at ``music_path``;
  88 inputs and outputs, sequences padded to the longest, its whole training
  split: ``length`` and ``steps`` are the data's)."""
  batch: int = 8
  length: int = 100
  steps: int = 10  # training steps per epoch
  data: str = 'copy'
  music_path: str = '../shared/data/JSB_Chorales.mat'


def program_base_config(shape: ProgramShape):
  """The LSTM config every program of the ``programs`` and ``calibrate`` cases
  starts from (population and structure are set per program)."""
  from research import cli
  if shape.data == 'copy':
    if shape.length < 21:
      raise ValueError(f'the copy task needs length >= 21 (T + 20 with T >= 1), got '
                       f'{shape.length}')
    c = cli.load_config(os.path.join(_REPO, 'configs', 'synthetic.py'),
                        f'task=copy,cell=lstm,T={shape.length - 20}')
    c.data.num_train = shape.batch * shape.steps
    c.data.num_val = c.data.num_test = shape.batch
  elif shape.data == 'music':
    c = cli.load_config(os.path.join(_REPO, 'configs', 'music.py'), 'cell=lstm')
    c.data.path = shape.music_path
  else:
    raise ValueError(f'unknown program data {shape.data!r}; allowed: {", ".join(PROGRAM_DATA)}')
  c.train.batch_size = shape.batch
  c.train.eval_batch_size = shape.batch
  c.train.progress = False
  c.train.patience = 0
  return c


def program_config(base, members: list[dict[str, Any]]):
  """``base`` with ``members`` (dicts of seed and structural keys) as its
  population: a key all members share is set in the config itself (so that the
  program is that structure's own), the others in a zip population."""
  import ml_collections

  from research import configlib, population
  c = ml_collections.ConfigDict(base.to_dict())
  spec = []
  for k in members[0]:
    values = [m[k] for m in members]
    if k != 'seed' and len({tuple(v) if isinstance(v, list) else v for v in values}) == 1:
      configlib.set_path(c, k, values[0])
    else:
      spec.append(f'{k}=' + ','.join(population.format_value(v) for v in values))
  c.population = ' '.join(spec)
  c.population_mode = 'zip'
  return c


def kind_name(kind: dict[str, Any]) -> str:
  from research import population
  return ','.join(population.format_value(v) for v in kind.values())


@dataclasses.dataclass
class Program:
  """One compiled training epoch of a population (`research.train.Setup`)."""
  name: str
  members: list[dict[str, Any]]
  n_shards: int
  steps: int  # per epoch
  flops: float  # `research.structure.padded_flops` of a member-step
  setup_s: float  # setup + initial state (the init programs' compilation included)
  compile_s: float  # lowering + compilation of the epoch
  first_epoch_s: float  # the first call after compilation (untimed)
  run: Callable[[], None]  # one epoch, blocking until done
  epoch_losses: Callable[[], np.ndarray]  # the last epoch's mean training loss per member
  first_losses: np.ndarray  # (members, steps): every step's loss in the first epoch
  times: list[float] = dataclasses.field(default_factory=list)  # wall s of each timed call
  inner_groups: list[list[int]] | None = None  # train.groups: member indices of each group


def build_program(base, members: list[dict[str, Any]], name: str = '',
                  groups: str = 'none') -> Program:
  """Sets up, initialises and compiles the epoch of ``members``' program and runs
  it once (the runs the benchmark times come after). ``groups``: its
  ``train.groups`` (`research.groups`)."""
  from research import groups as groups_lib, structure, train
  cfg = program_config(base, members)
  cfg.train.groups = groups
  t0 = time.perf_counter()
  run = train.setup(cfg)
  state = run.init_state()
  jax.block_until_ready(state)
  setup_s = time.perf_counter() - t0
  got = [m['seed'] for m in run.members]
  if got != [m['seed'] for m in members]:
    raise AssertionError(f'{name}: population expanded to seeds {got}, not as given')
  exe, compile_s = _timed_compile(run.trainer.train_epoch, state, run.hp, run.train_data)
  box = {'state': state, 'metrics': None}

  def one_epoch():
    box['state'], box['metrics'] = exe(box['state'], run.hp, run.train_data)
    jax.block_until_ready(box['metrics']['loss'])

  t0 = time.perf_counter()
  one_epoch()
  first = time.perf_counter() - t0
  first_losses = np.asarray(box['metrics']['loss'], np.float64)
  keys = [k for k in members[0] if k != 'seed']
  flops = structure.padded_flops(cfg, [{k: m[k] for k in keys} for m in members],
                                 run.dataset, keys)
  inner = ([[int(i) for i in g.ids] for g in run.trainer.groups]
           if isinstance(run.trainer, groups_lib.Grouped) else None)
  return Program(name, members, run.n_shards, run.trainer.steps_per_epoch, flops, setup_s,
                 compile_s, first, one_epoch,
                 lambda: np.asarray(box['metrics']['loss'], np.float64).mean(axis=1),
                 first_losses, inner_groups=inner)


def _timed_compile(jitted, *args):
  t0 = time.perf_counter()
  exe = jitted.lower(*args).compile()
  return exe, time.perf_counter() - t0


def _run_all(programs: list[Program]) -> Callable[[], None]:
  def run():
    for p in programs:
      t0 = time.perf_counter()
      p.run()
      p.times.append(time.perf_counter() - t0)
  return run


@contextlib.contextmanager
def cost_constants(constants: dict[str, float] | None, backend: str | None = None):
  """`research.structure.COST` of ``backend`` (default: JAX's) replaced by
  ``constants`` inside the block (None: unchanged)."""
  from research import structure
  backend = backend or jax.default_backend()
  old = structure.COST.get(backend)
  if constants is not None:
    structure.COST[backend] = dict(constants)
  try:
    yield
  finally:
    if constants is not None:
      if old is None:
        structure.COST.pop(backend, None)
      else:
        structure.COST[backend] = old


class KindFlops:
  """``padded_flops(kind indices)`` for `research.structure.program_groups`:
  a member-step's FLOPs in the program holding those kinds (cached by the
  program's model)."""

  def __init__(self, base, kinds: list[dict[str, Any]], dataset):
    self.base, self.kinds, self.dataset = base, kinds, dataset
    self.keys = list(kinds[0])
    self._cache: dict[str, float] = {}

  def __call__(self, idx: list[int]) -> float:
    from research import structure
    members = [self.kinds[i] for i in idx]
    model, _ = structure.program_model(self.base, members, self.keys)
    key = model.to_json_best_effort(sort_keys=True)
    if key not in self._cache:
      self._cache[key] = structure.padded_flops(self.base, members, self.dataset, self.keys)
    return self._cache[key]


def predicted_epoch_s(groups: list[list[int]], counts: list[int], flops: KindFlops,
                      steps: int, devices: int) -> float:
  """The cost model's seconds per epoch of ``groups``' programs run one after another."""
  from research import structure
  return steps * sum(structure.program_cost([flops(g)] * sum(counts[i] for i in g), devices)
                     for g in groups)


def product_kinds(variants: list[str], hiddens: list[int]) -> list[dict[str, Any]]:
  """Every (LSTM variant, hidden size) pair as a member kind for `programs_case`."""
  return [{VARIANT_KEY: v, HIDDEN_KEY: int(h)} for v in variants for h in hiddens]


def programs_case(shape: ProgramShape, kinds: list[dict[str, Any]], seeds: int, rounds: int,
                  max_seconds: float | None = None, warmup: int = 0,
                  fitted: dict[str, float] | None = None, rtol: float = 1e-4,
                  candidates: tuple[str, ...] = PROGRAM_CANDIDATES) -> dict[str, Any]:
  """A mixed-structure population as one program vs one program per structure.

  Members: each kind (a dict of structural keys -> values, e.g. from
  `product_kinds`) x ``seeds`` seeds (0, 1, ...). Candidates, each
  training every member one epoch per call (`time_interleaved`, the first
  epoch after compilation untimed): ``mixed`` (one program), ``separate``
  (one program per kind, each a population of its seeds, one after another),
  ``cost model`` (`research.structure.program_groups` under the current
  `research.structure.COST`), given ``fitted`` constants ``cost model
  (fitted)``, and ``grouped`` (one program, ``train.groups='cost'``: the cost
  model's groups of kinds inside it, each at its own shapes; `research.groups`)
  and ``kinds`` (one program, ``train.groups='kinds'``: every kind at its own
  shapes); a padded partition equal to an earlier candidate's is not built or
  timed again. ``candidates``: which of ``mixed``, ``cost``, ``fitted`` (it
  needs ``fitted``), ``grouped`` and ``kinds`` run besides ``separate``.

  Losses: every member's loss at each step of its first epoch must equal, to
  relative ``rtol``, its loss in ``separate`` (``losses_match``; the first
  step's loss is that of its initial parameters: the embedding is exact). The
  members' last-epoch mean losses are compared too (``loss_last_*``), without a
  threshold: the programs' float rounding differs (other batched kernels, the
  mixed cell), and Adam, which divides by the gradient's size, turns rounding
  in near-zero gradients into step-size changes, so differences grow with
  every epoch trained, fastest for the variants whose cell state is unbounded
  (NFG, NOAF)."""
  check_choices('programs candidate', list(candidates), PROGRAM_CANDIDATES)
  from research import structure
  from research.data import load_dataset
  base = program_base_config(shape)
  if len({tuple(k) for k in kinds}) != 1:
    raise ValueError('every kind must set the same structural keys')
  counts = [seeds] * len(kinds)
  dataset = load_dataset(base.data)
  devices = jax.device_count()
  kflops = KindFlops(base, kinds, dataset)
  partitions = {'separate': [[i] for i in range(len(kinds))]}
  if 'mixed' in candidates:
    partitions['mixed'] = [list(range(len(kinds)))]
  if 'cost' in candidates:
    partitions['cost model'] = structure.program_groups(kinds, counts, kflops, devices)
  if fitted is not None and 'fitted' in candidates:
    with cost_constants(fitted):
      partitions['cost model (fitted)'] = structure.program_groups(kinds, counts, kflops,
                                                                   devices)
  inside = {'grouped': 'cost', 'kinds': 'kinds'}  # one program, train.groups=<value>
  for name in inside:
    if name in candidates:
      partitions[name] = [list(range(len(kinds)))]
  same_as: dict[str, str] = {}
  seen: dict[tuple, str] = {}
  for name, groups in partitions.items():
    key = (inside.get(name),) + tuple(sorted(tuple(sorted(g)) for g in groups))
    if key in seen:
      same_as[name] = seen[key]
    else:
      seen[key] = name
  programs: dict[str, list[Program]] = {}
  for name, groups in partitions.items():
    if name in same_as:
      continue
    programs[name] = []
    for g in groups:
      members = [{'seed': s, **kinds[i]} for i in g for s in range(seeds)]
      label = ' + '.join(kind_name(kinds[i]) for i in g)
      programs[name].append(build_program(base, members, label, inside.get(name, 'none')))
      logging.info('programs %s: built %s (%d members, setup %.1f s, compile %.1f s)', name,
                   label, len(members), programs[name][-1].setup_s,
                   programs[name][-1].compile_s)
  stats = time_interleaved({k: _run_all(v) for k, v in programs.items()}, rounds, max_seconds,
                           warmup)
  K = len(kinds) * seeds
  steps = programs['separate'][0].steps
  ref = _losses_by_member(programs['separate'], last=True)
  ref_first = _losses_by_member(programs['separate'], last=False)
  out = {}
  for name, groups in partitions.items():
    if name in same_as:
      out[name] = {**out[same_as[name]], 'same_as': same_as[name]}
      continue
    s = stats[name]
    progs = programs[name]
    first = _compare(_losses_by_member(progs, last=False), ref_first)
    last = _compare(_losses_by_member(progs, last=True), ref)
    row = {**{k: v for k, v in s.items() if k != 'wall_ms'},
           'programs': len(progs),
           'groups': [[kind_name(kinds[i]) for i in g] for g in groups],
           'member_steps_per_s': K * steps / (s['median_ms'] / 1e3),
           'setup_s': sum(p.setup_s for p in progs),
           'compile_s': sum(p.compile_s for p in progs),
           'first_epoch_s': sum(p.first_epoch_s for p in progs),
           # grouped: its groups cost what the cost model's padded programs do, per step
           'predicted_ms': 1e3 * predicted_epoch_s(
               structure.program_groups(kinds, counts, kflops, devices) if name == 'grouped'
               else [[i] for i in range(len(kinds))] if name == 'kinds' else groups,
               counts, kflops, steps, devices),
           'program_rows': [{'program': p.name, 'members': len(p.members),
                             'devices': p.n_shards, 'flops': p.flops,
                             'median_ms': 1e3 * statistics.median(p.times),
                             'compile_s': p.compile_s,
                             **({'inner_groups': [sorted({kind_name({k: p.members[i][k]
                                                                     for k in kinds[0]})
                                                          for i in g})
                                                  for g in p.inner_groups]}
                                if p.inner_groups else {})} for p in progs],
           'loss_max_abs_diff': first['max_abs'], 'loss_max_rel_diff': first['max_rel'],
           'loss_worst_member': first['worst'],
           'loss_last_max_abs_diff': last['max_abs'], 'loss_last_max_rel_diff': last['max_rel'],
           'loss_last_worst_member': last['worst'],
           'losses_match': bool(first['max_rel'] <= rtol)}
    if fitted is not None:
      with cost_constants(fitted):
        row['predicted_fitted_ms'] = 1e3 * predicted_epoch_s(groups, counts, kflops, steps,
                                                             devices)
    out[name] = row
  base_ms = out['separate']['median_ms']
  for row in out.values():
    row['speed_vs_separate'] = base_ms / row['median_ms']
  return {'case': 'programs', 'shape': dataclasses.asdict(shape), 'kinds': len(kinds),
          'seeds': seeds, 'members': K, 'steps_per_epoch': steps, 'devices': devices,
          'kind_names': [kind_name(k) for k in kinds], 'kind_keys': list(kinds[0]),
          'cost': dict(structure.COST.get(jax.default_backend(), structure.COST['default'])),
          'fitted_cost': fitted, 'rtol': rtol, 'rounds': stats['separate']['rounds'],
          'warmup': warmup,
          'losses_match': all(r['losses_match'] for r in out.values()),
          'candidates': out}


def _losses_by_member(programs: list[Program], last: bool) -> dict[str, np.ndarray]:
  """Member name -> its last epoch's mean loss (``last``) or its first epoch's
  per-step losses."""
  out = {}
  for p in programs:
    losses = p.epoch_losses() if last else p.first_losses
    for m, loss in zip(p.members, losses):
      out[kind_name(m)] = np.atleast_1d(np.asarray(loss, np.float64))
  return out


def _compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
  if set(got) != set(ref):
    raise AssertionError(f'members differ: {sorted(set(got) ^ set(ref))}')
  worst, max_abs, max_rel = None, 0.0, 0.0
  for k in ref:
    d = np.abs(got[k] - ref[k])
    r = float(np.max(d / np.maximum(np.abs(ref[k]), 1e-12)))
    max_abs = max(max_abs, float(d.max()))
    if worst is None or r > max_rel:
      worst, max_rel = k, r
  return {'max_abs': max_abs, 'max_rel': max_rel, 'worst': worst}


def calibrate_case(shape: ProgramShape, hiddens: list[int], counts: list[int], rounds: int,
                   max_seconds: float | None = None, warmup: int = 0) -> dict[str, Any]:
  """Fits seconds per step = step_overhead_s + members per device x flops / flops_per_s.

  One program per (hidden, K): K seeds of the config's LSTM (one structure,
  no mixing), its members sharded as `research.train` shards them (members per
  device = K / the devices used); flops = `research.structure.padded_flops` of
  a member-step. Seconds per step: the median epoch time (`time_interleaved`
  over all programs) / steps per epoch. Ordinary least squares on all points."""
  base = program_base_config(shape)
  progs = []
  for h in hiddens:
    for K in counts:
      members = [{'seed': s, HIDDEN_KEY: int(h)} for s in range(K)]
      progs.append(build_program(base, members, f'hidden={h} K={K}'))
      logging.info('calibrate: built %s (setup %.1f s, compile %.1f s)', progs[-1].name,
                   progs[-1].setup_s, progs[-1].compile_s)
  stats = time_interleaved({p.name: p.run for p in progs}, rounds, max_seconds, warmup)
  points = []
  for p in progs:
    s = stats[p.name]
    per_device = len(p.members) / p.n_shards
    points.append({'program': p.name, 'hidden': int(p.members[0][HIDDEN_KEY]),
                   'members': len(p.members), 'devices': p.n_shards,
                   'members_per_device': per_device, 'flops': p.flops,
                   'step_s': s['median_ms'] / 1e3 / p.steps, 'epoch_median_ms': s['median_ms'],
                   'epoch_min_ms': s['min_ms'], 'rounds': s['rounds'],
                   'compile_s': p.compile_s})
  fit = fit_cost(points)
  per_width = {}
  for h in hiddens:
    pts = [pt for pt in points if pt['hidden'] == int(h)]
    if len({pt['members_per_device'] for pt in pts}) > 1:
      f = fit_cost(pts)
      per_width[str(h)] = {k: f[k] for k in ('step_overhead_s', 'flops_per_s', 'r2')}
  for pt in points:
    pt['fitted_step_s'] = fit['step_overhead_s'] + (
        pt['members_per_device'] * pt['flops'] / fit['flops_per_s'])
  return {'case': 'calibrate', 'shape': dataclasses.asdict(shape), 'backend':
          jax.default_backend(), 'devices': jax.device_count(), 'warmup': warmup,
          'points': points, 'per_width': per_width, **fit}


def fit_cost(points: list[dict[str, Any]]) -> dict[str, Any]:
  """Fits ``step_s = step_overhead_s + members_per_device * flops / flops_per_s``
  (the form of `research.structure.program_cost`) by least squares on the
  *relative* residuals (each point weighted by 1 / its time: the points span
  more than an order of magnitude, and the cost model compares programs by
  ratio). ``paste`` is the line for `research.structure.COST`; a negative
  intercept is reported as fitted (``negative_overhead``) and pasted as 0.

  ``with_member_overhead``: the same fit with a third term, a fixed cost per
  member-step (``members_per_device * member_step_s``: the per-member small
  ops that do not scale with the parameter count), which the cost model does
  not have; reported to show how much of the residual it explains."""
  n = np.array([p['members_per_device'] for p in points], np.float64)
  x = n * np.array([p['flops'] for p in points], np.float64)
  y = np.array([p['step_s'] for p in points], np.float64)
  if len(points) < 2 or np.ptp(x) == 0:
    raise ValueError('the cost fit needs points of at least two different member x flops '
                     'products (several member counts or widths)')

  def lsq(columns):
    A = np.stack(columns, axis=1)
    coef, *_ = np.linalg.lstsq(A / y[:, None], np.ones_like(y), rcond=None)
    pred = A @ coef
    return coef, pred, float(np.max(np.abs(y - pred) / y))

  (a, b), pred, worst = lsq([np.ones_like(x), x])
  r2 = 1.0 - float(np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-30))
  overhead = max(float(a), 0.0)
  flops_per_s = float(1.0 / b) if b > 0 else float('inf')  # no slope: time did not grow
  backend = jax.default_backend()
  rate = f'{flops_per_s:.1e}' if math.isfinite(flops_per_s) else "float('inf')"
  out = {'step_overhead_s': float(a), 'flops_per_s': flops_per_s, 'r2': r2,
         'negative_overhead': bool(a < 0), 'max_rel_residual': worst,
         'constants': {'step_overhead_s': float(f'{overhead:.2e}'),
                       'flops_per_s': float(f'{flops_per_s:.2e}')},
         'paste': f"'{backend}': dict(step_overhead_s={overhead:.1e}, "
                  f"flops_per_s={rate}),",
         'with_member_overhead': None}
  if len(points) >= 3 and np.linalg.matrix_rank(np.stack([np.ones_like(x), n, x], 1)) == 3:
    (a3, m3, b3), _, worst3 = lsq([np.ones_like(x), n, x])
    out['with_member_overhead'] = {
        'step_overhead_s': float(a3), 'member_step_s': float(m3),
        'flops_per_s': float(1.0 / b3) if b3 > 0 else float('inf'),
        'max_rel_residual': worst3}
  return out


# ---- streamed against device-resident input (`research.stream`) ----

STREAM_CONFIG = 'configs/mnist1d.py:model=cnn'


def epoch_case(config: str, arms: dict[str, dict[str, Any]], rounds: int = 10,
               max_seconds: float | None = None, overrides: dict[str, Any] | None = None
               ) -> dict[str, Any]:
  """One config's training epoch under each arm's dotted config values (``arms``:
  name -> values; the first is the reference), interleaved in this process: each
  round runs one epoch of each, waited for as the training loop waits
  (``block_until_ready``); the first epoch of each (compilation) is untimed. All
  arms start from the same initial state and run the same epochs; ``equal`` says
  whether their final states are bit-identical and ``max_rel_diff`` how far the
  parameters are apart. ``config``: ``path[:arg]``; ``overrides``: dotted keys
  set on every arm (e.g. ``{'data.num_samples': 500}``)."""
  from research import cli, configlib, train
  path, _, arg = config.partition(':')
  progs, fns = {}, {}
  for name, values in arms.items():
    c = cli.load_config(path if os.path.isabs(path) else os.path.join(_REPO, path), arg or None)
    configlib.with_values(c, {'train.progress': False, **(overrides or {}), **values})
    t0 = time.perf_counter()
    run = train.setup(c)
    box = {'state': run.init_state(), 'metrics': None}
    jax.block_until_ready(box['state'])
    setup_s = time.perf_counter() - t0

    def one_epoch(run=run, box=box):
      box['state'], box['metrics'] = run.trainer.train_epoch(box['state'], run.hp,
                                                              run.train_data)
      jax.block_until_ready((box['state'].step, box['metrics']))

    t0 = time.perf_counter()
    one_epoch()
    first = time.perf_counter() - t0
    progs[name] = {'run': run, 'box': box, 'setup_s': setup_s, 'first_epoch_s': first}
    fns[name] = one_epoch
  timing = time_interleaved(fns, rounds, max_seconds)
  ref_name = next(iter(arms))
  res = progs[ref_name]['run']
  t = res.trainer
  examples = len(res.members) * t.steps_per_epoch * t.batch_size
  candidates = {}
  host = {name: jax.device_get(p['box']) for name, p in progs.items()}
  ref_state = jax.tree.leaves(host[ref_name])
  ref_params = jax.tree.leaves(host[ref_name]['state'].params)
  for name, p in progs.items():
    s = timing[name]
    state = jax.tree.leaves(host[name])
    params = jax.tree.leaves(host[name]['state'].params)
    diff = max(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30))
               for a, b in zip(ref_params, params))
    candidates[name] = {'median_ms': s['median_ms'], 'min_ms': s['min_ms'],
                        'cpu_ms': s['cpu_ms'], 'rounds': s['rounds'],
                        'examples_per_s': examples / (s['median_ms'] / 1e3),
                        'setup_s': p['setup_s'], 'first_epoch_s': p['first_epoch_s'],
                        'mesh': p['run'].layout.record(),
                        'equal': len(state) == len(ref_state) and all(
                            np.array_equal(np.asarray(x), np.asarray(y))
                            for x, y in zip(ref_state, state)),
                        'max_rel_diff': diff}
  return {'config': config, 'overrides': dict(overrides or {}), 'members': len(res.members),
          'steps_per_epoch': t.steps_per_epoch, 'batch_size': t.batch_size,
          'train_examples': t.n_train, 'candidates': candidates,
          'epochs_each': 1 + timing[ref_name]['rounds'], '_progs': progs}


def stream_case(config: str = STREAM_CONFIG, rounds: int = 10, chunk: int = 0,
                max_seconds: float | None = None, overrides: dict[str, Any] | None = None
                ) -> dict[str, Any]:
  """`epoch_case` with the split on the device (``data.stream=False``) and streamed
  from the host (``True``, `research.stream`); their final states must be
  bit-identical (``equal``)."""
  out = epoch_case(config, {'resident': {'data.stream': False, 'data.stream_chunk': chunk},
                            'streamed': {'data.stream': True, 'data.stream_chunk': chunk}},
                   rounds, max_seconds, overrides)
  progs, c = out.pop('_progs'), out['candidates']
  res = progs['resident']['run']
  return {'case': f'stream {res.config.experiment}', **out,
          'chunk': progs['streamed']['run'].trainer.stream_chunk, 'mesh': res.layout.record(),
          'ratio': c['streamed']['examples_per_s'] / c['resident']['examples_per_s'],
          'equal': bool(c['streamed']['equal'])}


DATA_PARALLEL_CONFIG = 'configs/mnist1d.py:model=cnn'


def data_parallel_case(config: str = DATA_PARALLEL_CONFIG, rounds: int = 10,
                       max_seconds: float | None = None,
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """`epoch_case` of one member with its batch on one device (``train.data_parallel=1``)
  against its batch split over every device (``= len(jax.devices())``, the mesh's
  data axis); headline ``ratio``: split / one device examples per second. Their
  states agree to float rounding (the order of the batch sums differs)."""
  n = len(jax.devices())
  over = {'population': '', **(overrides or {})}
  out = epoch_case(config, {'one_device': {'train.data_parallel': 1},
                            f'data_{n}': {'train.data_parallel': n}},
                   rounds, max_seconds, over)
  progs, c = out.pop('_progs'), out['candidates']
  return {'case': f'data_parallel {progs["one_device"]["run"].config.experiment}', **out,
          'devices': n, 'ratio': c[f'data_{n}']['examples_per_s'] / c['one_device']['examples_per_s'],
          'max_rel_diff': c[f'data_{n}']['max_rel_diff']}
