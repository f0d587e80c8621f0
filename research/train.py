"""The one training loop: ``train_and_evaluate(config, workdir)``.

A run trains a *population* of K members (K >= 1) that differ in numeric
hyperparameters (seed, learning rate, weight decay, clip norm, loss weights;
see `research.population`) and possibly in structure: LSTM variant, widths,
optimizer rule (`research.structure`: the program runs the widest, mixed
model; members are embedded in it and masked). Every piece of state carries a
leading member axis, and the per-member functions below are ``jax.vmap``-ed
over it and jitted once:

* ``train_step(state, batch, hp) -> (state, metrics)``: one optimizer step;
  a member whose loss or parameters become non-finite is frozen at its last
  finite state and flagged (the others train on).
* ``train_epoch``: one ``lax.scan`` over the batches of a fresh per-member
  shuffle of the device-resident training split: one dispatch per epoch.
* ``evaluate``: a ``lax.scan`` over fixed-size batches of a split, padded
  examples weighted by zero.
* ``update_best``: keeps each member's best parameters by the validation
  metric (never the test split) and stops members that stopped improving.

The Python loop around them evaluates, logs (``metrics.jsonl``, TensorBoard),
checkpoints (Orbax) and resumes. With several devices the program runs on a
2-D mesh (`research.mesh`): the member axis is sharded over the ``member``
devices and each member's batch over the ``data`` devices.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research import checkpoint as ckpt_lib
from research import augment, configlib, distributed, errors, mesh as mesh_lib, optim
from research import groups as groups_lib
from research import pbt as pbt_lib
from research import population, provenance
from research import pruning, results
from research import structure as structure_lib
from research.data import Dataset, load_dataset
from research.models import build_model
from research.tasks import Task, make_task, mean_over_batch


class DivergenceError(RuntimeError):
  """Raised when every member of a run has diverged (for K = 1: the run)."""


@flax.struct.dataclass
class MemberState:
  step: jnp.ndarray
  params: Any
  model_state: Any  # non-parameter collections (e.g. batch_stats); {} if none
  opt_state: Any
  rng: jnp.ndarray
  # divergence
  diverged: jnp.ndarray
  diverged_step: jnp.ndarray
  last_finite_loss: jnp.ndarray
  # model selection and early stopping
  active: jnp.ndarray
  best_metric: jnp.ndarray
  best_epoch: jnp.ndarray
  bad_evals: jnp.ndarray
  best_params: Any
  best_model_state: Any


def _masked(tree, mask):
  return jax.tree.map(lambda x, m: jnp.where(m > 0, x, jnp.zeros_like(x)), tree, mask)


def _all_finite(tree) -> jnp.ndarray:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class Trainer:
  """Holds the jitted, vmapped functions for one model/task/optimizer."""

  def __init__(self, config: ml_collections.ConfigDict, dataset: Dataset,
               members: list[dict[str, Any]], task: Task,
               plan: structure_lib.Plan | None = None,
               layout: mesh_lib.Layout = mesh_lib.NONE):
    self.config = config
    self.layout = layout
    self.task = task
    self.members = members
    self.plan = plan
    # With varied structure the program runs the population's widest, mixed model.
    self.model = build_model(plan.model_config if plan else config.model, dataset.info)
    self.masked = plan is not None and plan.mixes_model
    rules = plan.rules if plan is not None else None
    n_train = len(dataset.train['x'])
    self.batch_size = int(config.train.batch_size)
    self.steps_per_epoch = n_train // self.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f'train.batch_size={self.batch_size} exceeds the {n_train} '
                       'training examples')
    self.total_steps = self.steps_per_epoch * int(config.train.epochs)
    self.tx = optim.build_optimizer(
        config.optim, self.total_steps,
        clip=any(m['optim.clip_norm'] > 0 for m in members),
        decay=any(m['optim.weight_decay'] > 0 for m in members),
        momentum=any(m['optim.momentum'] > 0 for m in members),
        steps_per_epoch=self.steps_per_epoch, rules=rules)
    self.multiplier = (optim.schedule_multipliers(config.optim, self.total_steps, rules)
                       if rules else optim.schedule_multiplier(config.optim, self.total_steps))
    self.sample = {k: jnp.asarray(v[:1]) for k, v in dataset.train.items()}
    self.maximize = task.select_mode == 'max'
    self.patience = int(config.train.patience)
    self.input_noise = any(m['train.input_noise'] > 0 for m in members)
    self.augment = augment.parse(config.train.get('augment', ''))

    # Members are initialised one after another (lax.map), not vmapped: under vmap the
    # orthogonal initialiser's QR becomes one batched LAPACK call, which on jaxlib 0.10
    # can deadlock XLA:CPU's thread pool (docs/known-problems.md). With XLA's default
    # optimisations the parameters are bit-identical either way, and equal to each
    # member's solo init (tests/test_init_workaround.py); init runs once per run.
    self.init = (self._init_embedded if self.masked else
                 jax.jit(lambda hp: jax.lax.map(self.init_member, hp)))
    vmap = layout.vmap  # the member axis is the mesh's 'member' axis
    self.train_epoch = jax.jit(vmap(self._train_epoch, in_axes=(0, 0, None)),
                               donate_argnums=0)
    self.evaluate = jax.jit(vmap(self._evaluate, in_axes=(0, 0, 0, None)))
    self.update_best = jax.jit(vmap(self._update_best, in_axes=(0, 0, None)))
    # data.stream: the training split stays on the host; `stream_epoch` replaces the
    # resident epoch and computes the same numbers (research/stream.py)
    self.n_train = n_train
    self.stream = bool(config.data.get('stream', False))
    if self.stream:
      from research import stream as stream_lib
      self.stream_chunk = stream_lib.chunk_size(
          self.steps_per_epoch, config.data.get('stream_chunk', 0) or 0,
          stream_lib.step_bytes(dataset.train, len(members), self.batch_size))
      self.shuffle = jax.jit(vmap(self._shuffle))
      self.train_chunk = jax.jit(vmap(self._train_chunk), donate_argnums=0)
      self.train_epoch = self.stream_epoch

  def for_rows(self, index) -> 'Trainer':
    """The epoch and evaluation functions for a population whose rows hold members
    ``index`` (after compaction): the same for every row set here; `research.groups`
    groups members by rows."""
    return self

  def rows_computed(self, live: np.ndarray) -> int:
    """Rows an epoch computes (every row: a stopped member's update is masked, not
    skipped; `research.groups` skips groups that all stopped)."""
    return len(live)

  def rows_kept(self, live: np.ndarray, shards: int) -> np.ndarray:
    """The rows a compaction keeps (sorted): the live ones, and as few stopped ones
    as make their count a multiple of ``shards``."""
    size = min(len(live), -(-int(live.sum()) // shards) * shards)
    return np.sort(np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)])[:size])

  # ---- per-member pure functions (vmapped above) ----

  def init_variables(self, model, seed) -> tuple[jnp.ndarray, dict]:
    """A member's rng and the variables ``model`` draws for it from its seed."""
    rng = jax.random.PRNGKey(seed)
    rng, init_rng, drop_rng = jax.random.split(rng, 3)
    extra = {'lengths': self.sample['lengths']} if 'lengths' in self.sample else {}
    variables = model.init({'params': init_rng, 'dropout': drop_rng},
                           self.sample['x'], train=False, **extra)
    return rng, variables

  def init_member(self, hp: dict[str, jnp.ndarray]) -> MemberState:
    rng, variables = self.init_variables(self.model, hp['seed'])
    return self.member_state(hp, rng, variables)

  def _init_embedded(self, hp: dict) -> MemberState:
    """Each member's variables drawn by its own (solo) model, embedded in the
    program's shapes (`research.structure.Plan.embed`)."""
    plan, K = self.plan, len(self.members)
    seeds = _host(hp['seed'])
    rngs, embedded = [None] * K, [None] * K
    kinds = [[i for i in range(K) if plan.member_kind[i] == kind]
             for kind in range(len(plan.own_models))]

    def draw(seeds_per_kind):  # one program for every kind: one compilation, not one per kind
      return [jax.lax.map(lambda x, model=model: self.init_variables(model, x), s)
              for model, s in zip(plan.own_models, seeds_per_kind)]
    drawn = jax.device_get(jax.jit(draw)([jnp.asarray(seeds[idx]) for idx in kinds]))
    for idx, (r, v) in zip(kinds, drawn):
      for j, i in enumerate(idx):
        rngs[i] = r[j]
        embedded[i] = plan.embed(i, jax.tree.map(lambda a: a[j], v))
    variables = jax.tree.map(lambda *xs: np.stack(xs), *embedded)
    return jax.jit(jax.vmap(self.member_state))(hp, jnp.asarray(np.stack(rngs)), variables)

  def member_state(self, hp: dict, rng: jnp.ndarray, variables: dict) -> MemberState:
    params = variables['params']
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    opt_state = optim.set_hparams(self.tx.init(params), hp)
    worst = -jnp.inf if self.maximize else jnp.inf
    return MemberState(
        step=jnp.int32(0), params=params, model_state=model_state, opt_state=opt_state,
        rng=rng, diverged=jnp.bool_(False), diverged_step=jnp.int32(-1),
        last_finite_loss=jnp.float32(jnp.nan), active=jnp.bool_(True),
        best_metric=jnp.float32(worst), best_epoch=jnp.int32(-1), bad_evals=jnp.int32(0),
        best_params=params, best_model_state=model_state)

  def _apply(self, params, model_state, batch, train: bool, rng=None):
    """Runs the model on ``batch['x']`` (and ``lengths`` for variable-length data)."""
    variables = {'params': params, **model_state}
    # 'sample': noise a model draws itself (a VAE's reparameterisation)
    rngs = ({'dropout': rng, 'sample': jax.random.fold_in(rng, 1)}
            if rng is not None else None)
    extra = {'lengths': batch['lengths']} if 'lengths' in batch else {}
    if train and model_state:
      return self.model.apply(variables, batch['x'], train=True, rngs=rngs,
                              mutable=list(model_state), **extra)
    return self.model.apply(variables, batch['x'], train=train, rngs=rngs, **extra), model_state

  def train_step(self, state: MemberState, batch: dict, hp: dict):
    rng, drop_rng, noise_rng = jax.random.split(state.rng, 3)
    if self.augment:
      batch = {**batch, 'x': augment.apply(jax.random.fold_in(noise_rng, 1), batch['x'],
                                           batch.get('lengths'), self.augment)}
    if self.input_noise and jnp.issubdtype(batch['x'].dtype, jnp.floating):
      noise = jax.random.normal(noise_rng, batch['x'].shape, batch['x'].dtype)
      batch = {**batch, 'x': batch['x'] + hp['train.input_noise'] * noise}

    def loss_fn(params):
      out, new_model_state = self._apply(params, state.model_state, batch, True, drop_rng)
      per = self.task.per_example(out, batch, {**hp, 'step': state.step})  # step: KL annealing
      metrics = mean_over_batch(per)
      return metrics['loss'], (metrics, new_model_state)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    if self.masked:  # padding and parameters a member lacks: no gradient, no update
      grads = _masked(grads, hp['_mask'])
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params, value=loss)
    if self.masked:
      updates = _masked(updates, hp['_mask'])
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['lr'] = optim.step_size(state.opt_state, self.multiplier, state.step)

    live = state.active & ~state.diverged
    finite = jnp.isfinite(loss) & _all_finite(params)
    ok = live & finite
    newly_diverged = live & ~finite
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    state = state.replace(
        step=state.step + ok.astype(jnp.int32),
        params=keep(params, state.params),
        model_state=keep(new_model_state, state.model_state),
        opt_state=keep(opt_state, state.opt_state),
        rng=rng,
        diverged=state.diverged | newly_diverged,
        diverged_step=jnp.where(newly_diverged, state.step, state.diverged_step),
        last_finite_loss=jnp.where(ok, loss, state.last_finite_loss))
    metrics['ok'] = ok
    return state, metrics

  def _shuffle(self, rng):
    """An epoch's shuffle: the member's rng after it and its (steps, bs) example order."""
    rng, perm_rng = jax.random.split(rng)
    steps, bs = self.steps_per_epoch, self.batch_size
    return rng, jax.random.permutation(perm_rng, self.n_train)[:steps * bs].reshape(steps, bs)

  def _train_epoch(self, state: MemberState, hp: dict, data: dict):
    rng, order = self._shuffle(state.rng)
    state = state.replace(rng=rng)

    def body(state, idx):
      # each member's batch is split over the mesh's data devices
      batch = self.layout.shard_batch({k: v[idx] for k, v in data.items()})
      return self.train_step(state, batch, hp)

    return jax.lax.scan(body, state, order)

  def _train_chunk(self, state: MemberState, hp: dict, batches: dict):
    """``train_step`` over a chunk of streamed batches (each leaf (chunk, bs, ...))."""
    def body(state, batch):
      return self.train_step(state, self.layout.shard_batch(batch), hp)

    return jax.lax.scan(body, state, batches)

  def stream_epoch(self, state: MemberState, hp: dict, data: dict):
    """`_train_epoch` with the training split ``data`` in host memory (NumPy):
    the same shuffle (`_shuffle`), batches gathered on the host and placed on the
    devices a chunk at a time, the next chunks prepared on a background thread
    while one trains (research/stream.py). Returns what the resident epoch
    returns: the state and (K, steps) arrays of per-step metrics."""
    from research import stream as stream_lib
    rng, orders = self.shuffle(state.rng)
    state = state.replace(rng=rng)
    orders = _host(orders)  # (K, steps, bs)
    device = None if self.layout.mesh is not None else next(iter(rng.devices()))
    bounds = stream_lib.chunk_bounds(self.steps_per_epoch, self.stream_chunk)
    metrics = []
    chunks = stream_lib.prefetch(
        lambda b: stream_lib.place(self.layout, data, orders[:, b[0]:b[1]], device), bounds)
    try:
      for batches in chunks:
        state, m = self.train_chunk(state, hp, batches)
        metrics.append(m)
    finally:
      chunks.close()
    if len(metrics) == 1:
      return state, metrics[0]
    return state, jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *metrics)

  def _evaluate(self, params, model_state, hp, data: dict):
    """Mean of every per-example value over the split (``data`` is batched
    (nb, ebs, ...) with a weight ``w`` that is 0 on padding)."""
    def body(acc, batch):
      batch = self.layout.shard_batch(batch, batch['w'].shape[0])
      out, _ = self._apply(params, model_state, batch, False)
      per = self.task.per_example(out, batch, hp)
      w = batch['w'] * per.pop('weight', 1.0)
      sums = {k: acc[k] + jnp.sum(v * w) for k, v in per.items()}
      return {**sums, '_total': acc['_total'] + jnp.sum(w)}, None

    out_shape = jax.eval_shape(
        lambda: self.task.per_example(
            self._apply(params, model_state, jax.tree.map(lambda v: v[0], data), False)[0],
            jax.tree.map(lambda v: v[0], data), hp))
    init = {k: jnp.float32(0.0) for k in out_shape if k != 'weight'}
    sums, _ = jax.lax.scan(body, {**init, '_total': jnp.float32(0.0)}, data)
    total = sums.pop('_total')
    return {k: v / total for k, v in sums.items()}

  def _update_best(self, state: MemberState, metric: jnp.ndarray, epoch: jnp.ndarray):
    better = metric > state.best_metric if self.maximize else metric < state.best_metric
    improved = better & state.active & ~state.diverged & jnp.isfinite(metric)
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(improved, a, b), new, old)
    bad = jnp.where(improved, 0, state.bad_evals + state.active.astype(jnp.int32))
    active = state.active
    if self.patience > 0:
      active = active & (bad < self.patience)
    return state.replace(
        best_params=pick(state.params, state.best_params),
        best_model_state=pick(state.model_state, state.best_model_state),
        best_metric=jnp.where(improved, metric, state.best_metric),
        best_epoch=jnp.where(improved, epoch, state.best_epoch),
        bad_evals=bad, active=active)


