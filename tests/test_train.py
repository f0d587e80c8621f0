"""Behaviour of the one training loop: populations, divergence, resume, selection."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import population, results
from research.data import load_dataset
from research.tasks import make_task
from research.train import DivergenceError, Trainer, batch_split, train_and_evaluate
from tests.helpers import run_train, small_mnist1d, train_command

REPO = Path(__file__).resolve().parents[1]


def small_config(**overrides):
  """The small MNIST-1D run, 4 epochs, one member (seed from c.seed)."""
  return small_mnist1d(**{'train.epochs': 4, 'population': '', **overrides})


def setup_trainer(config):
  """The Trainer of ``config``, its dataset, stacked member hparams and initial state."""
  task = make_task(config.task)
  members = population.expand(config, task.hparam_keys)
  ds = load_dataset(config.data)
  trainer = Trainer(config, ds, members, task)
  hp = jax.tree.map(jnp.asarray, population.stack(members))
  return trainer, ds, hp, trainer.init(hp)


def member_metrics(out):
  return [{k: v for k, v in m.items() if '/' in k} for m in out['members']]


def test_population_equals_separate_runs(tmp_path):
  pop = train_and_evaluate(
      small_config(population='seed=0,1,2 optim.lr=1e-2,3e-3,1e-3', population_mode='zip'),
      tmp_path / 'pop')
  assert pop['num_members'] == 3
  for i, (seed, lr) in enumerate([(0, 1e-2), (1, 3e-3), (2, 1e-3)]):
    single = train_and_evaluate(small_config(seed=seed, **{'optim.lr': lr}), tmp_path / f's{i}')
    a, b = member_metrics(pop)[i], member_metrics(single)[0]
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  # Different members really are different runs.
  accs = [m['val/loss'] for m in member_metrics(pop)]
  assert len(set(np.round(accs, 6))) == 3


def test_population_groups_become_rows(tmp_path):
  out = train_and_evaluate(small_config(population='seed=0,1 optim.lr=1e-2,1e-3', **{
      'train.epochs': 1}), tmp_path)
  names = {r['name'] for r in out['rows']}
  assert names == {'mnist1d_mlp[lr=0.01]', 'mnist1d_mlp[lr=0.001]'}
  assert all(r['n'] == 2 for r in out['rows'])
  results.read(tmp_path / 'results.json')  # schema-valid on disk
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 4  # one record per member per evaluation
  assert list((tmp_path / 'tensorboard').iterdir())


def test_nan_member_is_frozen_and_others_train_on(tmp_path):
  out = train_and_evaluate(
      small_config(population='seed=0,0 optim.lr=1e-2,inf', population_mode='zip'), tmp_path)
  good, bad = out['members']
  assert bad['diverged'] and bad['diverged_step'] == 0 and bad['steps'] == 0
  assert not good['diverged'] and good['steps'] == 4 * out['steps_per_epoch']
  # The healthy member is exactly what it would be alone.
  alone = train_and_evaluate(small_config(**{'optim.lr': 1e-2}), tmp_path / 'alone')
  np.testing.assert_allclose(good['test/loss'], alone['members'][0]['test/loss'], rtol=2e-4)
  # Rows average only members that did not diverge.
  rows = {(r['name'], r['metric']): r for r in out['rows']}
  assert rows[('mnist1d_mlp[lr=inf]', 'test_accuracy')]['n'] == 0
  assert rows[('mnist1d_mlp[lr=0.01]', 'test_accuracy')]['n'] == 1


def test_single_member_divergence_raises(tmp_path):
  with pytest.raises(DivergenceError, match=r'member 0 .* at step 0'):
    train_and_evaluate(small_config(**{'optim.lr': float('inf')}), tmp_path)


def test_resume_with_other_config_is_refused(tmp_path):
  train_and_evaluate(small_config(**{'train.epochs': 1}), tmp_path)
  with pytest.raises(ValueError, match=r"different config.*optim\.lr"):
    train_and_evaluate(small_config(**{'train.epochs': 1, 'optim.lr': 0.5}), tmp_path)
  # The progress bar is not part of what a run computes: toggling it still resumes.
  out = train_and_evaluate(small_config(**{'train.epochs': 1, 'train.progress': True}), tmp_path)
  assert out['num_members'] == 1
  # An option added to the code since the run was saved, left off, resumes too; set, it does not.
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['train']['input_noise']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  train_and_evaluate(small_config(**{'train.epochs': 1}), tmp_path)
  with pytest.raises(ValueError, match=r'input_noise'):
    train_and_evaluate(small_config(**{'train.epochs': 1, 'train.input_noise': 0.1}), tmp_path)


def test_update_best_and_early_stopping():
  c = small_config(**{'train.patience': 2})
  trainer, ds, hp, state = setup_trainer(c)
  snapshots = {}
  for epoch, metric in enumerate([0.5, 0.7, 0.6, 0.65], start=1):
    # Give every epoch distinct parameters so we can tell which were kept.
    state = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
    snapshots[epoch] = state.params
    state = trainer.update_best(state, jnp.asarray([metric]), jnp.int32(epoch))
    if epoch == 3:
      assert bool(state.active[0])
  assert int(state.best_epoch[0]) == 2
  assert float(state.best_metric[0]) == pytest.approx(0.7)
  assert not bool(state.active[0])  # two evaluations without improvement
  jax.tree.map(np.testing.assert_array_equal, state.best_params, snapshots[2])


def test_evaluate_ignores_padding():
  c = small_config()
  trainer, ds, hp, state = setup_trainer(c)
  split = ds.test  # 100 examples: batches of 30 leave 20 padded slots
  padded = trainer.evaluate(state.params, state.model_state, hp, batch_split(split, 30))
  whole = trainer.evaluate(state.params, state.model_state, hp, batch_split(split, len(split['x'])))
  for k in whole:
    np.testing.assert_allclose(padded[k], whole[k], rtol=1e-5)
  logits = trainer.model.apply({'params': jax.tree.map(lambda x: x[0], state.params)}, split['x'])
  acc = float(np.mean(np.argmax(logits, -1) == split['y']))
  assert float(whole['accuracy'][0]) == pytest.approx(acc)


def test_cli_rejects_unknown_key_in_one_line(tmp_path):
  proc = run_train(tmp_path, '--config.optim.lrr=0.1')
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and 'optim.lrr' in lines[0] and 'lr' in lines[0]
  assert not (tmp_path / 'config.json').exists()


def test_cli_rejects_wrong_type(tmp_path):
  proc = run_train(tmp_path, '--config.optim.lr=fast')
  assert proc.returncode != 0
  assert 'config.optim.lr' in proc.stderr and 'Traceback' not in proc.stderr


def test_cli_single_member_divergence_exits_nonzero(tmp_path):
  proc = run_train(tmp_path, '--config.optim.lr=inf', '--config.train.epochs=1')
  assert proc.returncode == 1
  assert 'diverged' in proc.stderr and 'member 0' in proc.stderr


def test_resume_after_kill_equals_uninterrupted(tmp_path):
  args = ('--config.train.epochs=12', '--config.population=seed=0,1')
  ref = run_train(tmp_path / 'ref', *args)
  assert ref.returncode == 0, ref.stderr
  # Start the same run, kill -9 it once a checkpoint exists, then re-run the same command.
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen(train_command(workdir, *args), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd=REPO)
  deadline = time.time() + 120
  ckpts = workdir / 'checkpoints'
  while time.time() < deadline and proc.poll() is None:
    if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 3 for p in ckpts.iterdir()):
      break
    time.sleep(0.05)
  killed_mid_run = proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert killed_mid_run, 'run finished before it could be killed; make it longer'
  assert not (workdir / 'results.json').exists()
  resumed = run_train(workdir, *args)
  assert resumed.returncode == 0, resumed.stderr
  a = json.loads((tmp_path / 'ref/results.json').read_text())
  b = json.loads((workdir / 'results.json').read_text())
  assert member_metrics(a) == member_metrics(b)  # bit-identical on the same machine
  assert a['rows'] == b['rows']
  # metrics.jsonl: the records of the killed run up to its checkpoint plus the resumed ones,
  # without duplicates: the same records as the uninterrupted run's (but for wall times).
  assert _records(workdir) == _records(tmp_path / 'ref')


def _records(workdir, timed=False):
  recs = [json.loads(l) for l in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  if not timed:
    for r in recs:
      r.pop('time_s'), r.pop('perf/examples_per_s')
  return recs


def test_members_sharded_over_two_cpu_devices_match_one_device(tmp_path):
  args = ('--config.train.epochs=2', '--config.population=seed=0,1')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = run_train(tmp_path / 'two', *args, env=env)
  assert proc.returncode == 0, proc.stderr
  two = json.loads((tmp_path / 'two/results.json').read_text())
  assert len(two['devices']) == 2 and two['member_sharding'] == 2
  one = train_and_evaluate(small_config(population='seed=0,1', **{'train.epochs': 2}),
                           tmp_path / 'one')
  assert one['member_sharding'] == 1
  for a, b in zip(member_metrics(two), member_metrics(one)):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)


def test_input_noise_member_without_noise_equals_noiseless_run(tmp_path):
  """Input noise is a per-member hyperparameter: a member with std 0 inside a
  population that adds noise trains exactly like a run without noise."""
  c = small_config(**{'train.epochs': 2})
  c.population = 'train.input_noise=0,0.5'
  both = train_and_evaluate(c, tmp_path / 'pop')
  alone = train_and_evaluate(small_config(**{'train.epochs': 2}), tmp_path / 'alone')
  m_pop, m_alone = member_metrics(both), member_metrics(alone)
  for k, v in m_alone[0].items():
    assert m_pop[0][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
  assert m_pop[1]['test/loss'] != pytest.approx(m_pop[0]['test/loss'], rel=1e-4)


# ---- failure paths: corrupt checkpoints, poisoned workdirs, finished runs, signals ----

def _corrupt_files(step_dir, how):
  files = sorted(p for p in step_dir.rglob('*') if p.is_file() and p.stat().st_size > 0)
  assert files
  for p in files:
    if how == 'truncate':
      p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])
    else:
      p.write_bytes(b'\x07garbled' * 50)


@pytest.mark.parametrize('how', ['truncate', 'garble'])
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_finishes_as_uninterrupted(
    tmp_path, how, caplog):
  ref = train_and_evaluate(small_config(), tmp_path / 'ref')
  work = tmp_path / 'run'
  train_and_evaluate(small_config(), work)
  (work / 'results.json').unlink()  # as if killed after the last checkpoint
  _corrupt_files(work / 'checkpoints' / '4', how)
  out = train_and_evaluate(small_config(), work)  # falls back to 3, retrains epoch 4
  assert (work / 'checkpoints' / '4.corrupt').is_dir()
  assert 'moved aside' in caplog.text
  assert member_metrics(out) == member_metrics(ref)
  assert _records(work) == _records(tmp_path / 'ref')
  again = train_and_evaluate(small_config(), work)  # and the workdir stays usable
  assert member_metrics(again) == member_metrics(ref)


def test_all_checkpoints_unreadable_is_one_error_and_nothing_is_moved(tmp_path):
  from research.checkpoint import CheckpointError
  work = tmp_path / 'run'
  train_and_evaluate(small_config(), work)
  (work / 'results.json').unlink()
  for d in (work / 'checkpoints').iterdir():
    _corrupt_files(d, 'garble')
  before = sorted(p.name for p in (work / 'checkpoints').iterdir())
  with pytest.raises(CheckpointError, match=str(work / 'checkpoints')):
    train_and_evaluate(small_config(), work)
  assert sorted(p.name for p in (work / 'checkpoints').iterdir()) == before


def test_bad_config_writes_nothing_and_a_corrected_config_is_accepted(tmp_path):
  work = tmp_path / 'run'
  with pytest.raises(ValueError, match='optim.name'):
    train_and_evaluate(small_config(**{'optim.name': 'adamm'}), work)
  assert not work.exists()
  with pytest.raises(ValueError):
    train_and_evaluate(small_config(**{'train.batch_size': 100000}), work)
  assert not work.exists()
  # A workdir that a failed run left with a config.json but no checkpoint accepts the fix.
  work.mkdir()
  (work / 'config.json').write_text(small_config(**{'optim.lr': 7.0}).to_json_best_effort())
  out = train_and_evaluate(small_config(), work)
  assert out['num_members'] == 1
  saved = json.loads((work / 'config.json').read_text())
  assert saved['optim']['lr'] == small_config().optim.lr
  # ...but a workdir with checkpoints still refuses another config.
  with pytest.raises(ValueError, match='keys differ'):
    train_and_evaluate(small_config(**{'optim.lr': 7.0}), work)


def test_rerun_of_a_finished_early_stopped_run_trains_nothing(tmp_path):
  c = lambda: small_config(**{'train.epochs': 30, 'train.patience': 1, 'optim.lr': 0.0})
  work = tmp_path / 'run'
  first = train_and_evaluate(c(), work)
  assert first['members'][0]['best_epoch'] == 1  # lr 0: never improves after epoch 1
  metrics = (work / 'metrics.jsonl').read_bytes()
  ckpts = sorted(p.name for p in (work / 'checkpoints').iterdir())
  assert int(max(ckpts, key=int)) == 2  # stopped after 1 + patience evaluations
  again = train_and_evaluate(c(), work)
  assert (work / 'metrics.jsonl').read_bytes() == metrics
  assert sorted(p.name for p in (work / 'checkpoints').iterdir()) == ckpts
  assert again['train_time_s'] == first['train_time_s']
  assert member_metrics(again) == member_metrics(first)


def test_results_carry_provenance_and_records_wall_time(tmp_path):
  out = train_and_evaluate(small_config(), tmp_path / 'run')
  saved = json.loads((tmp_path / 'run/results.json').read_text())
  prov = saved['provenance']
  assert set(prov['packages']) >= {'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy'}
  assert prov['packages']['jax'] == jax.__version__
  assert len(prov['git_commit']) == 40 and isinstance(prov['git_dirty'], bool)
  assert prov['device_count'] == len(jax.devices()) and prov['device_kind']
  assert prov['start'] <= prov['end'] and prov['host'] and prov['command']
  times = [r['time_s'] for r in _records(tmp_path / 'run', timed=True)]
  assert times == sorted(times) and times[0] > 0
  assert out['first_epoch_s'] > 0


def test_strict_json_nonfinite_becomes_null(tmp_path):
  results.write(tmp_path / 'r.json', 'x', [results.row('a', 'm', [])],
                members=[{'test/loss': float('nan')}])
  text = (tmp_path / 'r.json').read_text()
  saved = json.loads(text, parse_constant=lambda c: pytest.fail(f'bare {c} in results.json'))
  assert saved['rows'][0]['value'] is None and saved['members'][0]['test/loss'] is None
  assert 'null' in saved['null_values']


_DRIVER = """
import pathlib, sys
from research import cli, train
sys.path.insert(0, {tests!r})
from test_train import small_config
done = train._Progress.epoch_done
def mark(self, epoch):  # tells the test that training is under way
  done(self, epoch)
  if epoch == 2:
    pathlib.Path({work!r}, 'epoch2').touch()
