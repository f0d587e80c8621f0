"""Pruning from outside the loop: `train_and_evaluate`'s ``on_evaluation`` stops exactly
the members it names, and the sweep's ``optuna_asha`` / ``optuna_hyperband`` modes
(each trial alone, Optuna's own pruner deciding) tell a trial PRUNED exactly when
Optuna's pruner says so, with the settings of our in-population rules."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from research import cli, pruning
from research.sweep import runner
from research.sweep.space import Float
from research.train import train_and_evaluate
from tests.helpers import small_mnist1d

POP = 'seed=0,1,2,3 optim.lr=0.1,1e-3,0.03,3e-3'
K, EPOCHS = 4, 4
STOP = {2: [1], 3: [2, 1]}  # epoch -> members the hook names (1 again: already stopped)


def _config():
  return small_mnist1d(**{'train.epochs': EPOCHS, 'train.compact': 0.75, 'population': POP,
                          'population_mode': 'zip', 'train.patience': 0})


def _records(workdir):
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_on_evaluation_stops_exactly_the_members_it_names(tmp_path):
  plain = train_and_evaluate(_config(), tmp_path / 'plain')
  seen = []

  def hook(epoch, values):
    seen.append((epoch, values))
    stop = np.zeros(K, bool)
    stop[STOP.get(epoch, [])] = True
    return stop

  hooked = train_and_evaluate(_config(), tmp_path / 'hooked', on_evaluation=hook)
  curve = {(r['epoch'], r['member']): r for r in _records(tmp_path / 'plain')}
  # the hook saw every member's validation metric, NaN once a member stopped
  assert [e for e, _ in seen] == [1, 2, 3, 4]
  for epoch, values in seen:
    gone = [j for e, js in STOP.items() if e < epoch for j in js]
    for j in range(K):
      if j in gone:
        assert np.isnan(values[j])
      else:
        assert values[j] == pytest.approx(curve[epoch, j]['val/accuracy'], abs=1e-6)
  stopped = {1: 2, 2: 3}  # member -> epoch it stopped at
  spe = plain['steps_per_epoch']
  for p, h in zip(plain['members'], hooked['members']):
    j = p['member']
    if j not in stopped:  # trained on as in the unhooked run
      assert h['pruned'] is None and h['steps'] == p['steps'] == EPOCHS * spe
      for k in ('val/accuracy', 'test/accuracy', 'best_epoch'):
        assert h[k] == pytest.approx(p[k], abs=1e-6), (j, k)
      continue
    e = stopped[j]
    assert h['pruned_epoch'] == e and h['pruned']['rule'] == 'callback'
    assert h['pruned']['evaluation'] == e - 1
    assert h['pruned']['value'] == pytest.approx(curve[e, j]['val/accuracy'], abs=1e-6)
    assert h['steps'] == e * spe
    # its results are its best parameters up to the stop: the unhooked run's best so far
    best = max(range(1, e + 1), key=lambda s: curve[s, j]['val/accuracy'])
    assert h['best_epoch'] == best
    assert h['val/accuracy'] == pytest.approx(curve[best, j]['val/accuracy'], abs=1e-6)
  recs = _records(tmp_path / 'hooked')
  assert [r['epoch'] for r in recs if r.get('pruned')] == [2, 3]
  assert max(r['epoch'] for r in recs if r['member'] == 1) <= 3  # compacted away after


def _tiny(epochs):
  c = cli.load_config('configs/vae_digits.py', 'quick')
  c.model.hidden = (8, 8)
  c.model.latent = 2
  c.train.epochs = epochs
  c.train.eval_every = 1
  c.train.patience = 0
  c.lock()
  return c


def _replay(pruner, trials, direction='minimize'):
  """Each trial's epoch of pruning (None: completed) when Optuna's ``pruner`` decides
  the recorded curves in trial order, the way Study.optimize would."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(direction=direction, pruner=pruner)
  out = []
  for t in trials:
    trial = study.ask()
    stop = None
    for epoch, v in sorted(t.intermediate_values.items()):
      trial.report(v, epoch)
      if trial.should_prune():
        stop = epoch
        break
    out.append(stop)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED) if stop else study.tell(trial, 1.0)
  return out