def batch_split(split: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads a split to whole batches: arrays become (nb, bs, ...), plus weights ``w``."""
  n = len(split['x'])
  bs = min(batch_size, n)
  nb = math.ceil(n / bs)
  pad = nb * bs - n
  out = {}
  for k, v in split.items():
    v = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) if pad else v
    out[k] = v.reshape((nb, bs) + v.shape[1:])
  out['w'] = (np.arange(nb * bs) < n).astype(np.float32).reshape(nb, bs)
  return out


def member_sharding(num_members: int):
  """(member sharding, replicated sharding) of a member-only mesh over as many
  devices as divide ``num_members`` ((None, None) on one device)."""
  layout = mesh_lib.make_layout(num_members, data_parallel=1)
  return layout.member, layout.replicated


# Keys that change nothing a run computes: a resumed run may set them differently.
# (data.stream: a streamed epoch computes what the device-resident one does, bit for bit)
RESUME_MAY_DIFFER = frozenset({'train.progress', 'train.watchdog_s', 'train.compact',
                               'data.stream', 'data.stream_chunk'})


def _check_config(workdir: Path, config: ml_collections.ConfigDict, has_checkpoint: bool) -> None:
  """Writes config.json, or checks that a resumed run has the same config.

  A workdir without a checkpoint holds no training to resume (e.g. a run that
  failed on bad input): its config.json is replaced by the new config. In a
  multi-process run process 0 does this."""
  if not distributed.is_writer():
    return
  path = workdir / 'config.json'
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    saved = json.loads(path.read_text())
    if saved == current:
      return
    a = configlib.flatten(ml_collections.ConfigDict(saved))
    b = configlib.flatten(ml_collections.ConfigDict(current))
    # A key the saved run lacks is an option added to the code since; at an 'off'
    # value (0, False, '', None) it computes what the saved run computed.
    added_off = {k for k in set(b) - set(a) if b[k] in (0, False, '', None)}
    diff = sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and k not in RESUME_MAY_DIFFER | added_off)
    if not diff:
      return
    if has_checkpoint:
      raise ValueError(
          f'{workdir} holds a run with a different config (keys differ: {diff}); '
          'use a new --workdir, or the same config to resume')
    logging.info('%s has no checkpoint: its config.json is replaced (keys changed: %s)',
                 workdir, diff)
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(current, indent=2))
  os.replace(tmp, path)


class _Logger:
  """metrics.jsonl (one object per member per evaluation) and TensorBoard: one run
  per member (``tensorboard/member_<i>/``, its hyperparameters in the HParams tab)."""

  def __init__(self, workdir: Path, resume_epoch: int, members: list[dict], varied: list[str]):
    self.path = workdir / 'metrics.jsonl'
    self.tb = []
    self.file = None
    if not distributed.is_writer():  # processes > 0 read process 0's file, write nothing
      return
    if self.path.exists():  # drop records written after the checkpoint we resume from
      lines = self.path.read_text().splitlines(keepends=True)
      kept = [l for l in lines if l.strip() and json.loads(l)['epoch'] <= resume_epoch]
      if kept != lines:
        self.path.write_text(''.join(l if l.endswith('\n') else l + '\n' for l in kept))
    self.file = self.path.open('a')
    try:
      from tensorboardX import SummaryWriter
      from tensorboardX.summary import hparams
    except ImportError:  # pragma: no cover
      return
    for i, m in enumerate(members):
      w = SummaryWriter(str(workdir / 'tensorboard' / f'member_{i}'))
      if resume_epoch == 0:
        shown = {k: (m[k] if isinstance(m[k], (int, float, str, bool)) else str(m[k]))
                 for k in (varied or list(m))}
        for summary in hparams(shown, {'hparam/best_selection_metric': 0.0}):
          w.file_writer.add_summary(summary)
      self.tb.append(w)

  def records(self) -> list[dict]:
    """The records kept so far (those of the epochs a resumed run restored)."""
    if self.file is not None:
      self.file.flush()
    if not self.path.exists():
      return []
    return [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]

  def write(self, records: list[dict]) -> None:
    if self.file is None:
      return
    for r in records:
      self.file.write(json.dumps(r) + '\n')
      if self.tb:
        w = self.tb[r['member']]
        for k, v in r.items():
          if '/' in k and isinstance(v, float) and math.isfinite(v):
            w.add_scalar(k, v, r['step'])
    self.file.flush()

  def close(self) -> None:
    closers = ([self.file.close] if self.file is not None else []) + [w.close for w in self.tb]
    for close in closers:  # a full disk fails each; one line each, not tracebacks
      try:
        close()
      except OSError as e:
        logging.warning('could not finish writing %s: %s', self.path.parent, e)


def _host(tree):
  return distributed.host(tree)  # gathers arrays sharded over several processes


class _StopSignals:
  """SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send before a kill) ask the
  loop to stop at its next safe point, after the epoch in flight: it saves a
  checkpoint and raises `errors.Interrupted`. A second Ctrl-C stops at once."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._old[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('%s received: stopping after the current epoch (checkpoint first)',
                    signal.Signals(signum).name)

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)


