"""Multi-process runs (research/distributed.py): two processes on localhost, one CPU
device each, gloo collectives, train one run whose mesh spans both; they must end
with the numbers of one process with two devices, also with the training split
streamed (each process places only its devices' share of each chunk), and resume
after one of them is killed with SIGKILL. Studies (scripts/reproduce.py) with two
processes: the refusal of those that cannot, `common.follow`, and (slow) the
mnist1d smoke study against one process. Sweeps: tests/test_sweep_distributed.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from research import distributed
from tests.helpers import REPO, run_script, script_command, train_command

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


# Two kinds of width (train.groups=kinds) whose members stop at different epochs, so that
# groups are skipped and compaction repacks the rows while the mesh spans two processes.
GROUPED = ('--config.population=seed=0,1,2,3 optim.lr=0.3,1e-3,0.1,3e-3 model.hidden=8,16,8,16',
           '--config.population_mode=zip', '--config.train.patience=1',
           '--config.train.compact=0.5', '--config.train.groups=kinds',
           '--config.train.epochs=8')


def test_two_processes_train_a_grouped_compacting_population_like_one_process(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = subprocess.run(train_command(tmp_path / 'one', *ARGS, *GROUPED), capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  one = json.loads((tmp_path / 'one/results.json').read_text())
  assert len(one['groups']) == 2
  assert one['member_steps']['computed'] < one['member_steps']['uncompacted']
  # a whole kind (members 0, 2 at width 8; 1, 3 at 16) stopped while the other trained on
  live = {}
  for r in _records(tmp_path / 'one'):
    live.setdefault(r['epoch'], {})[r['member']] = r['active'] and not r['diverged']
  assert any(not (m[k] or m[k + 2]) and (m[1 - k] or m[3 - k])
             for m in live.values() for k in (0, 1)), live
  for rc, err in _wait(_start(tmp_path / 'two', 2, _free_port(), *GROUPED)):
    assert rc == 0, err[-3000:]
  two = json.loads((tmp_path / 'two/results.json').read_text())
  assert two['mesh']['processes'] == 2 and two['groups'] == one['groups']
  assert two['member_steps'] == one['member_steps']
  _same_numbers(tmp_path / 'two', two, tmp_path / 'one', one)


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


def test_two_processes_streaming_equal_one_process_with_two_devices(tmp_path, reference):
  procs = _start(tmp_path / 'run', 2, _free_port(), '--config.data.stream=True')
  for rc, err in _wait(procs):
    assert rc == 0, err[-3000:]
  out = json.loads((tmp_path / 'run/results.json').read_text())
  assert out['mesh']['processes'] == 2
  _same_numbers(tmp_path / 'run', out, *reference)


# Each process places a chunk of streamed batches (research/stream.py `place`) on a
# (member, data) mesh over both processes' devices; the host split records which
# examples were read. Printed: per process, the examples read and whether each of its
# shards holds the right values; and the shape a device-resident split has on a device.
_PLACE = r'''
import json, sys
import numpy as np
from research import distributed, mesh, stream
distributed.initialize(f'localhost:{sys.argv[1]}', 2, int(sys.argv[2]))
import jax

class Recorded(np.ndarray):  # a host split that notes the examples read from it
  seen = set()
  def __getitem__(self, i):
    Recorded.seen.update(np.unique(np.asarray(i)).tolist())
    return np.asarray(self)[i]

x = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
split = {'x': x.view(Recorded)}
idx = np.random.default_rng(0).permutation(64).reshape(2, 4, 8)  # (K, chunk steps, batch)
out = {}
for name, members, data_parallel in (('member', 2, 1), ('data', 1, 2)):
  layout = mesh.make_layout(members, 8, data_parallel)
  Recorded.seen = set()
  k_idx = idx[:members]
  placed = stream.place(layout, split, k_idx)['x']
  ok = all(np.array_equal(np.asarray(s.data), x[k_idx][s.index]) for s in placed.addressable_shards)
  out[name] = {'seen': sorted(Recorded.seen), 'ok': ok, 'shape': list(placed.shape)}
resident = jax.device_put(x, mesh.make_layout(2, 8).replicated)
out['resident_shard'] = list(resident.addressable_shards[0].data.shape)
print('RESULT ' + json.dumps(out), flush=True)
'''


def test_streamed_chunks_are_gathered_by_each_process_for_its_own_devices_only():
  env = dict(os.environ, RESEARCH_CPU_DEVICES='1')
  env.pop('XLA_FLAGS', None)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, '-c', _PLACE, str(port), str(i)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  got = []
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    got.append(json.loads(out.split('RESULT ', 1)[1]))
  idx = np.random.default_rng(0).permutation(64).reshape(2, 4, 8)
  for i, g in enumerate(got):
    # member axis over the processes: process i reads member i's examples only
    assert g['member'] == {'seen': sorted(idx[i].ravel().tolist()), 'ok': True,
                           'shape': [2, 4, 8, 3]}
    # one member, its batch over the processes: process i reads its half of each batch
    assert g['data'] == {'seen': sorted(idx[0, :, 4 * i:4 * i + 4].ravel().tolist()),
                         'ok': True, 'shape': [1, 4, 8, 3]}
    assert g['resident_shard'] == [64, 3]  # the resident split: whole on every device


def test_a_study_that_cannot_run_with_several_processes_is_refused_in_one_line(tmp_path):
  p = run_script('reproduce.py', '--experiment=bptt', '--budget=smoke',
                 f'--workdir={tmp_path / "study"}', '--coordinator_address=localhost:1',
                 '--num_processes=2', '--process_id=0', timeout=120)
  assert p.returncode == 2
  assert p.stderr.strip().splitlines() == [
      'error: --experiment=bptt does not run with several processes; those that do: '
      'hybrid_ablation, mnist1d, pbt, rnn_music, ucr']
  assert not (tmp_path / 'study').exists()


def test_follow_replays_a_study_in_a_scratch_directory_with_the_shared_runs(tmp_path,
                                                                           monkeypatch):
  """Processes other than 0 run the study's steps with its writes in a scratch
  directory; the runs it trains (and reads back) are the shared workdir's."""
  from research.experiments import common
  trained = []

  def fake_train(config, workdir):
    trained.append(Path(workdir))
    return {'members': []}

  def study(workdir, budget):
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'b').mkdir()  # a run directory the study makes itself
    for sub in ('a', 'b', 'c/d', 'c/e'):
      common.train_variant('configs/mnist1d.py', 'model=mlp', workdir / sub)
    (workdir / 'report.md').write_text(budget)  # process 0's file only
    (workdir / 'c' / 'plot.png').write_text('x')
    return {'read back': (workdir / 'a' / 'metrics.jsonl').read_text()}

  monkeypatch.setattr(common, 'train_and_evaluate', fake_train)
  shared = tmp_path / 'study'
  (shared / 'a').mkdir(parents=True)
  (shared / 'a' / 'metrics.jsonl').write_text('written by process 0')
  out = common.follow(study, shared, budget='smoke')
  assert out == {'read back': 'written by process 0'}
  assert trained == [shared / 'a', shared / 'b', shared / 'c' / 'd', shared / 'c' / 'e']
  assert sorted(str(p.relative_to(shared)) for p in shared.rglob('*')) == ['a', 'a/metrics.jsonl']
  assert common._SCRATCH is None
  assert common._shared_run(tmp_path / 'x') == tmp_path / 'x'  # outside `follow`: as given