def test_optuna_asha_mode_prunes_trials_exactly_when_optunas_pruner_says(tmp_path):
  c = _tiny(epochs=4)
  space = {'optim.lr': Float(1e-4, 3e-2, log=True)}
  out = runner.run_sweep(c, space, 'random', 5, tmp_path, batch=8, seed=0,
                         trial_pruner='optuna_asha:eta=2')
  study = optuna.load_study(study_name='sweep', storage=runner.make_storage(None, tmp_path))
  trials = study.get_trials()
  states = [t.state for t in trials]
  assert states.count(optuna.trial.TrialState.PRUNED) >= 1, states
  assert states.count(optuna.trial.TrialState.COMPLETE) >= 1, states
  want = _replay(optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
                 trials)
  steps_per_epoch = None
  for t, stop in zip(trials, want):
    res = json.loads((tmp_path / t.user_attrs['run'] / 'results.json').read_text())
    (m,) = res['members']  # each trial trained alone
    steps_per_epoch = res['steps_per_epoch']
    assert t.user_attrs['program_members'] == 1
    if stop is None:
      assert t.state == optuna.trial.TrialState.COMPLETE and m['pruned'] is None
      assert t.value == pytest.approx(m['val/nelbo']) and max(t.intermediate_values) == 4
    else:
      assert t.state == optuna.trial.TrialState.PRUNED
      assert m['pruned_epoch'] == stop and m['pruned']['rule'] == 'callback'
      assert max(t.intermediate_values) == stop  # nothing trained (or reported) after it
    epochs = stop or 4
    assert t.user_attrs['member_steps'] == m['steps'] == epochs * steps_per_epoch
    assert t.user_attrs['program_member_steps'] == m['steps']
  assert out['member_steps'] == out['computed_member_steps'] == sum(
      (s or 4) * steps_per_epoch for s in want)
  assert out['states']['PRUNED'] == sum(s is not None for s in want)


@pytest.mark.parametrize('epochs, eval_every, spec, brackets', [
    (30, 5, 'optuna_hyperband', 2), (30, 5, 'optuna_hyperband:eta=2', 3),
    (9, 1, 'optuna_hyperband:min=1', 3), (30, 5, 'optuna_hyperband:brackets=1', 1)])
def test_optuna_hyperband_gets_our_rungs_and_bracket_count(epochs, eval_every, spec, brackets):
  c = _tiny(epochs)
  with c.unlocked():
    c.train.eval_every = eval_every
  p = runner.optuna_pruner(spec, c)
  evaluations = -(-epochs // eval_every)
  ours = pruning.parse(spec.removeprefix('optuna_'), evaluations)
  assert isinstance(p, optuna.pruners.HyperbandPruner) and ours.brackets == brackets
  study = optuna.create_study(pruner=p)
  p._try_initialization(study)
  assert p._n_brackets == brackets
  for b in range(brackets):  # bracket b's first rung: ours at evaluation min * eta**b
    sh = p._pruners[b]
    assert sh._min_resource == ours.min * eval_every and sh._reduction_factor == ours.eta
    assert sh._min_early_stopping_rate == b


def test_optuna_asha_settings_and_errors():
  c = _tiny(30)
  with c.unlocked():
    c.train.eval_every = 5
  p = runner.optuna_pruner('optuna_asha', c)
  ours = pruning.parse('asha')
  assert isinstance(p, optuna.pruners.SuccessiveHalvingPruner)
  assert (p._min_resource, p._reduction_factor) == (ours.min * 5, ours.eta)
  assert (p._min_early_stopping_rate, p._bootstrap_count) == (0, 0)
  with pytest.raises(ValueError, match='optuna_asha:eta=1: needs eta >= 2'):
    runner.optuna_pruner('optuna_asha:eta=1', c)
  with pytest.raises(ValueError, match="unknown trial pruner 'optuna_median'"):
    runner.optuna_pruner('optuna_median', c)
  with c.unlocked():
    c.train.prune = 'asha'
  with pytest.raises(ValueError, match='use one of them'):
    runner.run_sweep(c, {'optim.lr': Float(1e-4, 1e-2, log=True)}, 'random', 1, '/nonexistent',
                     trial_pruner='optuna_asha')