def _writer_thread_errors_logged() -> None:
  """A writer thread of TensorBoard or Orbax that dies of an OSError (a full disk)
  logs one line instead of a traceback: the main thread reports the failure itself.
  Installed once per process (such a thread can die after the run returned)."""
  old = threading.excepthook
  if getattr(old, '_research', False):
    return

  def hook(args):
    frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
    ours = any('tensorboardX' in f.filename or '/orbax/' in f.filename for f in frames)
    if ours and (issubclass(args.exc_type, OSError) or 'cannot schedule new futures' in
                 str(args.exc_value)):
      logging.warning('background writer stopped: %s', args.exc_value)
    else:
      old(args)

  hook._research = True
  threading.excepthook = hook


class _Progress:
  """A tqdm bar on a terminal; in a log file (stderr not a terminal) one line per
  evaluation instead of thousands of carriage returns. The bar starts after the
  first (compiling) epoch, so its rate and ETA are those of training."""

  def __init__(self, config, patience: int, eval_every: int):
    self.enabled = bool(config.train.progress) and distributed.is_writer()
    self.tty = self.enabled and sys.stderr.isatty()
    self.name, self.epochs = config.experiment, int(config.train.epochs)
    self.patience, self.eval_every = patience, eval_every
    self.bar = None

  def epoch_done(self, done: int) -> None:
    if not self.tty:
      return
    if self.bar is None:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=self.epochs, initial=done, desc=self.name, unit='epoch',
                      leave=False, dynamic_ncols=True)
    else:
      self.bar.update(1)

  def evaluated(self, done: int, metric_name: str, values, flags: dict, s_per_epoch: float):
    live = flags['active'] & ~flags['diverged']
    shown = values[live] if live.any() else values
    text = f'{metric_name} {np.nanmean(shown):.4f}' if np.isfinite(shown).any() else ''
    horizon = ''
    if self.patience > 0 and live.any():
      # the latest epoch at which early stopping ends the run unless a member improves
      left = self.patience - int(flags['bad_evals'][live].min())
      last = min(self.epochs, done + left * self.eval_every)
      if last < self.epochs:
        horizon = f', stops by epoch {last} unless a member improves'
    if self.tty and self.bar is not None:
      self.bar.set_postfix_str(f'{text}, {int(live.sum())}/{len(live)} live{horizon}')
    elif self.enabled:
      logging.info('%s epoch %d/%d: %s, %d/%d members training, %.3g s/epoch%s', self.name,
                   done, self.epochs, text or 'no finite metric', int(live.sum()), len(live),
                   s_per_epoch, horizon)

  def close(self):
    if self.bar is not None:
      self.bar.close()


