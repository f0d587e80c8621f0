"""Grid, random and Bayesian sweeps on an Optuna study, trained as populations.

``run_sweep(config, space, method, trials, workdir)``:

* **Study and storage.** One Optuna study in a storage (default: a journal
  file ``workdir/optuna.journal``; ``'sqlite'``: ``workdir/optuna.db``; or any
  SQLAlchemy URL such as ``postgresql://...`` shared by several machines; the
  ``postgres`` extra installs its driver, docs/scaling_out_postgres.md).
  The study records its method, space, budget and base config; a re-run with
  different ones is refused with the differing item named.
* **Methods.** ``grid`` and ``random`` are planned: when the study is
  created, every point (the exact grid, `space.grid_points`; or ``trials``
  draws of Optuna's ``RandomSampler(seed)``) is enqueued once, and workers
  pop them. ``bayes`` asks Optuna's ``TPESampler`` (multivariate, grouped for
  conditional parameters, ``constant_liar`` so that trials still training
  count as pending) or ``GPSampler`` (needs torch) for each new trial, up to
  ``trials`` of them.
* **Programs.** A worker asks ``batch`` trials at a time and trains them in
  the programs the cost model finds fastest (`plan_programs`). Trials first
  split by the values of the keys that cannot vary inside one population:
  everything the space sets that is neither a numeric hyperparameter
  (`research.population.member_keys`) nor a structural key the model can mix
  (`research.structure.mixable_keys`: the optimizer rule, the widths the model
  declares, the LSTM variant); batch size or depth, say. Within such a group
  each distinct combination of mixable values is a kind, and
  `research.structure.program_groups` (over every JAX device) decides which
  kinds share a program, from the padded FLOPs of a member-step
  (`research.structure.padded_flops`; the data are loaded once, when widths
  first vary): optimizer rules mix at no cost, a narrow width joins a wide one
  when padding costs less than a program of its own, and kinds that cannot be
  mixed exactly (widths of different lengths, dropout over a varied width,
  ...) never share one; a mix that training still refuses (a ``ValueError``)
  trains again as one program per kind. Each program is one
  ``population_mode='zip'`` population through `train_and_evaluate`, whose
  population string holds every member's values, in ``workdir/runs/<hash of
  the program's shared values and members>``; each member computes what its
  trial would alone. Every trial uses the config's seed. Each member's value
  of the task's selection metric on the split the run selected on
  (results.json ``select_metric``: validation, or training for data without a
  validation split; never the test split; with its best parameters) is told
  back, and the study's ``metric`` and each trial's ``select_metric`` name
  that split, after every evaluation of the member has been reported as an
  intermediate value (its metrics.jsonl records); a member the run's pruning
  rule stopped (``train.prune``, `research.pruning`; ``scripts/sweep.py
  --pruner``) is told as PRUNED; a diverged member or a
  non-finite value is told as FAIL
  (``user_attrs['fail_reason'] = 'diverged'``) and the sweep goes on. Each
  trial records its ``run``, ``program_members``, ``program_kinds``,
  ``program_wall_s`` and ``member_steps`` (the steps its member trained).
* **Optuna's pruners, one trial at a time** (``trial_pruner``:
  ``optuna_asha[:eta=E,min=M]`` or ``optuna_hyperband[:eta=E,min=M,brackets=B]``,
  `optuna_pruner`). The baseline for pruning inside the population: each trial
  trains alone (a population of 1, batches of 1) and after each evaluation
  reports its value at that epoch to its Optuna trial (``trial.report``) and
  stops when ``trial.should_prune()`` says so (through `train_and_evaluate`'s
  ``on_evaluation``); it is then told as PRUNED. Optuna's
  ``SuccessiveHalvingPruner`` / ``HyperbandPruner`` get the settings
  `research.pruning` gives the in-population rule of the same name and
  arguments: resources are epochs, ``min_resource = min * train.eval_every``,
  ``reduction_factor = eta``, and Hyperband as many brackets as ours.
* **Crash safety.** Each worker holds an ``fcntl`` lock on
  ``workdir/workers/<id>.lock`` while it lives; the kernel drops it when the
  process dies (even ``kill -9``). Asking happens under ``workdir/sweep.lock``.
  Before asking, a worker marks every RUNNING trial whose worker lock is free
  as FAIL (``fail_reason='interrupted'``) and enqueues it again with the same
  parameters; the retry trains again (resuming from the interrupted run's
  Orbax checkpoint when the retried trials form the same population, i.e. the
  same run directory; Optuna pops the oldest queued trials first, so a retry
  may be batched with other trials). Finished trials are never redone, and
  interrupted ones do not count against the budget. Two workers on one
  workdir split the work (the ask lock makes the budget exact). Workers on
  other machines share an RDB storage (``'sqlite'`` on a shared disk, or a
  URL) but not the locks, so there Optuna's heartbeats decide: each worker
  records one per running trial every ``heartbeat_s`` seconds, and a RUNNING
  trial whose last heartbeat is older than ``3 * heartbeat_s`` is failed by
  the next worker that asks (`optuna.storages.fail_stale_trials`) and queued
  again the same way. A worker records a trial's first heartbeat as it asks
  it; a RUNNING trial that has no worker recorded yet is a remote asker's
  between those steps, and counts as dead only once it is ``3 * heartbeat_s``
  old. Across machines the budget may be overshot by up to a batch per worker
  (each machine has its own ask lock) for ``bayes``; planned sweeps train each
  point once (`_superfluous` drops a planned point queued twice, or a trial
  Optuna sampled because another machine had emptied the queue).
* **Start-up.** Workers started at the same moment on an empty database collide
  while Optuna creates its tables (unique violations, optuna/optuna#1092); the
  storage retries (`_rdb_storage`). The study's creator is the one worker whose
  ``create_study`` succeeds; it alone queues the plan, the others wait for the
  signature it records last (`_open_study`). A bad ``--storage`` fails before
  the workdir is created.
* **One worker, several processes** (``scripts/sweep.py --coordinator_address
  ...``, `research.distributed`): process 0 alone opens the storage, asks, tells,
  recovers orphans and writes files; what it decided reaches the others through
  `research.distributed.from_writer` (the batch as trial numbers and Optuna's
  parameters, each pruning decision of ``trial_pruner``, the end), and every
  process trains the same populations (`train_and_evaluate` spans the processes).

Outputs (`research.sweep.report`): ``trials.csv``, ``trials.md``,
``best_so_far.png``, ``importance.json``, ``best_config.txt`` (a ready
``scripts/train.py`` command line) and ``results.json`` (with ``programs``,
the training programs the trials ran in, and ``member_steps``, their steps summed).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
import optuna

from research import configlib, population, pruning
from research import structure as structure_lib
from research.sweep import space as space_lib
from research.tasks import make_task

METHODS = ('grid', 'random', 'bayes')
TRIAL_PRUNERS = ('optuna_asha', 'optuna_hyperband')  # Optuna's pruners, trials one by one
SAMPLERS = ('tpe', 'gp')
TrialState = optuna.trial.TrialState


def make_storage(storage: str | None, workdir: Path, heartbeat_s: int = 0):
  """None/'journal' -> journal file in workdir; 'sqlite' -> SQLite file there; else a URL.

  ``heartbeat_s > 0`` turns on Optuna's trial heartbeats for the RDB storages
  (sqlite and URLs): a trial silent for ``3 * heartbeat_s`` is stale and retried.
  The journal file has none; its workers share the workdir's locks instead.
  The journal and 'sqlite' create the workdir; a URL leaves it alone, so a bad URL
  writes nothing. An RDB storage connects here (and creates Optuna's tables, retried
  when other workers create them at the same moment, `_rdb_storage`): a missing driver
  is an ImportError naming its package, an unreachable database a ValueError (one line
  each, no password)."""
  if storage in (None, '', 'journal'):
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    workdir.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(workdir / 'optuna.journal')))
  if storage == 'sqlite':
    workdir.mkdir(parents=True, exist_ok=True)
    storage = f'sqlite:///{(workdir / "optuna.db").absolute()}'
  elif '://' not in storage:
    raise ValueError(f"--storage must be 'journal', 'sqlite' or an SQLAlchemy URL, got {storage!r}")
  else:
    storage = _with_driver(storage)
  kw = {}
  if heartbeat_s > 0:
    # Optuna calls heartbeats 'experimental' and warns that they are meant for
    # Study.optimize; we record them ourselves around ask/tell (`_heartbeats`).
    warnings.filterwarnings('ignore', 'Heartbeat of storage is supposed', UserWarning)
    kw = dict(heartbeat_interval=int(heartbeat_s), grace_period=3 * int(heartbeat_s),
              heartbeat_stale_trial_callback=_requeue_stale)
  return _rdb_storage(storage, kw)


CREATE_TRIES = 8  # attempts at Optuna's tables while other workers create them too


def _creation_race(e: Exception) -> bool:
  """Whether a database error is another worker creating the same tables, rows or
  types at the same moment (optuna/optuna#1092, #4621): a unique violation
  (SQLSTATE class 23: PostgreSQL's ``pg_type_typname_nsp_index``, alembic's
  ``alembic_version_pkc``), a table or object that already exists (42P07, 42710),
  a deadlock or serialization failure (40P01, 40001); SQLite says 'already exists'."""
  import sqlalchemy.exc
  orig = getattr(e, 'orig', None)
  state = getattr(orig, 'sqlstate', None) or getattr(orig, 'pgcode', None)
  if state:
    return state.startswith('23') or state in ('42P07', '42710', '40P01', '40001')
  return (isinstance(e, sqlalchemy.exc.IntegrityError)
          or 'already exists' in str(orig or e).lower())


def _rdb_storage(url: str, kw: dict):
  """``optuna.storages.RDBStorage(url, **kw)``, which creates Optuna's tables when
  missing. Workers started together on an empty database collide there; a collision
  (`_creation_race`) is retried after a short random pause, up to `CREATE_TRIES` times
  (each retry finds what the others created). Errors are one line without the password."""
  import random

  import sqlalchemy.exc
  from sqlalchemy.engine import make_url
  where = make_url(url).render_as_string(hide_password=True)
  for attempt in range(1, CREATE_TRIES + 1):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      try:
        return optuna.storages.RDBStorage(url, **kw)  # connects (and creates the tables)
      except sqlalchemy.exc.DBAPIError as e:
        reason = ' '.join(str(getattr(e, 'orig', None) or e).split())
        if not _creation_race(e):
          if isinstance(e, sqlalchemy.exc.OperationalError):  # unreachable, wrong user or db
            raise ValueError(f'--storage={where}: cannot connect: {reason}') from None
          raise ValueError(f'--storage={where}: {type(e).__name__}: {reason}') from None
        if attempt == CREATE_TRIES:
          raise ValueError(f"--storage={where}: could not create Optuna's tables, other "
                           f'workers creating them at the same time ({CREATE_TRIES} tries): '
                           f'{reason}') from None
        logging.info('Optuna tables in %s: collided with another worker (%s); retrying',
                     where, reason)
        time.sleep(random.uniform(0.05, 0.25) * attempt)


# What to install for a database driver SQLAlchemy names (its dialect's driver).
_DRIVER_PIP = {'psycopg': "pip install 'research[postgres]' (or: pip install 'psycopg[binary]')",
               'psycopg2': 'pip install psycopg2-binary', 'pg8000': 'pip install pg8000',
               'mysqldb': 'pip install mysqlclient', 'pymysql': 'pip install pymysql'}


def _with_driver(url: str) -> str:
  """``url`` with an importable database driver, else an ImportError naming the package.

  A bare ``postgresql://`` URL means SQLAlchemy's default driver (psycopg 3 from
  SQLAlchemy 2.1 on, psycopg2 before); when that one is missing and psycopg 3 (the
  ``postgres`` extra) is installed, the URL becomes ``postgresql+psycopg://``."""
  import sqlalchemy.exc
  from sqlalchemy.engine import make_url
  try:
    u = make_url(url)
    dialect = u.get_dialect()
  except sqlalchemy.exc.NoSuchModuleError:
    hint = " (PostgreSQL's is 'postgresql://')" if url.startswith('postgres:') else ''
    name = url.split(':')[0]
    raise ValueError(f'--storage: SQLAlchemy knows no database {name!r}{hint}') from None
  except sqlalchemy.exc.ArgumentError as e:
    raise ValueError(f'--storage: not an SQLAlchemy URL: {e}') from None
  try:
    dialect.import_dbapi()
    return url
  except ImportError as e:
    missing = e.name or dialect.driver
  if u.get_backend_name() == 'postgresql' and '+' not in u.drivername:
    try:
      import psycopg  # noqa: F401
      return u.set(drivername='postgresql+psycopg').render_as_string(hide_password=False)
    except ImportError:
      pass
  pip = _DRIVER_PIP.get(dialect.driver, f'pip install {missing}')
  raise ImportError(f'--storage={u.drivername}://...: the database driver {missing!r} is not '
                    f'installed: {pip}')