train._Progress.epoch_done = mark
c = small_config(**{{'train.epochs': {epochs}, 'train.eval_every': {eval_every}}})
cli.guard(lambda argv: train.train_and_evaluate(c, {work!r}))([])
"""


@pytest.mark.parametrize('sig,code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_the_resumed_run_equals_uninterrupted(tmp_path, sig, code):
  epochs, every = 60, 1000  # one evaluation, at the end: the checkpoint comes from the signal
  ref = train_and_evaluate(small_config(**{'train.epochs': epochs, 'train.eval_every': every}),
                           tmp_path / 'ref')
  work = tmp_path / 'run'
  script = _DRIVER.format(tests=str(REPO / 'tests'), epochs=epochs, eval_every=every,
                          work=str(work))
  proc = subprocess.Popen([sys.executable, '-c', script], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 180
  while time.time() < deadline and not (work / 'epoch2').exists() and proc.poll() is None:
    time.sleep(0.01)
  assert proc.poll() is None, proc.communicate()
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == code, err
  assert 'Traceback' not in err and 'cannot schedule' not in err
  last = [l for l in err.splitlines() if l.strip()][-1]
  assert 'resume' in last and 'checkpoint saved' in last
  steps = [int(p.name) for p in (work / 'checkpoints').iterdir() if p.name.isdigit()]
  assert steps and max(steps) < epochs  # saved at the epoch it stopped after
  assert not (work / 'results.json').exists()
  out = train_and_evaluate(small_config(**{'train.epochs': epochs, 'train.eval_every': every}),
                           work)
  assert member_metrics(out) == member_metrics(ref)


_FULL_DISK_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from research import cli
from research.train import train_and_evaluate
from test_train import small_config
c = small_config(**{{'train.epochs': 30, 'train.checkpoint_keep': 100}})
cli.guard(lambda argv: train_and_evaluate(c, {work!r}))([])
"""