@dataclasses.dataclass
class Setup:
  """Everything a run builds before it touches its workdir."""
  config: ml_collections.ConfigDict
  task: Task
  members: list[dict[str, Any]]
  varied: list[str]
  dataset: Dataset
  trainer: Trainer
  shard: Any  # sharding of member-axis arrays (layout.member)
  n_shards: int  # devices along the member axis
  hp: dict
  train_data: dict
  eval_data: dict
  select_split: str
  plan: structure_lib.Plan | None = None
  layout: mesh_lib.Layout = mesh_lib.NONE

  def member_variables(self, state: MemberState, i: int) -> dict:
    """Member i's best variables in its own shapes: those its solo run would have
    (padding and parameters its variant lacks cut away)."""
    v = member_variables(state, i)
    if self.plan is None or not self.plan.mixes_model:
      return v
    return self.plan.extract(i, {k: x for k, x in v.items() if k != structure_lib.STRUCTURE})

  def member_model(self, i: int):
    """The model member i's variables (`member_variables`) are applied with."""
    if self.plan is None or not self.plan.mixes_model:
      return self.trainer.model
    return self.plan.member_model(i)

  def init_state(self) -> MemberState:
    state = self.trainer.init(self.hp)
    if self.shard is not None:  # lax.map's output is not sharded by the member axis: shard it
      state = jax.device_put(state, self.shard)
    return state


def setup(config: ml_collections.ConfigDict, devices=None) -> Setup:
  """Builds task, members, data, model and optimizer and checks that they fit
  together (an abstract init on the data's shapes); writes nothing. The mesh is
  laid over ``devices`` (default: all)."""
  task = make_task(config.task)
  pruning.parse(config.train.get('prune', ''))  # a bad rule fails before anything is written
  compact = config.train.get('compact', 0)
  if not isinstance(compact, (int, float)) or not 0 <= compact <= 1:
    raise ValueError(f'train.compact={compact!r}: must be a fraction in [0, 1] (0: never '
                     'compact; 0.5: when at most half the members on the device still train)')
  members = population.expand(config, task.hparam_keys)
  numeric = set(population.member_keys(task.hparam_keys))
  if pbt_lib.parse(config.train.get('pbt', '')) is not None and any(
      k not in numeric for k in population.varied_keys(members)):
    raise ValueError('train.pbt copies one member\'s state into another: the members must '
                     'share one structure (no varied variant, width or optimizer rule)')
  shared = [k for k in members[0] if k not in numeric
            and len({repr(m[k]) for m in members}) == 1]
  if shared:  # a structural value every member has is simply the run's config
    config = structure_lib.member_config(config, members[0], shared)
  dataset = load_dataset(config.data)
  plan = structure_lib.make_plan(config, members, task.hparam_keys, abstract_init(dataset))
  K = len(members)
  layout = mesh_lib.make_layout(K, int(config.train.batch_size),
                                config.train.get('data_parallel', 0), devices)
  how = groups_lib.parse(config.train.get('groups', 'none'))
  parts = (groups_lib.partition(how, config, plan, members, dataset, layout.members)
           if how != 'none' and plan is not None and plan.mixes_model else [])
  if len(parts) > 1:  # member kinds at their own shapes, inside one program
    trainer = groups_lib.Grouped(Trainer, config, dataset, members, task, plan, layout, parts,
                                 configlib.once_per_config(abstract_init(dataset)))
    logging.info('%d members in %d groups of one program: %s', K, len(parts),
                 ', '.join(str(len(p)) for p in parts))
  else:
    trainer = Trainer(config, dataset, members, task, plan, layout)
  shard, replicated, n_shards = layout.member, layout.replicated, layout.members
  if jax.process_count() > 1 and layout.devices != len(devices or jax.devices()):
    raise ValueError(
        f'{jax.process_count()} processes: the mesh must span all {len(jax.devices())} '
        f'devices, but {K} member(s) and train.batch_size={config.train.batch_size} give a '
        f'{layout.members} x {layout.data} (member x data) mesh; pick K and the batch size '
        'so that members x data devices fill the devices (or set train.data_parallel)')
  put = (lambda x: jax.device_put(x, shard)) if shard else jnp.asarray
  put_shared = (lambda x: jax.device_put(x, replicated)) if replicated else jnp.asarray
  host_hp = population.stack(members)
  if plan is not None:
    host_hp['optim.rule'] = np.asarray(plan.member_rule, np.int32)
    if plan.mixes_model:
      host_hp['_mask'] = jax.tree.map(lambda *xs: np.stack(xs),
                                      *[plan.mask(i) for i in range(K)])
  hp = jax.tree.map(put, host_hp)
  if not trainer.masked:  # model and data shapes agree, before anything is written
    jax.eval_shape(trainer.init, hp)  # (a plan has already traced every member's model)
  eval_bs = int(config.train.eval_batch_size)
  splits = {'val': dataset.val, 'test': dataset.test}
  eval_data = {name: jax.tree.map(put_shared, batch_split(s, eval_bs))
               for name, s in splits.items() if s is not None}
  select_split = 'val' if 'val' in eval_data else 'train'
  if select_split == 'train':
    logging.warning('No validation split: model selection uses the training split')
    eval_data['train'] = jax.tree.map(put_shared, batch_split(dataset.train, eval_bs))
  if trainer.stream:  # data.stream: the training split stays in host memory
    from research import stream as stream_lib
    train_data = stream_lib.host_split(dataset.train)
  else:
    train_data = jax.tree.map(put_shared, dataset.train)
  return Setup(config, task, members, population.varied_keys(members), dataset, trainer,
               shard, n_shards, hp, train_data, eval_data,
               select_split, plan, layout)


