"""Sweeps on a real PostgreSQL server (tests/postgres_server.py starts one per session):
two "machines" share a study, one is killed with -9 mid-trial and the other retries
its trials once their heartbeats stop; and a missing driver is named in one line.

Without server binaries the server tests skip, except under CI=true, where they fail."""
import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from research.sweep import runner
from tests import postgres_server
from tests import sweep_worker as sw

REPO = Path(__file__).resolve().parents[1]
TS = optuna.trial.TrialState
HEARTBEAT_S = 1  # stale after 3 s without a beat
SLEEP_B = 4.0  # seconds per population on machine b (see the test's timeline)


@pytest.fixture(scope='session')
def postgres():
  """A running `postgres_server.Server`, stopped at the end of the session."""
  missing = None
  if postgres_server.find_bindir() is None:
    missing = 'no PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine'
  else:
    try:
      import psycopg  # noqa: F401
    except ImportError:
      missing = "no psycopg (pip install -e '.[dev]' installs it)"
  if missing:
    if os.environ.get('CI') == 'true':
      pytest.fail(f'{missing}; CI machines must have it')
    pytest.skip(missing)
  with postgres_server.running() as server:
    yield server


def _key(params):
  return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))


def _trained(workdir):
  """The parameter sets the stand-in trainer was called with in ``workdir``, in order."""
  import json
  path = Path(workdir) / 'calls.jsonl'
  calls = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
  return [_key({k: m[k] for k in ('optim.lr', 'task.beta')}) for c in calls for m in c['members']]


def _short(params):
  return _key({k: params[k] for k in ('optim.lr', 'task.beta')})


def _machine(host, workdir, url, trials, batch, sleep, start_at=None, heartbeat_s=HEARTBEAT_S):
  """tests/sweep_worker.py as a worker on host ``host`` (socket.gethostname says so),
  its sweep started at time ``start_at`` (default: as soon as it is imported)."""
  launcher = ('import runpy, socket, sys; host = sys.argv.pop(1); '
              'socket.gethostname = lambda: host; sys.argv[0] = "tests/sweep_worker.py"; '
              'runpy.run_path("tests/sweep_worker.py", run_name="__main__")')
  return subprocess.Popen(
      [sys.executable, '-c', launcher, host, str(workdir), 'random', str(trials), str(batch),
       str(sleep), url, str(heartbeat_s), *([str(start_at)] if start_at else [])], cwd=REPO, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONPATH': str(REPO)})


_storages = {}


def _trials(url):
  # One storage (one connection pool) per URL, made once the first worker has created the
  # tables: two processes creating Optuna's tables at once can collide.
  if url not in _storages:
    _storages[url] = optuna.storages.RDBStorage(url)
  return optuna.load_study(study_name='sweep', storage=_storages[url]).trials


def _wait(what, until, proc, timeout=90):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f'worker exited {proc.returncode} before {what}:\n{proc.stderr.read()}')
    try:
      if until():
        return
    except KeyError:  # the study is not created yet
      pass
    time.sleep(0.2)
  pytest.fail(f'timed out waiting for {what}')


