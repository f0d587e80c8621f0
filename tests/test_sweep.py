"""Sweeps: search-space validation, exact grids, budgets, populations, NaN trials,
kill -9 and resume, two concurrent workers (training replaced by a known function,
tests/sweep_worker.py), and (slow) the real CLI on the digits VAE."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import math
import optuna
import pytest

from research import cli
from research.sweep import runner
from research.sweep.space import Choice, Float, Int, SearchSpaceError, grid_points, validate
from tests import sweep_worker as sw
from tests.helpers import run_script

REPO = Path(__file__).resolve().parents[1]
TS = optuna.trial.TrialState


def _study(workdir, storage=None):
  return optuna.load_study(study_name='sweep', storage=runner.make_storage(storage, Path(workdir)))


def _calls(workdir):
  path = Path(workdir) / 'calls.jsonl'
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _key(params):
  return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))


@pytest.mark.parametrize('space, match', [
    ({'optim.lrr': Float(1e-4, 1e-2)}, "'optim.lrr' is not a config key"),
    ({'optim': Float(0, 1)}, "'optim' names a config section"),
    ({'optim.lr': Float(1e-2, 1e-4)}, "'optim.lr': Float needs low < high"),
    ({'optim.lr': Float(0.0, 1e-2, log=True)}, "'optim.lr': a log scale needs low > 0"),
    ({'optim.lr': Float(1e-4, 1e-2, grid=(0.1,))}, "'optim.lr': grid value 0.1 lies outside"),
    ({'model.latent': Int(2.5, 8)}, "'model.latent': Int bounds must be integers"),
    ({'optim.name': Choice(())}, "'optim.name': Choice needs at least one value"),
    ({'optim.name': Choice(('adam', 'sgd'), grid=('rmsprop',))}, "grid value 'rmsprop' is not one"),
    ({'optim.momentum': Float(0, 0.9, when={'optim.name': 'sgd'}),
      'optim.name': Choice(('adam', 'sgd'))}, "'optim.momentum': condition on 'optim.name', which is not an earlier key"),
    ({'optim.name': Choice(('adam', 'sgd')),
      'optim.momentum': Float(0, 0.9, when={'optim.name': 'rmsprop'})}, "condition optim.name='rmsprop' can never hold"),
    ({'optim.lr': (1e-4, 1e-2)}, "'optim.lr': expected Float, Int or Choice"),
])
def test_search_space_errors_name_the_key(space, match):
  with pytest.raises(SearchSpaceError, match=match.replace('(', r'\(')):
    validate(space, sw.base_config())


def test_grid_needs_grid_values_and_the_cli_reports_space_errors(tmp_path):
  with pytest.raises(SearchSpaceError, match="'task.beta': grid search needs grid"):
    grid_points(sw.SPACE)
  proc = run_script('sweep.py', '--config=configs/vae_digits.py:quick', '--space=nope',
                    f'--workdir={tmp_path}', timeout=120)
  assert proc.returncode == 2 and "Unknown search space 'nope'" in proc.stderr


def test_grid_covers_exactly_its_grid_with_conditions_and_populations(tmp_path):
  space = dict(sw.SPACE, **{'task.beta': Float(0.5, 2.0, grid=(0.5, 1.0))})
  expected = [{'optim.lr': lr, 'task.beta': b, 'optim.name': n, **m}
              for lr in (1e-4, 1e-3, 1e-2) for b in (0.5, 1.0)
              for n, m in (('adam', {}), ('sgd', {'optim.momentum': 0.5}),
                           ('sgd', {'optim.momentum': 0.9}))]
  out = sw.sweep(tmp_path, 'grid', 0, batch=18, space=space, storage='sqlite')
  study = _study(tmp_path, 'sqlite')
  done = study.get_trials(states=(TS.COMPLETE,))
  assert len(study.trials) == len(done) == 18
  assert sorted(map(_key, (t.params for t in done))) == sorted(map(_key, expected))
  # One batch, one population: optimizer rules vary inside a population.
  calls = _calls(tmp_path)
  assert len(calls) == 1 and sorted(calls[0]['names']) == ['adam'] * 6 + ['sgd'] * 12
  assert out['programs'] == len(out['populations']) == 1
  assert out['populations'][0]['size'] == 18 and out['populations'][0]['kinds'] == 2
  assert out['member_steps'] == 18 * sw.STEPS
  for t in done:  # each trial got its own member's value back
    assert t.value == pytest.approx(sw.objective(t.params, t.params['optim.name']))
  best = min(expected, key=lambda p: sw.objective(p, p['optim.name']))
  assert out['best']['params'] == best
  assert out['rows'][0]['value'] == pytest.approx(sw.objective(best, 'adam'))
  assert '--config.optim.lr=0.001' in (tmp_path / 'best_config.txt').read_text()
  for f in ('trials.csv', 'trials.md', 'best_so_far.png', 'importance.json'):
    assert (tmp_path / f).stat().st_size > 0
  assert len((tmp_path / 'trials.csv').read_text().splitlines()) == 19


@pytest.mark.parametrize('method', ['random', 'bayes'])
def test_budget_ranges_conditions_and_nan_trials(tmp_path, method, monkeypatch):
  monkeypatch.setattr(sw, 'DIVERGE_LR', 3e-3)
  sw.sweep(tmp_path, method, 11, batch=4)
  trials = _study(tmp_path).trials
  assert len(trials) == 11 and len({_key(t.params) for t in trials}) == 11
  for t in trials:
    p = t.params
    assert 1e-4 <= p['optim.lr'] <= 1e-2 and 0.5 <= p['task.beta'] <= 2
    assert ('optim.momentum' in p) == (p['optim.name'] == 'sgd')
    if p['optim.lr'] > 3e-3:  # diverged -> FAIL, and the sweep went on
      assert t.state == TS.FAIL and t.user_attrs['fail_reason'] == 'diverged'
    else:
      assert t.state == TS.COMPLETE
  assert sum(len(c['members']) for c in _calls(tmp_path)) == 11
  # Re-running a finished sweep trains nothing more; another method is refused by name.
  sw.sweep(tmp_path, method, 11, batch=4)
  assert len(_study(tmp_path).trials) == 11 and sum(len(c['members']) for c in _calls(tmp_path)) == 11
  with pytest.raises(ValueError, match='different method'):
    sw.sweep(tmp_path, 'bayes' if method == 'random' else 'random', 11)


def _worker(workdir, method, trials, batch, sleep, *extra):
  return subprocess.Popen([sys.executable, 'tests/sweep_worker.py', str(workdir), method,
                           str(trials), str(batch), str(sleep), *map(str, extra)], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, 'PYTHONPATH': str(REPO)})


def test_kill_9_mid_sweep_and_resume_loses_and_duplicates_nothing(tmp_path):
  planned = runner._plan('random', sw.SPACE, 8, 0)
  proc = _worker(tmp_path, 'random', 8, 2, 1.5)
  deadline, before = time.time() + 120, []
  while time.time() < deadline:  # kill while a population trains after two trials finished
    time.sleep(0.2)
    if (tmp_path / 'optuna.journal').exists():
      try:
        before = _study(tmp_path).trials
      except KeyError:  # the journal file exists before the worker has written the study
        continue
      states = [t.state for t in before]
      if states.count(TS.COMPLETE) >= 2 and TS.RUNNING in states:
        break
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = _study(tmp_path).trials
  complete = {_key(t.params) for t in before if t.state == TS.COMPLETE}
  running = {t.number for t in before if t.state == TS.RUNNING}
  assert len(complete) >= 2 and running, [t.state for t in before]

  resumed = _worker(tmp_path, 'random', 8, 2, 0.0)
  assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
  trials = _study(tmp_path).trials
  done = [t for t in trials if t.state == TS.COMPLETE]
  interrupted = [t for t in trials if t.state == TS.FAIL]
  assert len(done) == 8 and {t.number for t in interrupted} == running
  assert all(t.user_attrs['fail_reason'] == 'interrupted' for t in interrupted)
  assert sorted(_key(t.params) for t in done) == sorted(map(_key, planned))  # nothing lost
  retried = [t for t in done if 'retry_of' in t.user_attrs]
  assert sorted(t.user_attrs['retry_of'] for t in retried) == sorted(running)
  # Trials finished before the kill were trained once; interrupted ones again after
  # the resume (once or twice in all: the kill may land before their population started).
  trained = [_key(m_params) for c in _calls(tmp_path) for m_params in
             ({k: m[k] for k in ('optim.lr', 'task.beta')} for m in c['members'])]
  short = lambda key: _key({k: v for k, v in key if k in ('optim.lr', 'task.beta')})
  for t in done:
    n = trained.count(short(_key(t.params)))
    assert n in (1, 2) if 'retry_of' in t.user_attrs else n == 1, (t.number, n)


def test_a_dataset_without_validation_split_is_recorded_as_selected_on_train(tmp_path):
  """Training selects on the training split when the data has no validation split
  (results.json: select_metric 'train/nelbo'): the sweep tells that value and names it
  'train/nelbo', not 'val/nelbo'."""
  def train_on_train_split(config, run_dir):
    out = sw.fake_train(config, run_dir)
    for m in out['members']:
      m['train/nelbo'] = m.pop('val/nelbo')
    return dict(out, select_metric='train/nelbo')

  out = runner.run_sweep(sw.base_config(), sw.SPACE, 'random', 4, tmp_path, batch=2,
                         train_fn=train_on_train_split)
  study = _study(tmp_path)
  done = study.get_trials(states=(TS.COMPLETE,))
  assert len(done) == 4
  for t in done:
    assert t.value == pytest.approx(sw.objective(t.params, t.params['optim.name']))
    assert t.user_attrs['select_metric'] == 'train/nelbo'
  assert study.user_attrs['metric'] == out['metric'] == 'train/nelbo'
  assert out['rows'][0]['metric'] == 'train_nelbo'


def test_two_concurrent_workers_split_the_budget(tmp_path):
  procs = [_worker(tmp_path, 'bayes', 10, 2, 0.8) for _ in range(2)]
  for p in procs:
    assert p.wait(timeout=180) == 0, p.stderr.read()
  trials = _study(tmp_path).trials
  assert len(trials) == 10 and all(t.state == TS.COMPLETE for t in trials)
  assert len({_key(t.params) for t in trials}) == 10
  assert len({t.user_attrs['worker'] for t in trials}) == 2  # both did work
  assert sum(len(c['members']) for c in _calls(tmp_path)) == 10



def test_a_dead_machines_trials_are_retried_when_its_heartbeats_stop(tmp_path, monkeypatch):
  # Two "machines": workdirs a and b share one SQLite storage but no lock files, and
  # b runs under another host name, so only heartbeats (every 1 s, stale after 3 s)
  # can tell that a died.
  db = f'sqlite:///{tmp_path / "shared.db"}'
  planned = runner._plan('random', sw.SPACE, 6, 0)
  proc = _worker(tmp_path / 'a', 'random', 6, 2, 60.0, db, 1)
  deadline, running = time.time() + 120, []
  while time.time() < deadline and not running:
    time.sleep(0.5)
    if (tmp_path / 'shared.db').exists() and (tmp_path / 'a' / 'calls.jsonl').exists():
      running = [t for t in _study(tmp_path, db).trials if t.state == TS.RUNNING]
  assert len(running) == 2, proc.stderr.read() if proc.poll() is not None else running
  monkeypatch.setattr(runner.socket, 'gethostname', lambda: 'machine-b')
  store = runner.make_storage(db, tmp_path / 'b', heartbeat_s=1)
  time.sleep(4)  # past the grace period: a live worker's trials are not touched
  runner.recover_orphans(optuna.load_study(study_name='sweep', storage=store), tmp_path / 'b')
  assert [t.state for t in _study(tmp_path, db).trials if t.number < 2] == [TS.RUNNING] * 2
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  time.sleep(4)
  out = sw.sweep(tmp_path / 'b', 'random', 6, batch=2, storage=db, heartbeat_s=1)
  trials = _study(tmp_path, db).trials
  done = [t for t in trials if t.state == TS.COMPLETE]
  assert sorted(_key(t.params) for t in done) == sorted(map(_key, planned))
  assert {t.number for t in trials if t.state == TS.FAIL} == {t.number for t in running}
  assert sorted((t.user_attrs['retry_of'], t.user_attrs['retry_reason'])
                for t in done if 'retry_of' in t.user_attrs) == [
                    (t.number, 'no heartbeat') for t in running]
  assert out['states'] == {**out['states'], 'COMPLETE': 6, 'FAIL': 2, 'RUNNING': 0}

def test_a_trial_another_machine_has_just_asked_is_left_alone_until_the_grace_is_over(tmp_path):
  # Between study.ask and recording its worker, a remote asker's trial is RUNNING
  # without a worker. On a storage shared by machines another worker's recovery must
  # not fail it then (it did, under load: a live trial was failed as 'interrupted'
  # and trained twice); one still without a worker after the grace is a dead asker's.
  db = f'sqlite:///{tmp_path / "shared.db"}'
  study = optuna.create_study(study_name='sweep',
                              storage=runner.make_storage(db, tmp_path / 'b', heartbeat_s=1))
  study.ask({'x': optuna.distributions.FloatDistribution(0, 1)})  # "a" asked, then paused
  assert runner.recover_orphans(study, tmp_path / 'b', grace_s=60) == []
  assert [t.state for t in study.trials] == [TS.RUNNING]
  assert runner.recover_orphans(study, tmp_path / 'b', grace_s=0) == [0]  # past the grace
  assert [t.state for t in study.trials] == [TS.FAIL, TS.WAITING]
  assert study.trials[1].user_attrs['retry_of'] == 0
  # Where every asker holds this workdir's ask lock (grace_s=None), no wait is needed.
  study.ask()
  assert runner.recover_orphans(study, tmp_path / 'b') == [1]


def test_points_two_machines_both_queued_for_a_dead_creator_train_once(tmp_path, monkeypatch):
  # The creator of a shared study died after queuing 2 of its 6 planned points; two
  # waiting machines then both queued the 4 missing ones (each saw them missing). A
  # worker asking that queue trains every planned point once: the later copy of each
  # point is dropped as it is asked, and the drops do not count against the budget.
  db = f'sqlite:///{tmp_path / "shared.db"}'
  planned = runner._plan('random', sw.SPACE, 6, 0)
  study = optuna.create_study(study_name='sweep', storage=runner.make_storage(db, tmp_path))
  for i in (0, 1, 2, 3, 4, 5, 2, 3, 4, 5):
    study.enqueue_trial(planned[i], user_attrs={'point': i})
  monkeypatch.setattr(runner, 'PLAN_WAIT_S', 0)  # the creator is gone: do not wait for it
  out = sw.sweep(tmp_path / 'c', 'random', 6, batch=4, storage=db, heartbeat_s=1)
  trials = _study(tmp_path, db).trials
  assert [(t.state, t.user_attrs.get('fail_reason')) for t in trials] == (
      [(TS.COMPLETE, None)] * 6 + [(TS.FAIL, 'duplicate')] * 4)
  assert sorted(_key(t.params) for t in trials[:6]) == sorted(map(_key, planned))
  short = lambda m: _key({k: m[k] for k in ('optim.lr', 'task.beta')})  # noqa: E731
  assert sorted(short(m) for c in _calls(tmp_path / 'c') for m in c['members']) == sorted(
      map(short, planned))  # trained once each
  assert out['states']['COMPLETE'] == 6
  # A planned sweep whose queue another machine emptied gets a sampled trial from
  # Optuna's ask: it is dropped, not trained.
  assert runner._superfluous(study, study.ask(), planned=True) == 'unplanned'


@pytest.mark.slow
def test_cli_sweeps_the_digits_vae_and_fails_a_diverging_trial(tmp_path):
  proc = run_script('sweep.py', '--config=configs/vae_digits.py:quick', '--method=grid',
                    '--space=small', '--population_size=6', f'--workdir={tmp_path}',
                    '--config.train.epochs=2', timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / 'results.json').read_text())
  assert out['states']['COMPLETE'] == 6 and out['best']['value'] > 0
  cmd = (tmp_path / 'best_config.txt').read_text()
  assert cmd.startswith('python scripts/train.py --config=configs/vae_digits.py:quick')
  # A learning rate that makes the VAE diverge is a failed trial, not a crash.
  nan = runner.run_sweep(cli.load_config('configs/vae_digits.py', 'quick'),
                         {'optim.lr': Float(1e6, 1e7, grid=(1e6, 1e7))}, 'grid', 0, tmp_path / 'nan')
  assert nan['states'] == {**nan['states'], 'FAIL': 2, 'COMPLETE': 0}