def abstract_init(dataset: Dataset):
  """``model_config -> (model, abstract variables)`` on one example of ``dataset``."""
  sample = {k: jnp.asarray(v[:1]) for k, v in dataset.train.items()}
  extra = {'lengths': sample['lengths']} if 'lengths' in sample else {}

  def init(model_config):
    model = build_model(model_config, dataset.info)
    keys = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
    return model, jax.eval_shape(lambda: model.init(keys, sample['x'], train=False, **extra))
  return init


def _finished(state: MemberState, epoch: int, epochs: int) -> bool:
  flags = _host({'active': state.active, 'diverged': state.diverged})
  return epoch >= epochs or not (flags['active'] & ~flags['diverged']).any()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       on_evaluation: Callable[[int, np.ndarray], np.ndarray] | None = None
                       ) -> dict:
  """Trains the config's population in ``workdir``; resumes if a run is there.

  Everything is validated before the workdir is written. A finished run (all
  epochs done or every member stopped) returns its results without training.
  SIGINT / SIGTERM stop after the epoch in flight with a checkpoint
  (`errors.Interrupted`); a run with no progress for ``train.watchdog_s`` dumps
  its stacks and exits 75 (`research.watchdog`). Returns the results dict that is
  also written to ``workdir/results.json``.

  ``on_evaluation(epoch, values)``, if given, is called after each evaluation (after
  ``train.prune``) with every member's selection metric (K,), NaN for members that no
  longer train; the live members it returns True for stop as pruned ones do (rule
  ``'callback'`` in their ``pruned`` entry).
  """
  from research import watchdog
  t_call = time.time()
  workdir = Path(workdir)
  run = setup(config)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints', config.train.checkpoint_keep)
  try:
    _check_config(workdir, config, has_checkpoint=bool(checkpointer.steps()))
    timeout = float(config.train.get('watchdog_s', 0) or 0)
    _writer_thread_errors_logged()
    with watchdog.Watchdog(workdir, timeout) as dog, _StopSignals() as stop:
      state = run.init_state()
      restored = checkpointer.restore_latest(state)
      start_epoch, meta = 0, {}
      if restored is not None:
        start_epoch, state, meta = restored
        logging.info('Resumed %s at epoch %d', workdir, start_epoch)
      if _finished(state, start_epoch, int(config.train.epochs)):
        _raise_if_all_diverged(state, run.members)
        if (workdir / 'results.json').exists():
          logging.info('%s holds a finished run: its results are returned, nothing trained',
                       workdir)
          return results.read(workdir / 'results.json')
      else:
        state, meta = _train_loop(run, state, start_epoch, meta, workdir, checkpointer,
                                  dog, stop, on_evaluation)
      return _final_results(run, state, meta, workdir, t_call)
  finally:
    checkpointer.close()


class _Members:
  """Which members the program still trains (compaction).

  ``index[r]`` is the member on device row r; members that stopped (early
  stopping, divergence) and left the device are kept on the host in
  ``retired``. Every member's state is computed by its own rows of a vmapped
  program, so dropping rows changes no other member's numbers. `full` puts the
  population back together (checkpoints, final results); `compact` keeps the
  live rows, plus as few stopped ones as make the count a multiple of the
  devices the member axis is sharded over."""

  def __init__(self, run: Setup):
    self.run = run
    self.K = len(run.members)
    self.index = np.arange(self.K)
    self.retired: dict[int, Any] = {}
    self.hp_host = jax.tree.map(np.array, _host(run.hp))  # writable copies (PBT edits them)
    self.hp = run.hp

  @property
  def members(self) -> list[dict]:
    return [self.run.members[j] for j in self.index]

  def set_hp(self, values: dict) -> None:
    """Replaces hyperparameters of every member (host arrays over all K) and places the
    device rows' values."""
    for k, v in values.items():
      self.hp_host[k] = np.array(v, self.hp_host[k].dtype)
    # (a tree: mixed optimizers keep per-rule values in nested dicts)
    self.hp = self.run.layout.put(jax.tree.map(lambda a: a[self.index], self.hp_host))

  def full(self, state: MemberState) -> MemberState:
    if not self.retired:
      return state
    rows = _host(state)
    ids = sorted(self.retired)
    olds = [self.retired[j] for j in ids]

    def put(a, *rs):
      out = np.empty((self.K,) + a.shape[1:], a.dtype)
      out[self.index] = a
      for j, r in zip(ids, rs):
        out[j] = r
      return out
    return self.run.layout.put(jax.tree.map(put, rows, *olds))

  def full_flags(self, flags: dict) -> dict:
    """Host arrays of the device rows -> arrays over every member (retired ones from
    their stored state: the field names of ``flags`` are MemberState's, or 'last')."""
    if not self.retired:
      return flags
    out = {}
    for k, a in flags.items():
      v = np.empty((self.K,) + a.shape[1:], a.dtype)
      v[self.index] = a
      for j, st in self.retired.items():
        v[j] = np.asarray(getattr(st, 'last_finite_loss' if k == 'last' else k))
      out[k] = v
    return out

  def compact(self, state: MemberState, fraction: float) -> MemberState:
    flags = _host({'active': state.active, 'diverged': state.diverged})
    live = flags['active'] & ~flags['diverged']
    n, n_live = len(self.index), int(live.sum())
    view = self.run.trainer.for_rows(self.index)
    # against the rows an epoch computes (`research.groups` skips groups that all stopped)
    if fraction <= 0 or n_live == 0 or n_live > fraction * view.rows_computed(live):
      return state
    keep = view.rows_kept(live, self.run.n_shards)
    size = len(keep)
    if size >= n:
      return state
    rows = _host(state)
    for r in sorted(set(range(n)) - set(keep.tolist())):
      self.retired[int(self.index[r])] = jax.tree.map(lambda a: a[r], rows)
    self.index = self.index[keep]
    self.set_hp({})
    logging.info('Compacted the population to %d of %d members (%d still training)',
                 size, self.K, n_live)
    return self.run.layout.put(jax.tree.map(lambda a: a[keep], rows))


