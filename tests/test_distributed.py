"""Multi-process runs (research/distributed.py): two processes on localhost, one CPU
device each, gloo collectives, train one run whose mesh spans both; they must end
with the numbers of one process with two devices, and resume after one of them
is killed with SIGKILL."""
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from research import distributed
from tests.helpers import REPO, train_command

ARGS = ('--config.train.epochs=4', '--config.train.eval_every=1',
        '--config.population=seed=0,1')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(workdir, n: int, port: int, *extra) -> list[subprocess.Popen]:
  """n processes of scripts/train.py on the small run (one CPU device each)."""
  env = dict(os.environ, RESEARCH_CPU_DEVICES='1')
  env.pop('XLA_FLAGS', None)
  return [subprocess.Popen(
      train_command(workdir, *ARGS, *extra, f'--coordinator_address=localhost:{port}',
                    f'--num_processes={n}', f'--process_id={i}', '--heartbeat_timeout_s=5'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
      for i in range(n)]


def _wait(procs, timeout=300) -> list[tuple[int, str]]:
  out = []
  for p in procs:
    _, err = p.communicate(timeout=timeout)
    out.append((p.returncode, err))
  return out


def _one_process_two_devices(workdir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = subprocess.run(train_command(workdir, *ARGS), capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((Path(workdir) / 'results.json').read_text())


def _records(workdir):
  recs = [json.loads(l) for l in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  for r in recs:
    r.pop('time_s'), r.pop('perf/examples_per_s')
  return recs


def _same_numbers(a_dir, a, b_dir, b):
  assert _records(a_dir) == _records(b_dir)  # every record, bit for bit
  for ma, mb in zip(a['members'], b['members']):
    for k in ma:
      if '/' in k or k in ('best_epoch', 'steps'):
        assert ma[k] == mb[k], k


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  d = tmp_path_factory.mktemp('one_process') / 'run'
  return d, _one_process_two_devices(d)


def test_two_processes_equal_one_process_with_two_devices(tmp_path, reference):
  procs = _start(tmp_path / 'run', 2, _free_port())
  for rc, err in _wait(procs):
    assert rc == 0, err[-3000:]
  out = json.loads((tmp_path / 'run/results.json').read_text())
  assert out['mesh']['processes'] == 2 and out['mesh']['member'] == 2
  _same_numbers(tmp_path / 'run', out, *reference)


def test_kill_9_of_one_process_then_both_rerun_resume_to_the_same_numbers(tmp_path, reference):
  wd = tmp_path / 'run'
  procs = _start(wd, 2, _free_port())
  deadline = time.time() + 240
  while not (wd / 'checkpoints' / '2').is_dir():  # killed after its second checkpoint
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  try:  # process 0 notices the missing heartbeats (5 s) and exits
    procs[0].communicate(timeout=60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    procs[0].communicate()
  procs[1].communicate()
  assert not (wd / 'results.json').exists()
  for rc, err in _wait(_start(wd, 2, _free_port())):  # the same command again, both processes
    assert rc == 0, err[-3000:]
  out = json.loads((wd / 'results.json').read_text())
  _same_numbers(wd, out, *reference)


def test_incomplete_process_flags_are_one_line_errors():
  with pytest.raises(ValueError, match='need --coordinator_address'):
    distributed.initialize(None, 2, 0)
  with pytest.raises(ValueError, match='needs --num_processes and --process_id'):
    distributed.initialize('localhost:1234', None, 0)
  with pytest.raises(ValueError, match=r'--process_id=2 must be in 0\.\.1'):
    distributed.initialize('localhost:1234', 2, 2)
  with pytest.raises(ValueError, match='expected HOST:PORT'):
    distributed.initialize('localhost', 2, 0)
  assert distributed.initialize(None, None, None) is False
  assert distributed.host({'a': np.arange(3)})['a'].tolist() == [0, 1, 2]