def _heartbeat_interval(study: optuna.Study) -> int | None:
  # an RDBStorage comes wrapped in Optuna's cache: duck-type it
  return getattr(study._storage, 'get_heartbeat_interval', lambda: None)()


@contextlib.contextmanager
def _heartbeats(study: optuna.Study, trials):
  """Records a heartbeat for each of ``trials`` now and every interval until exit."""
  storage = study._storage
  interval = _heartbeat_interval(study)
  if not interval:
    yield
    return
  stop = threading.Event()

  def beat():
    while True:
      for t in trials:
        try:
          storage.record_heartbeat(t._trial_id)
        except Exception as e:  # noqa: BLE001 - a missed beat must not kill training
          logging.warning('heartbeat for trial %d failed: %s', t.number, e)
      if stop.wait(interval):
        return

  thread = threading.Thread(target=beat, name='sweep-heartbeat', daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


@contextlib.contextmanager
def _flock(path: Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class _Worker:
  """This process's identity, with a lock held for its lifetime."""

  def __init__(self, workdir: Path):
    self.id = f'{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}'
    self.dir = workdir / 'workers'
    self.dir.mkdir(parents=True, exist_ok=True)
    self.file = open(self.dir / f'{self.id}.lock', 'w')
    fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)

  def close(self):
    fcntl.flock(self.file, fcntl.LOCK_UN)
    self.file.close()
    (self.dir / f'{self.id}.lock').unlink(missing_ok=True)


def _worker_alive(workdir: Path, t, grace_s: float | None = None) -> bool:
  """Whether trial ``t``'s worker may still be running it. False when its lock
  file is here and nobody holds it, or when the trial never got a worker: its
  asker died between asking and recording itself. With ``grace_s=None`` every
  asker of the study asks under this workdir's ask lock (local storages), so a
  trial without a worker is a dead asker's. On a storage shared by machines
  (``grace_s`` seconds) it may be a live remote asker's, a few milliseconds
  before it records itself; it counts as dead once it started ``grace_s`` ago
  (by this machine's clock against the asker's: clocks must agree to well
  within the grace)."""
  worker = t.user_attrs.get('worker')
  if not worker:
    if grace_s is None or t.datetime_start is None:
      return False
    return (datetime.datetime.now() - t.datetime_start).total_seconds() < grace_s
  path = workdir / 'workers' / f'{worker}.lock'
  if not path.exists():
    # Workers on this host always have a lock file while alive; elsewhere we cannot tell.
    return not worker.startswith(socket.gethostname() + '-')
  with open(path, 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    fcntl.flock(f, fcntl.LOCK_UN)
  path.unlink(missing_ok=True)
  return False


def _sampler(method: str, seed: int, n_existing: int, bayes_sampler: str, startup: int):
  # A resumed process reseeds with the number of trials already there, so it
  # never replays the first process's random draws.
  s = seed + 7919 * n_existing
  if method != 'bayes':
    return optuna.samplers.RandomSampler(seed=s)
  if bayes_sampler == 'gp':
    try:
      import torch  # noqa: F401
    except ImportError:
      raise ImportError("--sampler=gp needs torch (pip install 'research[gp]' or torch); "
                        'use --sampler=tpe') from None
    return optuna.samplers.GPSampler(seed=s, n_startup_trials=startup)
  with warnings.catch_warnings():  # multivariate/group/constant_liar are 'experimental'
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(seed=s, n_startup_trials=startup, multivariate=True,
                                      group=True, constant_liar=True)


def _plan(method: str, space, trials: int, seed: int) -> list[dict[str, Any]]:
  if method == 'grid':
    points = space_lib.grid_points(space)
    if trials and trials < len(points):
      logging.warning('The grid has %d points; --trials=%d keeps the first %d', len(points),
                      trials, trials)
      points = points[:trials]
    return points
  level = optuna.logging.get_verbosity()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
  optuna.logging.set_verbosity(level)
  points = []
  for _ in range(trials):
    t = sampler_study.ask()
    space_lib.suggest(t, space)
    points.append(dict(t.params))
    sampler_study.tell(t, 0.0)
  return points


def _signature(method, space, trials, config, seed, bayes_sampler) -> dict[str, str]:
  return {'method': method, 'space': repr(dict(space)), 'trials': str(trials),
          'seed': str(seed), 'sampler': bayes_sampler if method == 'bayes' else '',
          'config': config.to_json_best_effort(sort_keys=True)}


def _counts(trials) -> dict[str, int]:
  out = {'interrupted': 0, 'waiting': 0, 'counted': 0}
  retried = {t.user_attrs['retry_of'] for t in trials if 'retry_of' in t.user_attrs}
  for t in trials:
    if t.state == TrialState.WAITING:
      out['waiting'] += 1
    elif t.state == TrialState.FAIL and (t.user_attrs.get('fail_reason') in NOT_COUNTED
                                         or t.number in retried):
      out['interrupted'] += 1
    else:
      out['counted'] += 1
  return out


# Failed trials that do not count against the budget: an interrupted one (queued
# again), and one asked in a race between machines that `_superfluous` drops.
NOT_COUNTED = ('interrupted', 'duplicate', 'unplanned')


def _superfluous(study: optuna.Study, t, planned: bool) -> str | None:
  """Why trial ``t``, just asked, must not train (None: it trains).

  Across machines each asks under its own lock, so two races reach here. The
  queue may run dry between counting and asking (another machine took the
  last queued points): Optuna then samples a fresh trial, which a planned
  sweep (grid, random) never wants ('unplanned'). And two workers finishing a
  dead creator's plan may both queue a missing point: the copy with the higher
  number is dropped when it is asked ('duplicate'; a point whose earlier trial
  failed and was queued again is a retry, not a copy)."""
  if not planned:
    return None
  point = t.user_attrs.get('point')  # every queued planned trial has one, retries too
  if point is None:
    return 'unplanned'
  trials = study.get_trials(deepcopy=False)
  retried = {u.user_attrs['retry_of'] for u in trials if 'retry_of' in u.user_attrs}
  for u in trials:
    if u.number < t.number and u.user_attrs.get('point') == point and not (
        u.state == TrialState.FAIL
        and (u.user_attrs.get('fail_reason') in NOT_COUNTED or u.number in retried)):
      return 'duplicate'
  return None


def _requeue(study: optuna.Study, t, reason: str) -> None:
  """Queues a failed, interrupted trial again with the same parameters."""
  # A planned trial retries its whole planned point (the asker may have died before
  # suggesting every parameter); a Bayesian one keeps what it had drawn.
  params = t.system_attrs.get('fixed_params') or dict(t.params)
  study.enqueue_trial(dict(params), user_attrs={
      'retry_of': t.number, 'retry_reason': reason,
      **{k: v for k, v in t.user_attrs.items() if k in ('point',)}})


def _requeue_stale(study: optuna.Study, t) -> None:
  """Optuna's callback for a trial it failed for lack of heartbeats."""
  logging.warning('Trial %d sent no heartbeat (its worker died or hangs); queued again', t.number)
  _requeue(study, t, 'no heartbeat')


def recover_orphans(study: optuna.Study, workdir: Path, grace_s: float | None = None) -> list[int]:
  """RUNNING trials of dead local workers -> FAIL ('interrupted') + a queued retry;
  with heartbeats on, also trials of any worker whose heartbeat went stale.
  ``grace_s``: see `_worker_alive` (None: all askers share this ask lock)."""
  retried = []
  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    if _worker_alive(workdir, t, grace_s):
      continue
    try:
      study._storage.set_trial_user_attr(t._trial_id, 'fail_reason', 'interrupted')
      if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
        continue
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
      continue  # another worker got there first
    _requeue(study, t, 'worker died')
    retried.append(t.number)
  if retried:
    logging.warning('Trials %s were interrupted (their worker died); queued again', retried)
  with warnings.catch_warnings():  # fail_stale_trials is 'experimental'
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)  # calls _requeue_stale for each
  return retried


def structural_keys(params: Mapping[str, Any], member_keys: tuple[str, ...]) -> dict[str, Any]:
  return {k: v for k, v in params.items() if k not in member_keys}


def _with(config: ml_collections.ConfigDict,
          values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """An unlocked copy of ``config`` with ``values`` set."""
  c = copy.deepcopy(config)
  c.unlock()
  return configlib.with_values(c, dict(values))


def _number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(v: Any) -> Any:
  return tuple(v) if isinstance(v, list) else v


def _key(values: Mapping[str, Any]) -> str:
  return repr(sorted(((k, _plain(v)) for k, v in values.items()), key=lambda kv: kv[0]))


def _pop_value(v: Any) -> str:
  """A value as `research.population.parse_spec` reads it back: numbers exactly
  (``repr(float)``; population casts integer keys back), words as they are,
  True/False, tuples as ``(64,64)`` (``(256,)`` for one element)."""
  if isinstance(v, (tuple, list)):
    inner = ','.join(str(x) if isinstance(x, int) else _pop_value(x) for x in v)
    return f'({inner},)' if len(v) == 1 else f'({inner})'
  return repr(float(v)) if _number(v) else str(v)


def population_run(config: ml_collections.ConfigDict, structure: Mapping[str, Any],
                   members: list[Mapping[str, Any]],
                   runs_dir: Path) -> tuple[ml_collections.ConfigDict, Path]:
  """The config and run directory of trials trained as one zip population.

  ``structure`` holds the values they share (set on the config), ``members``
  each trial's own values (numeric hyperparameters, and the structural values
  that vary inside the program); a key a member lacks takes the config's value.
  Every member uses the config's seed. The directory is
  ``runs_dir/<hash of structure and members>``."""
  c = _with(config, structure)
  seed = int(configlib.get_path(c, 'seed'))
  cols = {'seed': [_pop_value(seed)] * len(members)}
  for k in sorted({k for m in members for k in m}):
    cols[k] = [_pop_value(m.get(k, configlib.get_path(c, k))) for m in members]
  c.population = ' '.join(f'{k}={",".join(vs)}' for k, vs in cols.items())
  c.population_mode = 'zip'
  key = json.dumps({'structure': {k: repr(v) for k, v in sorted(structure.items())},
                    'members': [{k: repr(float(v)) if _number(v) else repr(_plain(v))
                                 for k, v in sorted(m.items())} for m in members]},
                   sort_keys=True)
  run_dir = runs_dir / hashlib.sha1(key.encode()).hexdigest()[:12]
  from research import distributed
  if distributed.is_writer():  # (a multi-process worker's process 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / 'population.json').write_text(key)
  return c, run_dir


def train_population(config: ml_collections.ConfigDict, structure: Mapping[str, Any],
                     members: list[Mapping[str, Any]], runs_dir: Path,
                     train_fn: Callable) -> tuple[dict, Path]:
  """Trains trials as one zip population (`population_run`)."""
  c, run_dir = population_run(config, structure, members, runs_dir)
  return train_fn(c, run_dir), run_dir


@dataclasses.dataclass
class Program:
  """Trials of a batch that train as one population."""
  structure: dict[str, Any]  # the values its trials share (set on the config)
  trials: list[int]  # indices into the batch, in order
  members: list[dict[str, Any]]  # per trial: numeric values, and structural values that vary
  kinds: list[int]  # per trial: its kind (distinct structure) within the program

  @property
  def num_kinds(self) -> int:
    return len(set(self.kinds))


def plan_programs(config: ml_collections.ConfigDict, batch: list[Mapping[str, Any]],
                  member_keys: tuple[str, ...], dataset_fn: Callable | None = None,
                  devices: int | None = None) -> list[Program]:
  """Which trials of a batch (each a dict of config values) train together.

  Trials first split by the values of every key that cannot vary inside one
  program (neither a numeric ``member_keys`` nor one of
  `research.structure.mixable_keys`). Within such a group the distinct
  combinations of mixable structural values are kinds, and
  `research.structure.program_groups` (over ``devices``, default every JAX
  device) decides which kinds share a program, from the padded FLOPs of a
  member-step (`research.structure.padded_flops` on ``dataset_fn(data
  config)``, called only when widths vary). Kinds that cannot share a program
  exactly never do. Programs come in the order of their first trial."""
  groups: dict[str, list[int]] = {}
  fixed_of, mix_of = [], []
  for i, values in enumerate(batch):
    others = structural_keys(values, member_keys)
    mixable = structure_lib.mixable_keys(_with(config, others)) if others else ()
    fixed_of.append({k: v for k, v in others.items() if k not in mixable})
    mix_of.append({k: v for k, v in others.items() if k in mixable})
    groups.setdefault(_key(fixed_of[i]), []).append(i)
  programs = []
  for idx in groups.values():
    fixed = fixed_of[idx[0]]
    gconfig = _with(config, fixed)
    keys = sorted({k for i in idx for k in mix_of[i]})
    kind_of: dict[str, int] = {}
    kinds: list[dict[str, Any]] = []
    of_kind: list[list[int]] = []
    for i in idx:
      kind = {k: _plain(mix_of[i].get(k, configlib.get_path(gconfig, k))) for k in keys}
      j = kind_of.setdefault(_key(kind), len(kinds))
      if j == len(kinds):
        kinds.append(kind)
        of_kind.append([])
      of_kind[j].append(i)
    parts = [[0]]
    if len(kinds) > 1:
      flops = _flops_fn(gconfig, kinds, [[batch[i] for i in t] for t in of_kind], keys,
                        dataset_fn)
      # Training steps weigh each program's fixed cost against its per-step costs.
      steps = (structure_lib.program_steps(gconfig, dataset_fn(gconfig.data))
               if dataset_fn is not None else None)
      parts = structure_lib.program_groups(kinds, [len(t) for t in of_kind], flops,
                                           devices=devices or len(jax.devices()), steps=steps)
    for part in parts:
      part = sorted(part)
      trials = sorted(i for j in part for i in of_kind[j])
      trial_kind = {i: j for j in part for i in of_kind[j]}
      varied = [k for k in keys if len({repr(kinds[j][k]) for j in part}) > 1]
      # Shared structural values go to the config (when a trial set them), varied ones
      # to the members; a program of one kind is what a run of that structure is.
      shared = {k: kinds[part[0]][k] for k in keys
                if k not in varied and any(k in mix_of[i] for i in trials)}
      members = [{**{k: v for k, v in batch[i].items() if k in member_keys},
                  **{k: kinds[trial_kind[i]][k] for k in varied}} for i in trials]
      programs.append(Program({**fixed, **shared}, trials, members,
                              [part.index(trial_kind[i]) for i in trials]))
  return sorted(programs, key=lambda p: p.trials[0])


def _flops_fn(config, kinds: list[dict], trials: list[list[Mapping[str, Any]]],
              keys: list[str], dataset_fn) -> Callable[[list[int]], float]:
  """``kind indices -> padded FLOPs of a member-step`` in the program holding
  them; infinite for kinds that cannot share a program exactly (widths of
  different lengths, dropout or layer norm over a varied width, free bits with a
  varied latent), so that the cost model never merges them."""
  model_keys = [k for k in keys if k not in structure_lib.RULE_KEYS]
  if all(len({repr(kind[k]) for kind in kinds}) == 1 for k in model_keys):
    return lambda _: 1.0  # one model for every kind: only optimizer rules differ
  by_model: dict[str, float] = {}  # programs of the same (widest) model cost the same

  def flops(idx: list[int]) -> float:
    members = [kinds[j] for j in idx]
    try:
      if len(idx) > 1:
        varied = [k for k in keys if len({repr(m[k]) for m in members}) > 1]
        structure_lib.refuse_inexact(config, varied, [dict(v) for j in idx for v in trials[j]])
      if dataset_fn is None:
        raise ValueError('no data to estimate the cost of mixing widths')
      model, _ = structure_lib.program_model(config, members, model_keys)
      key = model.to_json_best_effort(sort_keys=True)
      if key not in by_model:
        by_model[key] = structure_lib.padded_flops(config, members, dataset_fn(config.data),
                                                   keys=keys)
      return by_model[key]
    except ValueError as e:
      logging.info('Trials of structure %s train in separate programs: %s', members, e)
      return math.inf
  return flops


def optuna_pruner(spec: str, config: ml_collections.ConfigDict) -> optuna.pruners.BasePruner:
  """``'optuna_asha[:eta=E,min=M]'`` -> Optuna's ``SuccessiveHalvingPruner``,
  ``'optuna_hyperband[:eta=E,min=M,brackets=B]'`` -> its ``HyperbandPruner``, set
  like `research.pruning`'s ``asha`` / ``hyperband`` rule with the same arguments
  (its defaults too) on ``config``'s run. Trials report at the epochs of their
  evaluations, so resources are epochs: our rungs at evaluation ``min * eta**k``
  (1-based) are Optuna's at step ``min * eta**k * train.eval_every``; no
  bootstrap, no early-stopping rate. Hyperband gets the number of brackets
  ours would (``max_resource = min_resource * eta**(brackets - 1)``); Optuna
  assigns trials to brackets by a hash of the trial number, weighted towards
  the aggressive brackets, where ours alternates members."""
  kind, sep, args = (spec or '').strip().partition(':')
  if kind not in TRIAL_PRUNERS:
    raise ValueError(f'unknown trial pruner {spec!r}; known: '
                     "'optuna_asha[:eta=E,min=M]', 'optuna_hyperband[:eta=E,min=M,brackets=B]'")
  epochs = int(config.train.epochs)
  eval_every = max(1, int(config.train.eval_every))
  evaluations = len(range(eval_every, epochs + 1, eval_every)) + bool(epochs % eval_every)
  try:
    rule = pruning.parse(kind.removeprefix('optuna_') + sep + args, evaluations)
  except ValueError as e:  # 'train.prune=<rule>: why' -> '<spec>: why'
    raise ValueError(f'{spec}: {str(e).partition(": ")[2]}') from None
  min_resource = rule.min * eval_every
  if rule.kind == 'asha':
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_resource, reduction_factor=rule.eta, min_early_stopping_rate=0,
        bootstrap_count=0)
  return optuna.pruners.HyperbandPruner(
      min_resource=min_resource, max_resource=min_resource * rule.eta ** (rule.brackets - 1),
      reduction_factor=rule.eta, bootstrap_count=0)


PLAN_WAIT_S = 120  # how long a worker waits for another to finish queuing the plan


def _open_study(store, study_name: str, direction: str, pruner, signature: dict[str, str],
                metric: str, plan: Callable[[], list[dict]], workdir: Path,
                shared_locks: bool) -> optuna.Study:
  """Creates the study, or loads it and checks its signature.

  The worker whose ``create_study`` succeeds (the database decides: study names are
  unique) queues the plan (grid, random) and then records the signature, ``method``
  last: a study with ``method`` is complete. A worker that finds the study without
  it waits for the creator (up to `PLAN_WAIT_S`; workers of one workdir, which hold
  its lock (``shared_locks``), cannot meet a creator at work: theirs died while
  queuing) and then finishes the plan itself: the planned points not yet queued
  (``point``), then the signature."""
  try:
    study = optuna.create_study(study_name=study_name, storage=store, direction=direction,
                                pruner=pruner)
  except optuna.exceptions.DuplicatedStudyError:
    study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner)
    deadline = time.time() + (0 if shared_locks else PLAN_WAIT_S)
    while 'method' not in study.user_attrs and time.time() < deadline:
      time.sleep(0.5)
  saved = study.user_attrs
  if 'method' not in saved:
    if study.get_trials(deepcopy=False):
      logging.warning('Study %r was created but its plan not fully queued (its creator '
                      'stopped?): queuing the rest', study_name)
    queued = {t.user_attrs.get('point') for t in study.get_trials(deepcopy=False)}
    if signature['method'] in ('grid', 'random'):
      for i, point in enumerate(plan()):
        if i not in queued:
          study.enqueue_trial(point, user_attrs={'point': i})
    # The split comes with the first population's results ('val/nelbo', or
    # 'train/nelbo' for data without a validation split); until then the bare name.
    study.set_user_attr('metric', metric)
    for k, v in signature.items():
      if k != 'method':
        study.set_user_attr(k, v)
    study.set_user_attr('method', signature['method'])
    return study
  diff = [k for k, v in signature.items() if saved.get(k) != v]
  if 'config' in diff and saved.get('config'):
    a = configlib.flatten(ml_collections.ConfigDict(json.loads(saved['config'])))
    b = configlib.flatten(ml_collections.ConfigDict(json.loads(signature['config'])))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    diff[diff.index('config')] = f'config (keys differ: {keys})'
  if diff:
    raise ValueError(f'{workdir} (study {study_name!r}) holds a sweep with a different '
                     f'{", ".join(diff)}; use a new --workdir or --study_name, or the '
                     'same settings to resume')
  return study