def _train_loop(run: Setup, state: MemberState, start_epoch: int, meta: dict, workdir: Path,
                checkpointer, dog, stop, on_evaluation=None) -> tuple[MemberState, dict]:
  """Trains from ``start_epoch`` until the last epoch or until every member stopped;
  evaluates, logs and checkpoints every ``train.eval_every`` epochs. After an
  evaluation at which at most ``train.compact`` of the rows still train, the
  program continues with the live members only (`_Members`). Returns the whole
  population's state."""
  config, trainer, members = run.config, run.trainer, run.members
  epochs = int(config.train.epochs)
  eval_every = max(1, int(config.train.eval_every))
  compact = float(config.train.get('compact', 0) or 0)
  select = run.select_split
  logger = _Logger(workdir, start_epoch, members, run.varied)
  distributed.sync('metrics.jsonl')  # others read it after process 0 has trimmed it
  progress = _Progress(config, trainer.patience, eval_every)
  # Wall time and first-epoch time add up over resumed pieces (kept in the checkpoint's meta).
  t_start = time.time() - float(meta.get('train_time_s', 0.0))
  first_epoch_s = meta.get('first_epoch_s', meta.get('compile_time_s'))
  # member-steps the program computed (rows x steps) and an uncompacted one would have
  work = dict(meta.get('member_steps') or {'computed': 0, 'uncompacted': 0})
  reported = set(np.flatnonzero(_host(state.diverged)).tolist())
  rows = _Members(run)
  state = rows.compact(state, compact)  # a resumed run leaves its stopped members behind
  pruner = pruning.parse(config.train.get('prune', ''), len(range(eval_every, epochs + 1,
                                                                  eval_every)) + bool(epochs % eval_every))
  metric_key = ('train_eval' if select == 'train' else select) + '/' + run.task.select_metric
  # the selection metric of every evaluation before a resume (for the rules below)
  past = (pruning.history_from_records(logger.records(), len(members), metric_key)
          if pruner or on_evaluation or config.train.get('pbt', '') else [])
  history = list(past) if pruner else []
  pruned_at = {int(k): v for k, v in (meta.get('pruned') or {}).items()}  # member -> epoch
  hook_history = list(past) if on_evaluation else []
  pbt = pbt_lib.parse(config.train.get('pbt', ''))
  pbt_log = list(meta.get('pbt') or [])
  if meta.get('hp'):  # hyperparameters PBT changed before the checkpoint we resume from
    rows.set_hp({k: np.asarray(v, np.float32) for k, v in meta['hp'].items()})
  evaluations = len(past) if pbt else 0
  epoch_metrics, window_t, window_steps = [], time.time(), 0
  done = start_epoch
  try:
    for epoch in range(start_epoch, epochs):
      t0 = time.time()
      view = trainer.for_rows(rows.index)
      computed = view.rows_computed(_host(state.active & ~state.diverged))
      state, metrics = view.train_epoch(state, rows.hp, run.train_data)
      jax.block_until_ready(state.step)
      done = epoch + 1
      if epoch == start_epoch and first_epoch_s is None:
        first_epoch_s = time.time() - t0  # compilation included
      dog.beat(epoch=done)
      progress.epoch_done(done)
      epoch_metrics.append(metrics)
      window_steps += trainer.steps_per_epoch
      work['computed'] += computed * trainer.steps_per_epoch
      work['uncompacted'] += len(members) * trainer.steps_per_epoch
      if done % eval_every and done != epochs:
        if stop.signum is not None:
          _save(checkpointer, done, rows.full(state), t_start, first_epoch_s, pruned_at,
                member_steps=work)
          _interrupted(stop.signum, done, workdir)
        continue
      evaluate = trainer.for_rows(rows.index).evaluate
      evals = {name: evaluate(state.params, state.model_state, rows.hp, d)
               for name, d in run.eval_data.items() if name != 'test'}
      state = trainer.update_best(state, evals[select][run.task.select_metric],
                                  jnp.int32(done))
      train_m = _host(jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *epoch_metrics))
      evals = _host(evals)
      pruned = np.zeros(len(rows.index), bool)
      if pruner:
        state, pruned = _prune(pruner, state, rows, history, evals[select][run.task.select_metric],
                               trainer.maximize, done, pruned_at)
      if on_evaluation is not None:  # the caller's rule (e.g. an Optuna trial's pruner)
        state, asked = _prune(_Callback(on_evaluation, done), state, rows, hook_history,
                              evals[select][run.task.select_metric], trainer.maximize, done,
                              pruned_at)
        pruned |= asked
      if pbt:
        evaluations += 1
        if evaluations % pbt.every == 0 and done < epochs:
          state = _exploit(pbt, state, rows, evals[select][run.task.select_metric],
                           trainer.maximize, int(config.seed), done, pbt_log)
      flags = _host({'step': state.step, 'diverged': state.diverged, 'active': state.active,
                     'diverged_step': state.diverged_step, 'last': state.last_finite_loss,
                     'bad_evals': state.bad_evals})
      now = time.time()
      live = int((flags['active'] & ~flags['diverged']).sum())
      perf = {'time_s': round(now - t_start, 3),
              'perf/examples_per_s': window_steps * trainer.batch_size * len(rows.index) /
                                     max(now - window_t, 1e-9)}
      records = _eval_records(done, members, run.varied, train_m, evals, flags, perf, rows.index,
                              (pbt.keys, rows.hp_host, pbt_log) if pbt else None)
      for r, p in zip(records, pruned):
        if p:
          r['pruned'] = True
      logger.write(records)
      progress.evaluated(done, f'{select}/{run.task.select_metric}',
                         evals[select][run.task.select_metric], flags,
                         (now - window_t) / len(epoch_metrics))
      epoch_metrics, window_t, window_steps = [], now, 0
      meta = _save(checkpointer, done, rows.full(state), t_start, first_epoch_s, pruned_at,
                   member_steps=work, **({'pbt': pbt_log, 'hp': {k: rows.hp_host[k].tolist() for k in pbt.keys}}
                      if pbt else {}))
      dog.beat(epoch=done, step=int(flags['step'].max()))
      _report_divergence(rows.full_flags(flags), members, reported)
      if stop.signum is not None:
        _interrupted(stop.signum, done, workdir)
      if not live:
        all_flags = rows.full_flags(flags)
        diverged = int(np.asarray(all_flags['diverged']).sum())
        patient = len(members) - len(pruned_at) - diverged
        logging.info('Every member has stopped after epoch %d: %d pruned, %d diverged, %d '
                     'without improvement for %d evaluations', done, len(pruned_at), diverged,
                     patient, trainer.patience)
        break
      if done < epochs:
        state = rows.compact(state, compact)
  finally:
    progress.close()
    logger.close()
  return rows.full(state), meta