@pytest.mark.slow
def test_the_mnist1d_smoke_study_with_two_processes_equals_one_process(tmp_path):
  """scripts/reproduce.py --experiment=mnist1d --budget=smoke (2 seeds per model) with 2
  processes of 1 CPU device against 1 process with 2 (about 3 min on 2 cores)."""
  args = ('--experiment=mnist1d', '--budget=smoke')
  one = tmp_path / 'one'
  p = run_script('reproduce.py', *args, f'--workdir={one}', timeout=600,
                 env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'))
  assert p.returncode == 0, p.stderr[-3000:]
  two = tmp_path / 'two'
  env = dict(os.environ, RESEARCH_CPU_DEVICES='1')
  env.pop('XLA_FLAGS', None)
  port = _free_port()
  procs = [subprocess.Popen(script_command('reproduce.py', *args, f'--workdir={two}',
                                           f'--coordinator_address=localhost:{port}',
                                           '--num_processes=2', f'--process_id={i}'),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  for rc, err in _wait(procs, timeout=600):
    assert rc == 0, err[-3000:]
  assert json.loads((two / 'study.json').read_text()) == {'experiment': 'mnist1d',
                                                          'budget': 'smoke'}
  for f in ('report.md', 'curves.png'):
    assert (two / f).is_file()
  a, b = (json.loads((d / 'results.json').read_text()) for d in (one, two))
  assert a['rows'] == b['rows']
  for variant in ('linear', 'mlp', 'cnn', 'gru', 'cnn_gru'):
    ra, rb = (json.loads((d / variant / 'results.json').read_text()) for d in (one, two))
    assert rb['mesh']['processes'] == 2
    _same_numbers(one / variant, ra, two / variant, rb)