def run_sweep(config: ml_collections.ConfigDict, space: Mapping[str, Any], method: str,
              trials: int, workdir: str | Path, storage: str | None = None,
              study_name: str = 'sweep', batch: int = 8, seed: int = 0,
              bayes_sampler: str = 'tpe', startup: int | None = None,
              train_fn: Callable | None = None, config_ref: str = '',
              report: bool = True, heartbeat_s: int = 60, trial_pruner: str = '') -> dict:
  """Runs (or resumes, or joins) a sweep; returns its summary (results.json).

  ``heartbeat_s``: seconds between trial heartbeats on RDB storages (0: off).
  ``trial_pruner`` (`TRIAL_PRUNERS`, `optuna_pruner`): Optuna's pruner decides
  each trial, trained alone (``batch`` is then 1; ``train_fn`` must take
  ``on_evaluation``, as `train_and_evaluate` does).

  With several JAX processes (`research.distributed`: one worker made of several
  hosts) every process calls this; process 0 alone touches the storage, the locks
  and the report files, and shares what it decided (`distributed.from_writer`):
  whether the study opened, each batch it asked (trial numbers and parameters), each
  per-evaluation pruning decision, the end. Every process then trains the same
  populations together. The others return {}."""
  from research import distributed
  from research.sweep import report as report_lib
  if method not in METHODS:
    raise ValueError(f'Unknown sweep method {method!r}; known: {list(METHODS)}')
  if bayes_sampler not in SAMPLERS:
    raise ValueError(f'Unknown sampler {bayes_sampler!r}; known: {list(SAMPLERS)}')
  if batch < 1:
    raise ValueError(f'batch (--population_size) must be >= 1, got {batch}')
  if method != 'grid' and trials < 1:
    raise ValueError(f'--trials must be >= 1 for {method} search, got {trials}')
  space_lib.validate(space, config)
  pruner = None
  if trial_pruner:
    if config.train.get('prune', ''):
      raise ValueError(f'train.prune={config.train.prune!r} prunes inside populations; '
                       f'--pruner={trial_pruner} prunes trials one by one: use one of them')
    pruner = optuna_pruner(trial_pruner, config)
    if batch != 1:
      logging.info('--pruner=%s: trials train one at a time (population size 1, not %d)',
                   trial_pruner, batch)
    batch = 1
  if train_fn is None:
    from research.train import train_and_evaluate as train_fn
  workdir = Path(workdir).absolute()
  task = make_task(config.task)
  member_keys = population.member_keys(task.hparam_keys)
  direction = 'minimize' if task.select_mode == 'min' else 'maximize'
  metric = task.select_metric
  planned = _plan('grid', space, trials, seed) if method == 'grid' else None
  if planned is not None:
    trials = len(planned)
  signature = _signature(method, space, trials, config, seed, bayes_sampler)
  if trial_pruner:  # (absent otherwise, so that older studies keep their signature)
    signature['trial_pruner'] = trial_pruner
  lock = workdir / 'sweep.lock'
  datasets = _dataset_loader()  # for the cost of mixing widths, loaded when first needed
  t_start = time.time()
  leader = distributed.is_writer()
  held: dict[str, Any] = {}  # process 0's worker, study, asked trials and summary

  def open_study():
    store = make_storage(storage, workdir, heartbeat_s)  # a bad URL: no workdir written
    workdir.mkdir(parents=True, exist_ok=True)
    held['worker'] = _Worker(workdir)
    with _flock(lock):
      held['study'] = _open_study(
          store, study_name, direction, pruner, signature, metric,
          lambda: planned or _plan(method, space, trials, seed), workdir,
          shared_locks=shared_locks)

  shared_locks = storage in (None, '', 'journal', 'sqlite')
  # On a URL shared by machines, a RUNNING trial without a worker may be a live
  # remote asker's (see `_worker_alive`); its first heartbeat follows at once.
  orphan_grace_s = None if shared_locks else 3 * (heartbeat_s if heartbeat_s > 0 else 60)

  def ask() -> list:
    study, worker = held['study'], held['worker']
    with _flock(lock):
      recover_orphans(study, workdir, orphan_grace_s)
      all_trials = study.get_trials(deepcopy=False)
      c = _counts(all_trials)
      study.sampler = _sampler(method, seed, len(all_trials), bayes_sampler,
                               startup if startup is not None else min(10, batch))
      held['asked'] = {}
      beats = _heartbeat_interval(study)
      fresh_left = (trials - c['counted'] - c['waiting']) if method == 'bayes' else 0
      waiting = c['waiting']
      while len(held['asked']) < batch:
        if waiting > 0:
          waiting -= 1
        elif fresh_left > 0:
          fresh_left -= 1
        else:
          break
        t = study.ask()
        why = _superfluous(study, t, method != 'bayes')
        if why:
          logging.warning('Trial %d dropped (%s: another machine asked at the same time)',
                          t.number, why)
          t.set_user_attr('fail_reason', why)
          study.tell(t, state=TrialState.FAIL)
          if why == 'unplanned':
            break  # the queue is empty
          continue
        if beats:  # from now on Optuna's staleness covers it (not only once training starts)
          study._storage.record_heartbeat(t._trial_id)
        t.set_user_attr('worker', worker.id)
        space_lib.suggest(t, space)
        held['asked'][t.number] = t
    return [[number, t.params] for number, t in held['asked'].items()]

  def write_report():
    if report:
      with _flock(lock):
        held['summary'] = report_lib.write(held['study'], workdir, space, config, config_ref,
                                           t_start)

  try:
    distributed.from_writer(open_study)
    while True:
      shared = distributed.from_writer(ask)  # [[trial number, Optuna's params], ...]
      if not shared:
        break
      study = held.get('study')
      items = [(held['asked'][n] if leader else None, space_lib.decode(space, params))
               for n, params in shared]
      with (_heartbeats(study, [t for t, _ in items]) if leader else contextlib.nullcontext()):
        _train_batch(study, config, items, member_keys, metric, workdir, train_fn, datasets,
                     trial_pruning=pruner is not None)
    distributed.from_writer(write_report)
    return held.get('summary', {})
  finally:
    if 'worker' in held:
      held['worker'].close()