def test_full_disk_during_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path):
  """A checkpoint that does not fit on the disk: one error line, exit 2, earlier
  checkpoints kept; with space again the run resumes and equals an uninterrupted one."""
  mnt = tmp_path / 'disk'
  mnt.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs', str(mnt)],
                    capture_output=True).returncode:
    pytest.skip('needs root to mount a small tmpfs')
  try:
    work = mnt / 'run'
    script = _FULL_DISK_DRIVER.format(tests=str(REPO / 'tests'), work=str(work))
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) <= 3 and 'Traceback' not in proc.stderr, proc.stderr
    assert any(l.startswith('error: could not write checkpoint') and 'No space left' in l
               for l in lines), lines
    saved = [int(p.name) for p in (work / 'checkpoints').iterdir() if p.name.isdigit()]
    assert saved
    subprocess.run(['mount', '-o', 'remount,size=20m', str(mnt)], check=True)
    resumed = train_and_evaluate(
        small_config(**{'train.epochs': 30, 'train.checkpoint_keep': 100}), work)
  finally:
    subprocess.run(['umount', '-l', str(mnt)], capture_output=True)
  ref = train_and_evaluate(small_config(**{'train.epochs': 30}), tmp_path / 'ref')
  assert member_metrics(resumed) == member_metrics(ref)


