"""The hang watchdog (research/watchdog.py) in real subprocesses: a blocked program
is ended with exit 75, one stderr line and a stack report; a slow but beating one
is left alone; timeout 0 is off."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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