def _dataset_loader() -> Callable:
  """``data config -> Dataset``, each loaded once (on first use)."""
  def load(data_config):
    from research.data import load_dataset
    return load_dataset(data_config)
  return configlib.once_per_config(load)


def _train_batch(study, config, asked, member_keys, metric, workdir, train_fn,
                 dataset_fn=None, trial_pruning=False):
  batch = [values for _, values in asked]
  for program in plan_programs(config, batch, member_keys, dataset_fn):
    _train_program(study, config, [asked[i] for i in program.trials], program, member_keys,
                   metric, workdir, train_fn, dataset_fn, trial_pruning)


def _trial_pruning(trial, run_dir: Path, metric: str, reported: dict):
  """``on_evaluation`` for a run of one trial: reports the value at each evaluation's
  epoch to the trial and stops the run when the study's pruner says so (``reported``:
  epoch -> the decision). A run that resumes first reports what its metrics.jsonl
  already holds (so that Optuna's rungs see the values of the epochs they were
  reached at); an epoch trained again after the resume gets the decision made then."""
  curves = _member_curves(run_dir, f'val/{metric}') or _member_curves(run_dir, f'train/{metric}')

  def report(epoch: int, value: float) -> bool:
    if epoch in reported:
      return reported[epoch]
    if not math.isfinite(value):
      return False  # a diverged member stops by itself
    trial.report(value, epoch)
    reported[epoch] = trial.should_prune()
    return reported[epoch]

  for epoch, value in curves.get(0, []):
    report(epoch, value)
  return lambda epoch, values: np.array([report(int(epoch), float(values[0]))])


