"""One sweep worker made of two processes (scripts/sweep.py --coordinator_address ...,
research/distributed.py): two processes on localhost, one CPU device each, against the
same sweep in one process with two devices. Process 0 alone talks to Optuna and writes
files; both train the populations. Also: kill -9 of process 0 mid-sweep, then both
processes re-run, and the sweep ends with the same values."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import REPO, script_command
from tests.test_distributed import _free_port

TS = optuna.trial.TrialState
ARGS = ('--config=configs/vae_digits.py:quick', '--space=small', '--method=random',
        '--trials=4', '--population_size=2', '--config.train.epochs=2',
        '--config.train.eval_every=1', '--config.train.progress=False')

# Process 1 runs under this audit hook: every file it opens for writing is logged to
# argv[1] at exit (Python-level opens; Orbax's C++ writes of its own shards are not seen).
_LOGGED = r'''
import atexit, json, runpy, sys
log_path = sys.argv.pop(1)
written = set()
def hook(event, args):
  if event == 'open' and isinstance(args[0], str):
    mode, flags = args[1], args[2]
    if (mode and any(c in mode for c in 'wax+')) or (mode is None and flags & 0o3):
      written.add(args[0])
  elif event in ('os.rename', 'os.replace') and isinstance(args[1], str):
    written.add(args[1])
sys.addaudithook(hook)
def dump():
  paths = sorted(written)
  with open(log_path, 'w') as f:
    json.dump(paths, f)
atexit.register(dump)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def _two_processes(workdir, port, log=None):
  env = dict(os.environ, RESEARCH_CPU_DEVICES='1')
  env.pop('XLA_FLAGS', None)
  procs = []
  for i in range(2):
    cmd = script_command('sweep.py', *ARGS, f'--workdir={workdir}',
                         f'--coordinator_address=localhost:{port}', '--num_processes=2',
                         f'--process_id={i}', '--heartbeat_timeout_s=5')
    if i == 1 and log is not None:
      cmd = [sys.executable, '-c', _LOGGED, str(log), *cmd[1:]]
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO, env=env))
  return procs


def _wait(procs, timeout=300):
  out = []
  for p in procs:
    try:
      o, e = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      p.kill()
      o, e = p.communicate()
    out.append((p.returncode, o, e))
  return out


def _study(workdir):
  from optuna.storages.journal import JournalFileBackend, JournalStorage
  storage = JournalStorage(JournalFileBackend(str(Path(workdir) / 'optuna.journal')))
  return optuna.load_study(study_name='sweep', storage=storage)


def _values(workdir):
  """{planned point: value} of the COMPLETE trials; each point COMPLETE exactly once."""
  done = [t for t in _study(workdir).trials if t.state == TS.COMPLETE]
  points = [t.user_attrs['point'] for t in done]
  assert sorted(points) == [0, 1, 2, 3], [(t.number, t.state, t.user_attrs) for t in done]
  return {t.user_attrs['point']: (t.params, t.value) for t in done}


def _same_values(a, b):
  assert a.keys() == b.keys()
  for k in a:
    assert a[k][0] == b[k][0]
    assert math.isclose(a[k][1], b[k][1], rel_tol=1e-5), (k, a[k][1], b[k][1])


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The same sweep in one process with two devices."""
  d = tmp_path_factory.mktemp('one_process') / 'sweep'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  p = subprocess.run(script_command('sweep.py', *ARGS, f'--workdir={d}'), capture_output=True,
                     text=True, cwd=REPO, env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return _values(d)


def test_a_sweep_worker_of_two_processes_equals_one_process_with_two_devices(tmp_path,
                                                                              reference):
  wd = tmp_path / 'sweep'
  log = tmp_path / 'process1_writes.json'
  (rc0, out0, err0), (rc1, out1, err1) = _wait(_two_processes(wd, _free_port(), log))
  assert rc0 == 0 and rc1 == 0, (err0[-3000:], err1[-3000:])
  _same_values(_values(wd), reference)
  assert len(_study(wd).trials) == 4  # nothing failed, nothing retried
  assert 'best:' in out0 and 'best:' not in out1  # process 0 reports the sweep
  runs = [json.loads(p.read_text()) for p in (wd / 'runs').glob('*/results.json')]
  assert len(runs) == 2 and all(r['mesh']['processes'] == 2 for r in runs)
  for f in ('results.json', 'trials.csv', 'best_config.txt', 'optuna.journal'):
    assert (wd / f).is_file(), f
  # Process 1 wrote no file of the sweep's, only (at most) checkpoint files of its shards.
  written = [Path(p).resolve() for p in json.loads(log.read_text())]
  mine = [p for p in written if p.is_relative_to(wd.resolve())]
  assert all('checkpoints' in p.relative_to(wd.resolve()).parts for p in mine), mine


def test_kill_9_of_process_0_mid_sweep_then_both_rerun_to_the_same_values(tmp_path, reference):
  wd = tmp_path / 'sweep'
  procs = _two_processes(wd, _free_port())
  deadline = time.time() + 240
  # kill -9 once the first population has its first checkpoint (epoch 1 of 2)
  while not list((wd / 'runs').glob('*/checkpoints/1')):
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.05)
  procs[0].send_signal(signal.SIGKILL)
  (_, _, _), (rc1, _, err1) = _wait(procs, timeout=90)  # process 1 stops by itself
  assert rc1 != 0
  assert not (wd / 'results.json').exists()  # the sweep was not done
  running = [t for t in _study(wd).trials if t.state == TS.RUNNING]
  assert running, 'the kill came after the sweep had told every trial'
  (rc0, _, err0), (rc1, _, err1) = _wait(_two_processes(wd, _free_port()))
  assert rc0 == 0 and rc1 == 0, (err0[-3000:], err1[-3000:])
  _same_values(_values(wd), reference)
  trials = _study(wd).trials
  failed = [t for t in trials if t.state == TS.FAIL]
  assert {t.number for t in failed} == {t.number for t in running}
  assert all(t.user_attrs['fail_reason'] == 'interrupted' for t in failed)
  assert len(trials) == 4 + len(failed)