def test_a_killed_machines_trials_are_retried_by_another_through_postgres(postgres, tmp_path):
  """Machines a and b (own workdirs, own host names, so no shared lock files) run
  one random sweep of 6 planned trials, populations of 2, heartbeats every 1 s, on
  one PostgreSQL database. a takes trials 0-1 and sleeps in them; b starts while a
  trains, must leave a's live trials alone, and trains 2-3; then a gets kill -9.
  Once a's last heartbeat is over 3 s old, b's next ask fails 0-1 and queues them
  again, and b trains them. b asks every SLEEP_B = 4 s, so its third ask (at the
  latest) comes after a's trials went stale even if the kill lands up to 4 s
  after b's first ask; a worker that finds nothing waiting stops, so a later ask
  is what retries them.

  Every planned trial ends COMPLETE exactly once; each parameter set is trained to
  completion once (b's calls are exactly the plan; a's two never finished); the
  budget is exact: planned methods (random, grid) enqueue each point once, so
  there is no overshoot (bayes may overshoot by up to one population per other
  worker asking at the same time, as the runner's docstring says)."""
  url = postgres.create_database(f'sweep_{uuid.uuid4().hex[:8]}')
  planned = runner._plan('random', sw.SPACE, 6, 0)
  t_start = time.time()
  a = _machine('machine-a', tmp_path / 'a', url, 6, 2, 600.0)
  b = None
  try:
    _wait('a trains', lambda: (tmp_path / 'a' / 'calls.jsonl').exists()
          and [t.state for t in _trials(url)].count(TS.RUNNING) == 2, a)
    b = _machine('machine-b', tmp_path / 'b', url, 6, 2, SLEEP_B)
    _wait('b trains', lambda: (tmp_path / 'b' / 'calls.jsonl').exists(), b)
    before = _trials(url)
    a_trials = [t for t in before if t.user_attrs.get('worker', '').startswith('machine-a-')]
    assert [t.state for t in a_trials] == [TS.RUNNING] * 2  # b left a's live trials alone
    a.send_signal(signal.SIGKILL)
    killed = datetime.datetime.now()
    a.wait()
    assert b.wait(timeout=120) == 0, b.stderr.read()
  finally:
    for p in (a, b):
      if p is not None and p.poll() is None:
        p.kill()
        p.wait()
  wall = time.time() - t_start

  trials = _trials(url)
  done = [t for t in trials if t.state == TS.COMPLETE]
  failed = [t for t in trials if t.state == TS.FAIL]
  first_b = min(t.datetime_start for t in trials if t.user_attrs['worker'].startswith('machine-b-'))
  assert len(trials) == 8 and len(done) == 6, (
      [(t.number, t.state) for t in trials],
      f'kill -9 came {(killed - first_b).total_seconds():.1f} s after b first asked')
  assert sorted(_key(t.params) for t in done) == sorted(map(_key, planned))  # each once
  assert {t.number for t in failed} == {t.number for t in a_trials}
  retries = [t for t in done if 'retry_of' in t.user_attrs]
  assert sorted((t.user_attrs['retry_of'], t.user_attrs['retry_reason']) for t in retries) == [
      (t.number, 'no heartbeat') for t in a_trials]
  assert all(t.user_attrs['worker'].startswith('machine-b-') for t in done)
  # Trained to completion once: b trained exactly the plan; a started its two, finished none.
  assert sorted(_trained(tmp_path / 'b')) == sorted(_short(p) for p in planned)
  assert sorted(_trained(tmp_path / 'a')) == sorted(_short(t.params) for t in a_trials)

  stale_after = max(t.datetime_complete for t in failed) - killed
  retried_after = max(t.datetime_start for t in retries) - killed
  print(f'\npostgres sweep: heartbeat {HEARTBEAT_S} s (stale after {3 * HEARTBEAT_S} s); '
        f'kill -9 -> trials failed {stale_after.total_seconds():.1f} s, retry asked '
        f'{retried_after.total_seconds():.1f} s, b done '
        f'{(max(t.datetime_complete for t in done) - killed).total_seconds():.1f} s; '
        f'test {wall:.1f} s')
  assert datetime.timedelta(seconds=2 * HEARTBEAT_S) <= stale_after  # not before the grace


def test_two_machines_started_at_the_same_moment_on_an_empty_database(postgres, tmp_path):
  """Machines a and b start their sweeps within milliseconds of each other on a
  database without Optuna's tables: both create the tables (PostgreSQL refuses one of
  two concurrent CREATEs with a unique violation; the storage retries) and the study
  (one wins; only the winner queues the plan, the other waits for it). Both finish,
  and the 6 planned trials are COMPLETE exactly once, with no other trial.

  Nobody is killed here, so the heartbeat is long (stale after 90 s): with the 1-s
  beat of the kill test, a loaded machine (CI with parallel test workers) can
  delay a live worker's beat past its 3-s grace, and the other worker then rightly
  fails and retries that trial, which is what the kill test checks, not this one."""
  url = postgres.create_database(f'sweep_{uuid.uuid4().hex[:8]}')
  planned = runner._plan('random', sw.SPACE, 6, 0)
  start = time.time() + 8  # after both have imported everything
  procs = [_machine(f'machine-{m}', tmp_path / m, url, 6, 2, 0.5, start_at=start, heartbeat_s=30)
           for m in 'ab']
  try:
    codes = [p.wait(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert codes == [0, 0], [p.stderr.read()[-3000:] for p in procs]
  assert time.time() > start
  trials = _trials(url)
  assert [t.state for t in trials] == [TS.COMPLETE] * 6, [(t.number, t.state) for t in trials]
  assert sorted(_key(t.params) for t in trials) == sorted(map(_key, planned))
  trained = _trained(tmp_path / 'a') + _trained(tmp_path / 'b')
  assert sorted(trained) == sorted(_short(p) for p in planned)  # each trained once


def test_a_postgresql_url_without_its_driver_names_the_package(tmp_path, monkeypatch):
  for name in ('psycopg', 'psycopg2'):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as when not installed
  with pytest.raises(ImportError, match=r"driver 'psycopg' is not installed: pip install "
                     r"'research\[postgres\]'") as e:
    runner.make_storage('postgresql://u:secret@db.example/sweep', tmp_path, heartbeat_s=60)
  assert '\n' not in str(e.value) and 'secret' not in str(e.value)
  with pytest.raises(ValueError, match="PostgreSQL's is 'postgresql://'"):
    runner.make_storage('postgres://db.example/sweep', tmp_path)


def test_an_unreachable_database_is_one_line_without_the_password(postgres, tmp_path):
  url = postgres.url('no_such_db').replace('postgres@', 'postgres:secret@')
  with pytest.raises(ValueError, match='no_such_db.*cannot connect: .*does not exist') as e:
    runner.make_storage(url, tmp_path, heartbeat_s=1)
  assert '\n' not in str(e.value) and 'secret' not in str(e.value)