def _train_program(study, config, items, program: Program, member_keys, metric, workdir,
                   train_fn, dataset_fn, trial_pruning=False):
  """Trains one program and tells its trials (``items``: (trial, values) in order);
  with ``trial_pruning`` (one trial), the study's pruner may stop it. On processes
  other than 0 of a multi-process worker ``study`` and the trials are None: they
  train the same program and tell nothing (process 0 shares each pruning decision)."""
  from research import distributed
  from research.train import DivergenceError
  t0 = time.time()
  run_dir = None
  reported = [{} for _ in items]  # per trial: epochs already reported (-> prune decision)

  def record(t, wall):
    t.set_user_attr('run', str(run_dir.relative_to(workdir)))
    t.set_user_attr('program_members', len(items))
    t.set_user_attr('program_kinds', program.num_kinds)
    t.set_user_attr('program_wall_s', wall)

  try:
    c, run_dir = population_run(config, program.structure, program.members, workdir / 'runs')
    if trial_pruning:
      (trial, _), = items
      rule = []  # process 0: the trial's pruning rule, built at the first evaluation

      def on_evaluation(epoch, values):
        def should_prune() -> bool:
          if not rule:
            rule.append(_trial_pruning(trial, run_dir, metric, reported[0]))
          return bool(rule[0](epoch, values)[0])
        return np.array([distributed.from_writer(should_prune)])

      out = train_fn(c, run_dir, on_evaluation=on_evaluation)
    else:
      out = train_fn(c, run_dir)
  except Exception as e:  # noqa: BLE001 - tell the trials, then decide
    if isinstance(e, ValueError) and program.num_kinds > 1:
      # A mix the structure checks refuse (an unusual parameter layout): one program per kind.
      logging.warning('Trials %s cannot train as one program (%s); training each structure '
                      'separately', [t.number for t, _ in items if t is not None], e)
      for k in range(program.num_kinds):
        sub = [item for item, kind in zip(items, program.kinds) if kind == k]
        (single,) = plan_programs(config, [v for _, v in sub], member_keys, dataset_fn)
        _train_program(study, config, [sub[i] for i in single.trials], single, member_keys,
                       metric, workdir, train_fn, dataset_fn, trial_pruning)
      return
    reason = 'diverged' if isinstance(e, DivergenceError) else f'error: {type(e).__name__}: {e}'
    wall = time.time() - t0
    if study is not None:
      for t, _ in items:
        if run_dir is not None:
          record(t, wall)
        t.set_user_attr('fail_reason', reason[:500])
        study.tell(t, state=TrialState.FAIL)
    if isinstance(e, DivergenceError):
      logging.warning('Population of trials %s diverged: %s',
                      [t.number for t, _ in items if t is not None], e)
      return
    raise
  if study is None:  # another process than 0: process 0 tells
    return
  wall = time.time() - t0
  selected = _selected_metric(out, metric)
  if study.user_attrs.get('metric') != selected:
    study.set_user_attr('metric', selected)
  curves = _member_curves(run_dir, selected)
  computed = (out.get('member_steps') or {}).get('computed')
  for (t, _), m, done in zip(items, out['members'], reported):
    value = m.get(selected, float('nan'))
    for epoch, v in curves.get(m['member'], []):  # every evaluation, as Optuna's intermediate values
      if epoch not in done:
        t.report(v, epoch)
    record(t, wall)
    t.set_user_attr('select_metric', selected)
    t.set_user_attr('member', m['member'])
    if 'steps' in m:
      t.set_user_attr('member_steps', int(m['steps']))
    if computed is not None:  # rows x steps the program computed (stopped rows until compacted)
      t.set_user_attr('program_member_steps', int(computed))
    for k, v in m.items():
      if k.startswith('test/') and isinstance(v, float) and math.isfinite(v):
        t.set_user_attr(k.replace('/', '_'), v)
    if m.get('diverged') or not math.isfinite(value):
      t.set_user_attr('fail_reason', 'diverged')
      study.tell(t, state=TrialState.FAIL)
    elif m.get('pruned_epoch') is not None:  # stopped by train.prune inside its program
      study.tell(t, state=TrialState.PRUNED)
    else:
      study.tell(t, value)


def _member_curves(run_dir: Path, selected: str) -> dict[int, list[tuple[int, float]]]:
  """Per member, (epoch, value) of the selection metric at each of its evaluations
  (metrics.jsonl; the split is named 'train_eval' there when it is the training set)."""
  key = selected.replace('train/', 'train_eval/', 1) if selected.startswith('train/') else selected
  path = Path(run_dir) / 'metrics.jsonl'
  out: dict[int, list[tuple[int, float]]] = {}
  if not path.exists():
    return out
  for line in path.read_text().splitlines():
    r = json.loads(line)
    v = r.get(key)
    if isinstance(v, (int, float)) and math.isfinite(v):
      out.setdefault(r['member'], []).append((int(r['epoch']), float(v)))
  return out


def _selected_metric(out: Mapping[str, Any], metric: str) -> str:
  """The split-qualified metric the run selected on ('val/nelbo', or 'train/nelbo' for
  data without a validation split): results.json's ``select_metric``, else the
  validation metric when the members report it."""
  if out.get('select_metric'):
    return str(out['select_metric'])
  return f'val/{metric}' if f'val/{metric}' in out['members'][0] else f'train/{metric}'