def _exploit(pbt, state: MemberState, rows: '_Members', values, maximize: bool, seed: int,
             done: int, log: list) -> MemberState:
  """PBT's exploit and explore (`research.pbt`): the host decides (from the K
  validation values), the compiled `_pbt_copy` copies along the member axis on
  the devices."""
  flags = _host({'active': state.active, 'diverged': state.diverged, 'step': state.step})
  live = flags['active'] & ~flags['diverged']
  full = np.full(rows.K, np.nan)
  full[rows.index] = np.asarray(values, np.float64)
  alive = np.zeros(rows.K, bool)
  alive[rows.index[live]] = True
  # explore=resample draws from the population's initial range of each key
  ranges = {k: (min(float(m[k]) for m in rows.run.members),
                max(float(m[k]) for m in rows.run.members)) for k in pbt.keys}
  moves = pbt.decide(full, alive, maximize, seed, done, ranges)
  if not moves:
    return state
  row = {int(j): r for r, j in enumerate(rows.index)}
  source = np.arange(len(rows.index), dtype=np.int32)  # device row r takes row source[r]
  for b, d, changes in moves:
    source[row[b]] = row[d]
    before = {k: float(rows.hp_host[k][b]) for k in changes}
    for k, (how, x) in changes.items():
      rows.hp_host[k][b] = rows.hp_host[k][d] * x if how == 'perturb' else x
    # the lineage: who copied whom after which epoch (at the donor's step), and how
    # each explored value came about (donor's value x factor, or resampled)
    log.append({'epoch': done, 'step': int(flags['step'][row[d]]), 'member': b, 'from': d,
                'hparams': {k: float(rows.hp_host[k][b]) for k in changes},
                'before': before,
                'donor_hparams': {k: float(rows.hp_host[k][d]) for k in changes},
                'explore': {k: how for k, (how, _) in changes.items()},
                'factors': {k: x for k, (how, x) in changes.items() if how == 'perturb'}})
  logging.info('PBT after epoch %d: %s', done,
               '; '.join(f'member {b} <- {d}' for b, d, _ in moves))
  rows.set_hp({})
  # every member's optimizer reads its (possibly new) values from its state
  hp = {k: v for k, v in rows.hp.items() if k in pbt_lib.KEYS}
  return _pbt_copy(state, source, hp, rows.run.layout.member)


@functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
def _pbt_copy(state: MemberState, source, hp: dict, sharding) -> MemberState:
  """Rows ``source`` of the parameters, model state and optimizer state (a gather
  along the member axis), with the optimizer's hyperparameters set to ``hp``; the
  rest of each member's state (step, random stream, best-so-far) stays its own."""
  take = lambda tree: jax.tree.map(lambda a: a[source], tree)
  new = state.replace(params=take(state.params), model_state=take(state.model_state),
                      opt_state=optim.set_hparams(take(state.opt_state), hp))
  if sharding is None:
    return new
  return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), new)


@dataclasses.dataclass
class _Callback:
  """``train_and_evaluate``'s ``on_evaluation`` as a rule for `_prune`."""
  fn: Callable[[int, np.ndarray], np.ndarray]
  epoch: int
  name = 'callback'

  def decide(self, values: np.ndarray, live: np.ndarray, maximize: bool) -> np.ndarray:
    return live & np.asarray(self.fn(self.epoch, values[-1].copy()), bool)

  def record(self, values: np.ndarray, member: int) -> dict:
    v = float(values[-1, member])
    return {'rule': self.name, 'evaluation': values.shape[0] - 1, 'rung': None,
            'value': v if math.isfinite(v) else None}


def _prune(pruner, state: MemberState, rows: '_Members', history: list, values, maximize: bool,
           done: int, pruned_at: dict):
  """Appends this evaluation's values (every member; NaN for members off the device)
  to ``history``, asks ``pruner`` which live members to stop and stops them; each
  stopped member's record goes to ``pruned_at`` (member -> {'epoch', 'rule', 'rung',
  'value', ...}, `research.pruning.Pruner.record`; kept in the checkpoint's meta)."""
  full = np.full(rows.K, np.nan)
  full[rows.index] = np.asarray(values, np.float64)
  flags = _host({'active': state.active, 'diverged': state.diverged})
  live_rows = flags['active'] & ~flags['diverged']
  full[rows.index[~live_rows]] = np.nan  # stopped members compete no more
  history.append(full)
  live = np.zeros(rows.K, bool)
  live[rows.index[live_rows]] = True
  so_far = np.stack(history)
  stop = pruner.decide(so_far, live, maximize)[rows.index]
  for j in rows.index[stop]:
    pruned_at[int(j)] = {'epoch': done, **pruner.record(so_far, int(j))}
  if stop.any():
    logging.info('Pruned member(s) %s after epoch %d (%s rule)',
                 rows.index[stop].tolist(), done, pruner.name)
    state = state.replace(active=state.active & rows.run.layout.put(~stop))
  return state, stop


def _save(checkpointer, done: int, state, t_start: float, first_epoch_s,
          pruned: dict | None = None, **extra) -> dict:
  meta = {'epoch': done, 'train_time_s': time.time() - t_start, 'first_epoch_s': first_epoch_s,
          'pruned': {str(k): v for k, v in (pruned or {}).items()}, **extra}
  checkpointer.save(done, state, meta)
  return meta


def _interrupted(signum: int, done: int, workdir: Path):
  name = signal.Signals(signum).name
  code = errors.EXIT_SIGINT if signum == signal.SIGINT else errors.EXIT_SIGTERM
  raise errors.Interrupted(
      f'stopped by {name} after epoch {done}; checkpoint saved in {workdir / "checkpoints"}; '
      'run the same command again to resume', code)


def _eval_records(done: int, members, varied, train_m: dict, evals: dict, flags: dict,
                  perf: dict, index=None, pbt=None) -> list[dict]:
  """One metrics.jsonl record per member on the device (row i holds member
  ``index[i]``): training-step means over the evaluation window (finite steps
  only), evaluation metrics, flags, time and throughput. With PBT (``pbt``: the
  explored keys, the current values over all members and the move log),
  ``pbt_hparams`` holds the values the member trained with over the window (before
  a move made at this evaluation)."""
  records = []
  index = range(len(members)) if index is None else index
  if pbt is not None:
    keys, current, log = pbt
    before = {e['member']: e['before'] for e in log if e['epoch'] == done}
  for i, j in enumerate(index):
    m = members[j]
    ok = train_m['ok'][i].astype(bool)
    rec = {'epoch': done, 'step': int(flags['step'][i]), 'member': int(j),
           'hparams': {k: m[k] for k in varied} if varied else {},
           'diverged': bool(flags['diverged'][i]), 'active': bool(flags['active'][i]), **perf}
    if pbt is not None:
      rec['pbt_hparams'] = {k: before.get(int(j), {}).get(k, float(current[k][j])) for k in keys}
    for k, v in train_m.items():
      if k != 'ok':
        rec[f'train/{k}'] = float(v[i][ok].mean()) if ok.any() else None
    for split, vals in evals.items():
      # Without a validation split the train split is also evaluated (eval mode,
      # for selection): 'train_eval/' keeps it apart from the training-step means.
      name = 'train_eval' if split == 'train' else split
      for k, v in vals.items():
        rec[f'{name}/{k}'] = float(v[i])
    records.append(rec)
  return records


