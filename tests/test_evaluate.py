"""scripts/evaluate.py: a trained run read back gives the run's own numbers; samples; export."""
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import cli
from research import evaluate as ev
from research.train import member_variables, train_and_evaluate
from tests.helpers import run_script, run_train, small_mnist1d


def mnist1d_config(**overrides):
  """Two members, 3 epochs; member 0 (lr 1e-2) peaks on validation before the last
  epoch, member 1 (lr 0.3) at it, so best and latest differ for one of them."""
  return small_mnist1d(**{'train.epochs': 3, 'population': 'seed=0,1 optim.lr=1e-2,0.3',
                          'population_mode': 'zip', **overrides})


def evaluate_cli(workdir, *args, env=None, timeout=300):
  return run_script('evaluate.py', f'--workdir={workdir}', *args, env=env, timeout=timeout)


def split_metrics(doc: dict, prefix: str) -> list[dict]:
  return [{k: v for k, v in m.items() if k.startswith(prefix)} for m in doc['members']]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('eval') / 'run'
  out = train_and_evaluate(mnist1d_config(), workdir)
  return workdir, out


def test_best_test_metrics_equal_results_json(run):
  workdir, out = run
  proc = evaluate_cli(workdir, '--split=test', '--checkpoint=best')
  assert proc.returncode == 0, proc.stderr
  doc = json.loads((workdir / 'eval_test.json').read_text())
  results = json.loads((workdir / 'results.json').read_text())
  assert doc['split'] == 'test' and doc['checkpoint'] == 'best'
  assert doc['checkpoint_epoch'] == 3
  assert [m['member'] for m in doc['members']] == [0, 1]
  for got, want in zip(doc['members'], results['members']):
    assert got['hparams'] == want['hparams']
    assert got['checkpoint'] == 'best' and got['epoch'] == want['best_epoch']
  got, want = split_metrics(doc, 'test/'), split_metrics(results, 'test/')
  assert got == want  # the same floats, bit for bit
  assert set(got[0]) == {'test/accuracy', 'test/loss'}
  # the table names every member and metric
  assert 'test/accuracy' in proc.stdout and '| 1 |' in proc.stdout


def test_latest_differs_from_best_where_the_best_epoch_is_older(run):
  workdir, out = run
  proc = evaluate_cli(workdir, '--split=val', '--checkpoint=latest')
  assert proc.returncode == 0, proc.stderr
  latest = json.loads((workdir / 'eval_val.json').read_text())
  best_epochs = [m['best_epoch'] for m in out['members']]
  assert sorted(best_epochs) == [2, 3], best_epochs  # one member of each kind (see config)
  for m, be, want in zip(latest['members'], best_epochs, out['members']):
    assert m['checkpoint'] == 'latest' and m['epoch'] == 3
    if be == 3:  # latest is best: the run's own validation numbers
      assert m['val/loss'] == want['val/loss'] and m['val/accuracy'] == want['val/accuracy']
    else:
      assert m['val/loss'] != want['val/loss']
  # The last evaluation in metrics.jsonl scored the latest parameters on val.
  last = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()][-2:]
  for m, rec in zip(latest['members'], sorted(last, key=lambda r: r['member'])):
    assert rec['epoch'] == 3 and m['val/loss'] == rec['val/loss']


def test_member_flag_evaluates_one_member_with_the_same_numbers(run):
  workdir, out = run
  proc = evaluate_cli(workdir, '--member=1', '--split=train')
  assert proc.returncode == 0, proc.stderr
  doc = json.loads((workdir / 'eval_train.json').read_text())
  assert [m['member'] for m in doc['members']] == [1]
  assert set(split_metrics(doc, 'train/')[0]) == {'train/accuracy', 'train/loss'}


def test_export_round_trips(run, tmp_path):
  workdir, out = run
  path = tmp_path / 'exp' / 'member1.msgpack'
  proc = evaluate_cli(workdir, f'--export={path}', '--member=1')
  assert proc.returncode == 0, proc.stderr
  cfg = path.with_suffix('.config.json')
  meta = json.loads(path.with_suffix('.meta.json').read_text())
  assert json.loads(cfg.read_text()) == json.loads((workdir / 'config.json').read_text())
  assert meta['member'] == 1 and meta['checkpoint'] == 'best'
  assert meta['hparams'] == out['members'][1]['hparams']
  assert meta['epoch'] == out['members'][1]['best_epoch']

  model, variables, _ = ev.load_export(path)
  loaded = ev.load_run(workdir)
  want = member_variables(loaded.state, 1)
  jax.tree.map(np.testing.assert_array_equal, variables, jax.device_get(want))
  x = jnp.asarray(loaded.dataset.test['x'][:64])
  np.testing.assert_array_equal(np.asarray(model.apply(variables, x)),
                                np.asarray(loaded.trainer.model.apply(want, x)))

  # latest: the parameters at the newest checkpoint, not the best ones
  path2 = tmp_path / 'latest0.msgpack'
  proc = evaluate_cli(workdir, f'--export={path2}', '--checkpoint=latest')
  assert proc.returncode == 0, proc.stderr
  _, latest, meta = ev.load_export(path2)
  assert meta['member'] == 0 and meta['checkpoint'] == 'latest' and meta['epoch'] == 3
  jax.tree.map(np.testing.assert_array_equal, latest['params'],
               jax.device_get(jax.tree.map(lambda a: a[0], loaded.state.params)))