def _tb_scalars(run_dir):
  """{tag: [(step, value)]} from the event files in ``run_dir`` (TFRecord framing:
  length, its CRC, the Event proto, its CRC)."""
  import struct

  from tensorboardX.proto import event_pb2
  out = {}
  for f in sorted(Path(run_dir).glob('events.out.tfevents.*')):
    data, pos = f.read_bytes(), 0
    while pos < len(data):
      (n,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        if v.HasField('simple_value'):
          out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_tensorboard_has_one_run_per_member_with_lr_grad_norm_and_throughput(tmp_path):
  c = small_config(population='optim.lr=1e-2,1e-3', **{'optim.schedule': 'cosine',
                                                        'train.epochs': 3})
  train_and_evaluate(c, tmp_path / 'run')
  runs = sorted(p.name for p in (tmp_path / 'run/tensorboard').iterdir())
  assert runs == ['member_0', 'member_1']
  recs = _records(tmp_path / 'run', timed=True)
  for i, lr in enumerate([1e-2, 1e-3]):
    tb = _tb_scalars(tmp_path / f'run/tensorboard/member_{i}')
    assert {'train/lr', 'train/grad_norm', 'perf/examples_per_s', 'val/loss'} <= set(tb)
    mine = [r for r in recs if r['member'] == i]
    assert [v for _, v in tb['val/loss']] == pytest.approx([r['val/loss'] for r in mine])
    # lr: the mean over each epoch's steps of lr * cosine(step), against optax's schedule
    n = mine[0]['step']
    total = n * 3
    cos = lambda t: 0.5 * (1 + np.cos(np.pi * t / total))
    for e, (_, v) in enumerate(tb['train/lr']):
      want = np.mean([lr * cos(t) for t in range(e * n, (e + 1) * n)])
      assert v == pytest.approx(want, rel=1e-5)
    assert all(v > 0 for _, v in tb['train/grad_norm'])
  hp_files = list((tmp_path / 'run/tensorboard/member_1').glob('events.out.tfevents.*'))
  assert b'hparams' in b''.join(f.read_bytes() for f in hp_files)


_LOG_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from research import cli
from research.train import train_and_evaluate
from test_train import small_config
import logging
logging.root.setLevel(logging.INFO)
c = small_config(**{{'train.epochs': 6, 'train.eval_every': 2, 'train.progress': True}})
train_and_evaluate(c, {work!r})
"""


def test_progress_in_a_log_file_is_one_line_per_evaluation(tmp_path):
  script = _LOG_DRIVER.format(tests=str(REPO / 'tests'), work=str(tmp_path / 'run'))
  proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert '\r' not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if ' epoch ' in l and 'members training' in l]
  assert [l.split(' epoch ')[1].split(':')[0] for l in lines] == ['2/6', '4/6', '6/6']


def test_cli_all_checkpoints_unreadable_is_one_line(tmp_path):
  work = tmp_path / 'run'
  assert run_train(work, '--config.train.epochs=2').returncode == 0
  (work / 'results.json').unlink()
  for d in (work / 'checkpoints').iterdir():
    _corrupt_files(d, 'garble')
  proc = run_train(work, '--config.train.epochs=2')
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert 'Traceback' not in proc.stderr and 'Task exception' not in proc.stderr, proc.stderr
  assert len(lines) <= 3 and lines[-1].startswith('error: no readable checkpoint')
  assert str(work / 'checkpoints') in lines[-1]