def _report_divergence(flags: dict, members, reported: set) -> None:
  """Warns once per newly diverged member; raises DivergenceError when all have."""
  for i in np.flatnonzero(flags['diverged']):
    if i not in reported:
      reported.add(int(i))
      logging.warning(
          'Member %d (%s) diverged at step %d (non-finite loss or parameters); last '
          'finite loss %s. It is frozen; the others train on.', i,
          _describe(members[i]), flags['diverged_step'][i], _fmt(flags['last'][i]))
  if flags['diverged'].all():
    raise _divergence_error(flags, members)


def _divergence_error(flags: dict, members) -> DivergenceError:
  return DivergenceError(
      'Training diverged: ' + '; '.join(
          f'member {i} ({_describe(members[i])}) at step {flags["diverged_step"][i]}, '
          f'last finite loss {_fmt(flags["last"][i])}' for i in range(len(members))) +
      '. Lower optim.lr or set optim.clip_norm.')


def _raise_if_all_diverged(state: MemberState, members) -> None:
  flags = _host({'diverged': state.diverged, 'diverged_step': state.diverged_step,
                 'last': state.last_finite_loss})
  if flags['diverged'].all():
    raise _divergence_error(flags, members)


def _final_results(run: Setup, state: MemberState, meta: dict, workdir: Path,
                   t_call: float) -> dict:
  """Evaluates every split with each member's best (validation-selected) parameters
  and writes results.json."""
  final = {name: _host(run.trainer.evaluate(state.best_params, state.best_model_state, run.hp, d))
           for name, d in run.eval_data.items()}
  flags = _host({'diverged': state.diverged, 'best_epoch': state.best_epoch,
                 'step': state.step, 'diverged_step': state.diverged_step})
  member_results = []
  mixed = run.plan is not None and run.plan.mixes_model
  records, trajectory = [], {}
  if meta.get('hp'):  # PBT: each member's explored values per evaluation, from its records
    path = workdir / 'metrics.jsonl'
    records = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] \
        if path.exists() else []
    for r in records:
      if 'pbt_hparams' in r:
        trajectory.setdefault(r['member'], []).append(
            {'epoch': r['epoch'], 'step': r['step'], **r['pbt_hparams']})
  pruned = {}
  for k, v in (meta.get('pruned') or {}).items():  # an older checkpoint kept the epoch only
    pruned[int(k)] = v if isinstance(v, dict) else {
        'epoch': v, 'rule': pruning.parse(run.config.train.get('prune', '')).name,
        'evaluation': None, 'rung': None, 'value': None}
  for i, m in enumerate(run.members):
    member_results.append({
        'member': i, 'hparams': m, 'best_epoch': int(flags['best_epoch'][i]),
        'steps': int(flags['step'][i]), 'diverged': bool(flags['diverged'][i]),
        'diverged_step': int(flags['diverged_step'][i]) if flags['diverged'][i] else None,
        **({'num_params': run.plan.num_params(i)} if mixed else {}),
        'pruned_epoch': pruned[i]['epoch'] if i in pruned else None,
        'pruned': pruned.get(i),
        **({'final_hparams': {k: v[i] for k, v in meta['hp'].items()},
            'pbt': [e for e in meta.get('pbt', []) if e['member'] == i],
            'hparams_trajectory': trajectory.get(i, [])}
           if meta.get('hp') else {}),
        **{f'{s}/{k}': float(v[i]) for s, vals in final.items() for k, v in vals.items()}})
  rows = results.group_rows(run.config.experiment, run.task, run.members, run.varied,
                            member_results)
  K = len(run.members)
  # With varied structure, each member counts only its own parameters; the run's
  # figure is its largest member's.
  n_params = (max(r['num_params'] for r in member_results) if mixed else
              sum(x.size for x in jax.tree.leaves(state.params)) // K)
  lineage = sorted(meta.get('pbt') or [], key=lambda e: (e['epoch'], e['member']))
  out = results.write(
      workdir / 'results.json' if distributed.is_writer() else None,
      run.config.experiment, rows,
      members=member_results, num_members=K, num_params=int(n_params),
      **({'pbt_lineage': lineage} if meta.get('hp') else {}),
      **({'groups': run.trainer.describe()} if isinstance(run.trainer, groups_lib.Grouped)
         else {}),
      select_metric=f'{run.select_split}/{run.task.select_metric}',
      train_time_s=float(meta.get('train_time_s', 0.0)),
      member_steps=meta.get('member_steps'),
      first_epoch_s=meta.get('first_epoch_s'),
      devices=[str(d) for d in jax.devices()], member_sharding=run.n_shards,
      mesh=run.layout.record(),
      steps_per_epoch=run.trainer.steps_per_epoch,
      provenance=provenance.collect(start=t_call))
  if meta.get('hp') and distributed.is_writer():  # PBT: schedules, copies, val curves
    from research.analysis import lineage as lineage_plot
    try:
      lineage_plot.plot_pbt(out, records, workdir / 'pbt.png')
    except Exception as e:  # noqa: BLE001 (results.json is written; the figure is extra)
      logging.warning('could not draw %s: %s', workdir / 'pbt.png', e)
  return out


def load_trained(config: ml_collections.ConfigDict, workdir: str | Path, devices=None):
  """Rebuilds a run's trainer and restores its newest checkpoint.

  Returns ``(trainer, dataset, members, state)``; ``state.best_params`` /
  ``best_model_state`` hold every member's validation-selected parameters
  (leading member axis). Use `member_variables` for one member's variables.
  ``devices``: those the mesh is laid over (default: all).
  """
  run = setup(config, devices)
  state = run.init_state()
  checkpointer = ckpt_lib.Checkpointer(Path(workdir) / 'checkpoints', config.train.checkpoint_keep)
  try:
    restored = checkpointer.restore_latest(state)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {Path(workdir) / "checkpoints"}; train the run first')
  return run.trainer, run.dataset, run.members, restored[1]


def member_variables(state: MemberState, i: int) -> dict:
  """Member i's best parameters (and batch statistics etc.) as Flax variables."""
  take = lambda tree: jax.tree.map(lambda a: a[i], tree)
  return {'params': take(state.best_params), **take(state.best_model_state)}


def _fmt(loss) -> str:
  return f'{loss:.4g}' if np.isfinite(loss) else 'none (diverged on its first step)'


def _describe(member: dict) -> str:
  return ', '.join(f'{k}={population.format_value(v)}' for k, v in member.items())
