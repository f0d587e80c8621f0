"""The hang watchdog (research/watchdog.py) in real subprocesses: a blocked program
is ended with exit 75, one stderr line and a stack report; a slow but beating one
is left alone; timeout 0 is off."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from research import errors
from research.watchdog import Watchdog

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, body, timeout=60):
  program = textwrap.dedent("""
      import sys, threading, time
      from research.watchdog import Watchdog
      workdir = sys.argv[1]
  """) + textwrap.dedent(body)
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  env.pop('PYTHONSTARTUP', None)
  return subprocess.run([sys.executable, '-c', program, str(tmp_path)], capture_output=True,
                        text=True, timeout=timeout, cwd=tmp_path, env=env)


def test_a_blocked_program_exits_75_with_its_stacks(tmp_path):
  t0 = time.monotonic()
  p = _run(tmp_path, """
      def stuck_in_this_function():
        threading.Event().wait()

      with Watchdog(workdir, timeout_s=1) as dog:
        dog.beat(epoch=3, step=120)
        stuck_in_this_function()
  """)
  assert p.returncode == errors.EXIT_HANG, p.stderr
  assert time.monotonic() - t0 < 30
  hang = list(tmp_path.glob('hang-*.txt'))
  assert len(hang) == 1
  text = hang[0].read_text()
  assert 'stuck_in_this_function' in text
  assert 'Last completed: epoch 3, step 120' in text
  assert 'faulthandler' in text and 'traceback' in text
  assert 'py-spy' in text  # either its dump or how to get one
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1, p.stderr
  assert lines[0].startswith('error: no training progress for 1 s (last completed: epoch 3, '
                             'step 120); stacks in ')
  assert str(hang[0]) in lines[0]
  assert lines[0].endswith('exiting 75, re-run to resume')
  assert 'Traceback' not in p.stderr


def test_before_the_first_beat_the_first_timeout_applies(tmp_path):
  p = _run(tmp_path, """
      dog = Watchdog(workdir, timeout_s=1, first_timeout_s=4).start()
      time.sleep(2.5)   # longer than timeout_s, shorter than first_timeout_s
      dog.beat(epoch=1)
      print('survived compile', flush=True)
      threading.Event().wait()
  """)
  assert p.returncode == errors.EXIT_HANG, p.stderr
  assert 'survived compile' in p.stdout
  assert '(last completed: epoch 1)' in p.stderr
  assert len(list(tmp_path.glob('hang-*.txt'))) == 1


def test_a_program_that_beats_is_not_killed(tmp_path):
  p = _run(tmp_path, """
      with Watchdog(workdir, timeout_s=1) as dog:
        end = time.monotonic() + 3
        step = 0
        while time.monotonic() < end:
          time.sleep(0.2)
          step += 1
          dog.beat(step=step)
      time.sleep(1.5)   # stopped: no more beats needed
      print('done', flush=True)
  """)
  assert p.returncode == 0, p.stderr
  assert p.stdout.strip() == 'done'
  assert not list(tmp_path.glob('hang-*.txt'))


def test_slow_beats_stretch_the_timeout(tmp_path):
  # One interval of 0.5 s makes the timeout 5 s, so a later 2-s gap is no hang.
  p = _run(tmp_path, """
      with Watchdog(workdir, timeout_s=1) as dog:
        dog.beat(step=0)
        time.sleep(0.5)
        dog.beat(step=1)
        assert dog.timeout() >= 5, dog.timeout()
        time.sleep(2)
        dog.beat(step=2)
      print('done', flush=True)
  """)
  assert p.returncode == 0, p.stderr
  assert not list(tmp_path.glob('hang-*.txt'))


def test_timeout_zero_is_off(tmp_path):
  p = _run(tmp_path, """
      import threading as th
      with Watchdog(workdir, timeout_s=0) as dog:
        assert not dog.enabled
        assert not any(t.name == 'watchdog' for t in th.enumerate())
        time.sleep(1.5)
        dog.beat(step=1)
      print('done', flush=True)
  """)
  assert p.returncode == 0, p.stderr
  assert not list(tmp_path.glob('hang-*.txt'))


def test_timeouts_in_process(tmp_path):
  dog = Watchdog(tmp_path, timeout_s=10)
  assert dog.first_timeout_s == 20 and dog.timeout() == 20
  dog.beat(epoch=0)
  assert dog.timeout() == 10
  with Watchdog(tmp_path, timeout_s=100, first_timeout_s=5) as d:
    assert d.timeout() == 5
  assert d._thread is None


# -- the supervisor (research/supervise.py) ------------------------------------

DRIVER = '''
import os, sys, threading, time
from pathlib import Path

import pytest
from research import supervise
from research.watchdog import Watchdog

workdir, mode, retries = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
supervise.supervise(retries)  # the supervisor exits here with the child's code
with open(workdir / 'attempts', 'a') as f:
  f.write('x')
n = len((workdir / 'attempts').read_text())
if mode == 'hang_always' or (mode == 'hang_once' and n == 1):
  with Watchdog(workdir, timeout_s=1) as dog:
    dog.beat(attempt=n)
    threading.Event().wait()
if mode == 'exit3':
  sys.exit(3)
if mode == 'wait':
  (workdir / 'child.pid').write_text(str(os.getpid()))
  try:
    time.sleep(120)
  except KeyboardInterrupt:
    print('child interrupted', flush=True)
    sys.exit(130)
print(f'finished on attempt {n}', flush=True)
'''


def _driver(tmp_path, mode, retries=2, **kw):
  script = tmp_path / 'driver.py'
  script.write_text(DRIVER)
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  env.pop(supervise_env(), None)
  return subprocess.Popen([sys.executable, str(script), str(tmp_path), mode, str(retries)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=tmp_path, **kw)


def supervise_env():
  from research import supervise
  return supervise.ENV


def test_the_supervisor_reruns_a_hung_child(tmp_path):
  p = _driver(tmp_path, 'hang_once')
  out, err = p.communicate(timeout=120)
  assert p.returncode == 0, err
  assert out.strip() == 'finished on attempt 2'
  hang = list(tmp_path.glob('hang-*.txt'))
  assert len(hang) == 1
  lines = err.strip().splitlines()
  assert len(lines) == 2, err
  assert lines[0].startswith('error: no training progress for 1 s (last completed: attempt 1)')
  assert lines[1] == (f'run hung (stacks in {hang[0]}); resuming from the last checkpoint '
                      '(retry 1 of 2)')


def test_the_supervisor_gives_up_after_its_retries(tmp_path):
  p = _driver(tmp_path, 'hang_always', retries=1)
  out, err = p.communicate(timeout=120)
  assert p.returncode == errors.EXIT_HANG, err
  assert (tmp_path / 'attempts').read_text() == 'xx'
  assert len(list(tmp_path.glob('hang-*.txt'))) == 2
  lines = err.strip().splitlines()
  assert len(lines) == 4, err
  assert lines[1].endswith('(retry 1 of 1)')
  assert lines[3].startswith('error: run hung 2 time(s) (last stacks in ')
  assert 'Traceback' not in err


def test_the_supervisor_passes_other_exit_codes_on(tmp_path):
  p = _driver(tmp_path, 'exit3')
  _, err = p.communicate(timeout=120)
  assert p.returncode == 3, err
  assert (tmp_path / 'attempts').read_text() == 'x'
  assert err == ''


def _wait_for(path, timeout=60):
  end = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < end, f'{path} never appeared'
    time.sleep(0.1)
  time.sleep(0.3)


def test_ctrl_c_reaches_the_child_and_the_supervisor_prints_no_traceback(tmp_path):
  import signal
  p = _driver(tmp_path, 'wait', start_new_session=True)  # its own process group: a 'terminal'
  _wait_for(tmp_path / 'child.pid')
  os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
  out, err = p.communicate(timeout=60)
  assert p.returncode == 130, err
  assert out.strip() == 'child interrupted'
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err


def test_sigterm_to_the_supervisor_is_forwarded_to_the_child(tmp_path):
  import signal
  p = _driver(tmp_path, 'wait', start_new_session=True)
  _wait_for(tmp_path / 'child.pid')
  child = int((tmp_path / 'child.pid').read_text())
  p.send_signal(signal.SIGTERM)  # the supervisor only
  _, err = p.communicate(timeout=60)
  assert p.returncode == 128 + signal.SIGTERM, err
  with pytest.raises(ProcessLookupError):
    os.kill(child, 0)


SWEEP_DRIVER = '''
import sys, threading
from pathlib import Path
from research import supervise
from research.sweep import runner
from research.watchdog import Watchdog
from tests import sweep_worker as sw

workdir = Path(sys.argv[1])
supervise.supervise(2)

def train(config, run_dir):
  marker = workdir / 'hung_in'
  if not marker.exists():  # the first population hangs, as a stuck device call would
    marker.write_text(Path(run_dir).name)
    with Watchdog(run_dir, timeout_s=1) as dog:
      threading.Event().wait()
  return sw.fake_train(config, run_dir)

runner.run_sweep(sw.base_config(), sw.SPACE, 'random', 6, workdir, batch=3, train_fn=train,
                 report=False)
print('sweep done', flush=True)
'''


def test_a_hung_sweep_worker_is_restarted_and_retries_its_trials(tmp_path):
  import optuna
  from research.sweep import runner
  script = tmp_path / 'sweep_driver.py'
  script.write_text(SWEEP_DRIVER)
  workdir = tmp_path / 'sweep'
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  env.pop(supervise_env(), None)
  p = subprocess.run([sys.executable, str(script), str(workdir)], capture_output=True, text=True,
                     env=env, cwd=REPO, timeout=300)
  assert p.returncode == 0, p.stderr
  assert 'sweep done' in p.stdout
  hung_run = (workdir / 'hung_in').read_text()
  hang = list((workdir / 'runs' / hung_run).glob('hang-*.txt'))
  assert len(hang) == 1
  assert f'run hung (stacks in {hang[0]}); resuming from the last checkpoint (retry 1 of 2)' \
      in p.stderr
  study = optuna.load_study(study_name='sweep', storage=runner.make_storage(None, workdir))
  states = [t.state for t in study.get_trials()]
  TS = optuna.trial.TrialState
  assert TS.RUNNING not in states and TS.WAITING not in states
  assert states.count(TS.COMPLETE) == 6
  interrupted = [t for t in study.get_trials() if t.state == TS.FAIL]
  assert len(interrupted) == 3  # the hung worker's whole batch, each queued again once
  assert all(t.user_attrs['fail_reason'] == 'interrupted' for t in interrupted)
  retried = {t.user_attrs.get('retry_of') for t in study.get_trials() if t.state == TS.COMPLETE}
  assert {t.number for t in interrupted} <= retried
  # The retried batch forms the same population, so it trains in the hung run's directory.
  calls = [json.loads(l) for l in (workdir / 'calls.jsonl').read_text().splitlines()]
  assert hung_run in {c['run'] for c in calls}


# -- end to end: a real training run that stalls in a device callback ------------

TRAIN_DRIVER = '''
import json, os, sys, threading
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections

from research import cli, models, supervise
from research.train import train_and_evaluate

workdir, marker, watchdog_s = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
supervise.supervise(retries=2)
ckpts = workdir / 'checkpoints'
with open(workdir.parent / (workdir.name + '.attempts'), 'a') as f:  # checkpoints at the start
  f.write(json.dumps(sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
                     if ckpts.is_dir() else []) + '\\n')


def maybe_stall(_):
  # Once a checkpoint exists (so that the retry resumes one), the first time the
  # marker is missing: create it and never return, as a stuck device call would.
  ckpts = workdir / 'checkpoints'
  if marker.exists() or not ckpts.is_dir() or not any(p.name.isdigit() for p in ckpts.iterdir()):
    return
  marker.write_text(str(os.getpid()))
  threading.Event().wait()


class StallingLinear(nn.Module):
  num_outputs: int

  @nn.compact
  def __call__(self, x, train: bool = False, lengths=None):
    if train:
      jax.debug.callback(maybe_stall, x[0, 0])
    return nn.Dense(self.num_outputs)(x.reshape(x.shape[0], -1))


models.MODELS['stalling_linear'] = StallingLinear
config = cli.load_config('configs/mnist1d.py', 'model=linear,quick')
config.model = ml_collections.ConfigDict({'name': 'stalling_linear'})
config.train.epochs = 3
config.train.eval_every = 1
config.train.progress = False
config.train.watchdog_s = watchdog_s
out = train_and_evaluate(config, workdir)
(workdir / 'test_metrics.json').write_text(json.dumps(
    [{k: v for k, v in m.items() if k.startswith(('test/', 'val/')) or k == 'best_epoch'}
     for m in out['members']]))
print('trained', flush=True)
'''


def _train_driver(tmp_path, workdir, marker, watchdog_s):
  script = tmp_path / 'train_driver.py'
  script.write_text(TRAIN_DRIVER)
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  env.pop(supervise_env(), None)
  return subprocess.run([sys.executable, str(script), str(workdir), str(marker), str(watchdog_s)],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=500)


def _records(workdir):
  drop = ('time_s', 'perf/', 'wall')
  return [{k: v for k, v in json.loads(l).items() if not k.startswith(drop)}
          for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_a_stalled_training_run_is_restarted_and_ends_as_an_uninterrupted_one(tmp_path):
  # Detection takes max(watchdog_s, 10 x the longest interval between beats), the
  # latter ~10 x the first epoch's compile time here; 15 s keeps a compile on a busy
  # machine from tripping it before the stall.
  watchdog_s = 15
  ref_marker = tmp_path / 'never_stall'
  ref_marker.write_text('')
  ref = _train_driver(tmp_path, tmp_path / 'ref', ref_marker, watchdog_s)
  assert ref.returncode == 0, ref.stderr
  assert not list((tmp_path / 'ref').glob('hang-*.txt'))

  workdir, marker = tmp_path / 'stalled', tmp_path / 'stalled_once'
  p = _train_driver(tmp_path, workdir, marker, watchdog_s)
  assert p.returncode == 0, p.stderr
  assert 'trained' in p.stdout
  assert marker.exists()
  hang = list(workdir.glob('hang-*.txt'))
  assert len(hang) == 1, p.stderr
  text = hang[0].read_text()
  assert 'maybe_stall' in text  # the callback's frame, blocked inside the device program
  assert 'Last completed: epoch 1' in text
  assert 'error: no training progress for ' in p.stderr
  assert (f'run hung (stacks in {hang[0]}); resuming from the last checkpoint (retry 1 of 2)'
          in p.stderr)
  attempts = [json.loads(l) for l in (tmp_path / 'stalled.attempts').read_text().splitlines()]
  assert attempts == [[], [1]]  # the retry found epoch 1's checkpoint (and resumed from it)
  assert json.loads((workdir / 'test_metrics.json').read_text()) == \
      json.loads((tmp_path / 'ref' / 'test_metrics.json').read_text())
  assert _records(workdir) == _records(tmp_path / 'ref')


def test_a_child_stops_when_its_supervisor_is_killed(tmp_path):
  import signal
  p = _driver(tmp_path, 'wait', start_new_session=True)
  _wait_for(tmp_path / 'child.pid')
  child = int((tmp_path / 'child.pid').read_text())
  p.kill()  # SIGKILL: the supervisor cannot pass anything on
  p.communicate(timeout=60)
  end = time.monotonic() + 30
  while True:
    try:
      os.kill(child, 0)
    except ProcessLookupError:
      break
    # An exited child of a dead parent is reaped by init; until then it is a zombie.
    status = Path(f'/proc/{child}/status')
    if status.exists() and 'zombie' in status.read_text():
      break
    assert time.monotonic() < end, 'the child ran on without its supervisor'
    time.sleep(0.1)
