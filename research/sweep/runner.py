"""Grid, random and Bayesian sweeps on an Optuna study, trained as populations.

``run_sweep(config, space, method, trials, workdir)``:

* **Study and storage.** One Optuna study in a storage (default: a journal
  file ``workdir/optuna.journal``; ``'sqlite'``: ``workdir/optuna.db``; or any
  SQLAlchemy URL such as ``postgresql://...`` shared by several machines).
  The study records its method, space, budget and base config; a re-run with
  different ones is refused with the differing item named.
* **Methods.** ``grid`` and ``random`` are planned: when the study is
  created, every point (the exact grid, `space.grid_points`; or ``trials``
  draws of Optuna's ``RandomSampler(seed)``) is enqueued once, and workers
  pop them. ``bayes`` asks Optuna's ``TPESampler`` (multivariate, grouped for
  conditional parameters, ``constant_liar`` so that trials still training
  count as pending) or ``GPSampler`` (needs torch) for each new trial, up to
  ``trials`` of them.
* **Populations.** A worker asks ``batch`` trials at a time; trials that
  agree on every structural value (anything that is not a per-member
  hyperparameter, `research.population.member_keys`) train as one
  ``population_mode='zip'`` population through `train_and_evaluate`, in
  ``workdir/runs/<hash of the population>``. Every trial uses the config's
  seed. Each member's value of the task's selection metric on the split the
  run selected on (results.json ``select_metric``: validation, or training for
  data without a validation split; never the test split; with its best
  parameters) is told back, and the study's ``metric`` and each trial's
  ``select_metric`` name that split; a diverged member
  or a non-finite value is told as FAIL (``user_attrs['fail_reason'] =
  'diverged'``) and the sweep goes on.
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
  again the same way. Across machines the budget may be overshot by up to a
  batch per worker (each machine has its own ask lock).

Outputs (`research.sweep.report`): ``trials.csv``, ``trials.md``,
``best_so_far.png``, ``importance.json``, ``best_config.txt`` (a ready
``scripts/train.py`` command line) and ``results.json``.
"""
from __future__ import annotations

import contextlib
import copy
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

import ml_collections
import optuna

from research import configlib, population
from research.sweep import space as space_lib
from research.tasks import make_task

METHODS = ('grid', 'random', 'bayes')
SAMPLERS = ('tpe', 'gp')
TrialState = optuna.trial.TrialState


def make_storage(storage: str | None, workdir: Path, heartbeat_s: int = 0):
  """None/'journal' -> journal file in workdir; 'sqlite' -> SQLite file there; else a URL.

  ``heartbeat_s > 0`` turns on Optuna's trial heartbeats for the RDB storages
  (sqlite and URLs): a trial silent for ``3 * heartbeat_s`` is stale and retried.
  The journal file has none; its workers share the workdir's locks instead."""
  if storage in (None, '', 'journal'):
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    return JournalStorage(JournalFileBackend(str(workdir / 'optuna.journal')))
  if storage == 'sqlite':
    storage = f'sqlite:///{(workdir / "optuna.db").absolute()}'
  elif '://' not in storage:
    raise ValueError(f"--storage must be 'journal', 'sqlite' or an SQLAlchemy URL, got {storage!r}")
  if heartbeat_s <= 0:
    return storage
  # Optuna calls heartbeats 'experimental' and warns that they are meant for
  # Study.optimize; we record them ourselves around ask/tell (`_heartbeats`).
  warnings.filterwarnings('ignore', 'Heartbeat of storage is supposed', UserWarning)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RDBStorage(storage, heartbeat_interval=int(heartbeat_s),
                                      grace_period=3 * int(heartbeat_s),
                                      heartbeat_stale_trial_callback=_requeue_stale)


@contextlib.contextmanager
def _heartbeats(study: optuna.Study, trials):
  """Records a heartbeat for each of ``trials`` now and every interval until exit."""
  storage = study._storage  # an RDBStorage comes wrapped in Optuna's cache: duck-type it
  interval = getattr(storage, 'get_heartbeat_interval', lambda: None)()
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


def _worker_alive(workdir: Path, worker: str | None) -> bool:
  """Whether a trial's worker may still be running it. False when its lock file
  is here and nobody holds it, or when the trial never got a worker (its asker
  died between asking and recording itself, inside the ask lock)."""
  if not worker:
    return False
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
    elif t.state == TrialState.FAIL and (t.user_attrs.get('fail_reason') == 'interrupted'
                                         or t.number in retried):
      out['interrupted'] += 1
    else:
      out['counted'] += 1
  return out


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


def recover_orphans(study: optuna.Study, workdir: Path) -> list[int]:
  """RUNNING trials of dead local workers -> FAIL ('interrupted') + a queued retry;
  with heartbeats on, also trials of any worker whose heartbeat went stale."""
  retried = []
  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    if _worker_alive(workdir, t.user_attrs.get('worker')):
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


def train_population(config: ml_collections.ConfigDict, structure: Mapping[str, Any],
                     members: list[Mapping[str, Any]], runs_dir: Path,
                     train_fn: Callable) -> tuple[dict, Path]:
  """Trains trials that share ``structure`` as one zip population."""
  c = copy.deepcopy(config)
  c.unlock()
  configlib.with_values(c, structure)
  numeric = sorted({k for m in members for k in m})
  seed = int(configlib.get_path(c, 'seed'))
  cols = {'seed': [seed] * len(members)}
  for k in numeric:
    cols[k] = [m.get(k, configlib.get_path(c, k)) for m in members]
  c.population = ' '.join(f'{k}={",".join(repr(float(v)) for v in vs)}' for k, vs in cols.items())
  c.population_mode = 'zip'
  key = json.dumps({'structure': {k: repr(v) for k, v in sorted(structure.items())},
                    'members': [{k: repr(float(v)) for k, v in sorted(m.items())} for m in members]},
                   sort_keys=True)
  run_dir = runs_dir / hashlib.sha1(key.encode()).hexdigest()[:12]
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / 'population.json').write_text(key)
  return train_fn(c, run_dir), run_dir