def one_line_error(proc, *words):
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  assert 'Traceback' not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  for w in words:
    assert w in lines[0], (w, lines[0])


def test_bad_inputs_give_one_line_and_exit_2(run, tmp_path):
  workdir, _ = run
  (tmp_path / 'empty').mkdir()
  one_line_error(evaluate_cli(tmp_path / 'empty'), 'config.json')
  fresh = tmp_path / 'fresh'  # a config but no checkpoint yet
  fresh.mkdir()
  shutil.copy(workdir / 'config.json', fresh / 'config.json')
  one_line_error(evaluate_cli(fresh), 'No checkpoint')
  assert not (fresh / 'checkpoints').exists()  # nothing created
  one_line_error(evaluate_cli(workdir, '--member=2'), 'out of range', '0..1')
  one_line_error(evaluate_cli(workdir, '--checkpoint=final'), 'best or latest')
  one_line_error(evaluate_cli(workdir, '--split=dev'), 'train, val, test')
  one_line_error(evaluate_cli(workdir, '--sample=4'), 'generative models only')
  one_line_error(evaluate_cli(workdir, '--member=two'), '--member=two', 'int')  # absl's parse
  # A dataset without a validation split (the run's checkpoints, val_fraction=0).
  noval = tmp_path / 'noval'
  noval.mkdir()
  cfg = json.loads((workdir / 'config.json').read_text())
  cfg['data']['val_fraction'] = 0.0
  (noval / 'config.json').write_text(json.dumps(cfg))
  shutil.copytree(workdir / 'checkpoints', noval / 'checkpoints')
  one_line_error(evaluate_cli(noval, '--split=val'), 'no val split')


def test_sharded_run_evaluates_to_its_own_numbers(tmp_path):
  """A run that sharded its members over 2 CPU devices is evaluated with the same
  sharding (the numbers of a 1-device evaluation may differ in the last bits)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  workdir = tmp_path / 'two'
  proc = run_train(workdir, '--config.train.epochs=2', '--config.population=seed=0,1', env=env)
  assert proc.returncode == 0, proc.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert results['member_sharding'] == 2
  # Without an explicit device count the script starts enough devices itself.
  env.pop('XLA_FLAGS')
  env.pop('RESEARCH_CPU_DEVICES', None)
  proc = evaluate_cli(workdir, env=env)
  assert proc.returncode == 0, proc.stderr
  doc = json.loads((workdir / 'eval_test.json').read_text())
  assert split_metrics(doc, 'test/') == split_metrics(results, 'test/')


def test_vae_samples_png(tmp_path):
  c = cli.load_config('configs/vae_digits.py', 'quick')
  c.model.hidden = (16, 16)
  c.model.latent = 4
  c.train.epochs = 2
  c.train.eval_every = 1
  workdir = tmp_path / 'vae'
  out = train_and_evaluate(c, workdir)
  proc = evaluate_cli(workdir, '--sample=4', '--seed=1')
  assert proc.returncode == 0, proc.stderr
  png = workdir / 'samples_member0.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'samples_member0.png' in proc.stdout
  # and the VAE's test metrics are the run's too
  proc = evaluate_cli(workdir)
  assert proc.returncode == 0, proc.stderr
  doc = json.loads((workdir / 'eval_test.json').read_text())
  assert split_metrics(doc, 'test/') == split_metrics(out, 'test/')


def test_text_samples(tmp_path):
  c = cli.load_config('configs/text.py', 'quick')
  c.data.max_chars = 20000
  c.data.seq_len = 20
  c.model.rnn.hidden = 16
  c.model.channels = (16,)
  c.train.epochs = 1
  c.train.progress = False
  workdir = tmp_path / 'text'
  train_and_evaluate(c, workdir)
  proc = evaluate_cli(workdir, '--sample=2', '--length=30', '--temperature=0.5', '--prime=The ')
  assert proc.returncode == 0, proc.stderr
  text = (workdir / 'samples_member0.txt').read_text()
  parts = re.split(r'\n--- sample (\d+) ---\n', text)  # [header, '0', text0 + newline, ...]
  assert parts[1::2] == ['0', '1']
  for body in parts[2::2]:
    assert body.startswith('The ') and len(body) == 4 + 30 + 1
  assert 'temperature 0.5' in text and '--- sample 1 ---' in proc.stdout


def test_prior_samples_are_mean_images_from_the_seed():
  from research.analysis import generative
  from research.models import vae
  model = vae.VAE(latent=2, hidden=(8, 8))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  a = generative.prior_samples(model, variables, 5, seed=3)
  assert a.shape == (5, 8, 8, 1) and a.min() >= 0 and a.max() <= 1
  np.testing.assert_array_equal(a, generative.prior_samples(model, variables, 5, seed=3))
  assert not np.array_equal(a, generative.prior_samples(model, variables, 5, seed=4))