def run_sweep(config: ml_collections.ConfigDict, space: Mapping[str, Any], method: str,
              trials: int, workdir: str | Path, storage: str | None = None,
              study_name: str = 'sweep', batch: int = 8, seed: int = 0,
              bayes_sampler: str = 'tpe', startup: int | None = None,
              train_fn: Callable | None = None, config_ref: str = '',
              report: bool = True, heartbeat_s: int = 60) -> dict:
  """Runs (or resumes, or joins) a sweep; returns its summary (results.json).

  ``heartbeat_s``: seconds between trial heartbeats on RDB storages (0: off)."""
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
  if train_fn is None:
    from research.train import train_and_evaluate as train_fn
  workdir = Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  task = make_task(config.task)
  member_keys = population.member_keys(task.hparam_keys)
  direction = 'minimize' if task.select_mode == 'min' else 'maximize'
  metric = task.select_metric
  planned = _plan('grid', space, trials, seed) if method == 'grid' else None
  if planned is not None:
    trials = len(planned)
  signature = _signature(method, space, trials, config, seed, bayes_sampler)
  store = make_storage(storage, workdir, heartbeat_s)
  worker = _Worker(workdir)
  lock = workdir / 'sweep.lock'
  t_start = time.time()
  try:
    with _flock(lock):
      study = optuna.create_study(study_name=study_name, storage=store, direction=direction,
                                  load_if_exists=True)
      saved = study.user_attrs
      if 'method' not in saved:
        for k, v in signature.items():
          study.set_user_attr(k, v)
        # The split comes with the first population's results ('val/nelbo', or
        # 'train/nelbo' for data without a validation split); until then the bare name.
        study.set_user_attr('metric', metric)
        if method in ('grid', 'random'):
          for i, point in enumerate(planned or _plan(method, space, trials, seed)):
            study.enqueue_trial(point, user_attrs={'point': i})
      else:
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
    while True:
      with _flock(lock):
        recover_orphans(study, workdir)
        all_trials = study.get_trials(deepcopy=False)
        c = _counts(all_trials)
        study.sampler = _sampler(method, seed, len(all_trials), bayes_sampler,
                                 startup if startup is not None else min(10, batch))
        asked = []
        fresh_left = (trials - c['counted'] - c['waiting']) if method == 'bayes' else 0
        waiting = c['waiting']
        for _ in range(batch):
          if waiting > 0:
            waiting -= 1
          elif fresh_left > 0:
            fresh_left -= 1
          else:
            break
          t = study.ask()
          t.set_user_attr('worker', worker.id)
          asked.append((t, space_lib.suggest(t, space)))
      if not asked:
        break
      with _heartbeats(study, [t for t, _ in asked]):
        _train_batch(study, config, asked, member_keys, metric, workdir, train_fn)
    if report:
      with _flock(lock):
        return report_lib.write(study, workdir, space, config, config_ref, t_start)
    return {}
  finally:
    worker.close()


def _train_batch(study, config, asked, member_keys, metric, workdir, train_fn):
  groups: dict[str, list] = {}
  for t, values in asked:
    s = structural_keys(values, member_keys)
    groups.setdefault(repr(sorted(s.items(), key=lambda kv: kv[0])), []).append((t, values, s))
  for items in groups.values():
    structure = items[0][2]
    members = [{k: v for k, v in values.items() if k in member_keys} for _, values, _ in items]
    t0 = time.time()
    try:
      out, run_dir = train_population(config, structure, members, workdir / 'runs', train_fn)
    except Exception as e:  # noqa: BLE001 - tell the trials, then decide
      from research.train import DivergenceError
      reason = 'diverged' if isinstance(e, DivergenceError) else f'error: {type(e).__name__}: {e}'
      for t, _, _ in items:
        t.set_user_attr('fail_reason', reason[:500])
        study.tell(t, state=TrialState.FAIL)
      if isinstance(e, DivergenceError):
        logging.warning('Population of trials %s diverged: %s', [t.number for t, _, _ in items], e)
        continue
      raise
    wall = time.time() - t0
    selected = _selected_metric(out, metric)
    if study.user_attrs.get('metric') != selected:
      study.set_user_attr('metric', selected)
    for (t, _, _), m in zip(items, out['members']):
      value = m.get(selected, float('nan'))
      t.set_user_attr('select_metric', selected)
      t.set_user_attr('run', str(run_dir.relative_to(workdir)))
      t.set_user_attr('member', m['member'])
      t.set_user_attr('population_size', len(items))
      t.set_user_attr('population_wall_s', wall)
      for k, v in m.items():
        if k.startswith('test/') and isinstance(v, float) and math.isfinite(v):
          t.set_user_attr(k.replace('/', '_'), v)
      if m.get('diverged') or not math.isfinite(value):
        t.set_user_attr('fail_reason', 'diverged')
        study.tell(t, state=TrialState.FAIL)
      else:
        study.tell(t, value)


def _selected_metric(out: Mapping[str, Any], metric: str) -> str:
  """The split-qualified metric the run selected on ('val/nelbo', or 'train/nelbo' for
  data without a validation split): results.json's ``select_metric``, else the
  validation metric when the members report it."""
  if out.get('select_metric'):
    return str(out['select_metric'])
  return f'val/{metric}' if f'val/{metric}' in out['members'][0] else f'train/{metric}'
