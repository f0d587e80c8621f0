"""Pruning inside the population, against Optuna's pruner and against unpruned runs.

The median rule (Vizier's, Golovin et al. 2017) is checked against decisions
worked out by hand on given curves and against a direct statement of the rule on
the unpruned run's curves; ``median:rule=optuna`` against Optuna's
``MedianPruner`` fed the same curves (the other members as completed trials);
successive halving against a direct statement of the synchronous algorithm. A pruned run's members equal
the unpruned run's while they train, and a resumed pruned run ends like the
uninterrupted one.
"""
from __future__ import annotations

import json
import logging as py_logging
import shutil

import numpy as np
import optuna
import pytest

from research import pruning
from research.train import train_and_evaluate
from tests.helpers import small_mnist1d

POP = 'seed=0,1,2,3,4,5 optim.lr=0.3,1e-3,0.1,3e-3,0.03,1e-4'
K = 6


def config(prune: str, **kw):
  return small_mnist1d(**{'train.epochs': 8, 'train.prune': prune, 'train.compact': 0.75,
                          'train.checkpoint_keep': 100, 'population': POP,
                          'population_mode': 'zip', **kw})


def curves(workdir, key='val/accuracy'):
  """(evaluations, K) of ``key``, NaN where a member wrote no record; the records."""
  recs = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  epochs = sorted({r['epoch'] for r in recs})
  out = np.full((len(epochs), K), np.nan)
  for r in recs:
    out[epochs.index(r['epoch']), r['member']] = r[key]
  return out, recs


def optuna_median(values: np.ndarray, warmup: int, direction: str) -> dict[int, int]:
  """Evaluation at which each member is pruned by Optuna's MedianPruner, run over the
  full curves: at evaluation e, the other members still training are completed trials."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  pruner = optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=warmup,
                                       n_min_trials=1)
  pruned: dict[int, int] = {}
  for e in range(values.shape[0]):
    live = [i for i in range(K) if i not in pruned]
    decided = {}
    for i in live:
      study = optuna.create_study(direction=direction)
      for j in live:
        if j != i:
          study.add_trial(optuna.trial.create_trial(
              state=optuna.trial.TrialState.COMPLETE, value=float(values[e, j]),
              intermediate_values={s: float(values[s, j]) for s in range(e + 1)}))
      study.add_trial(optuna.trial.create_trial(
          state=optuna.trial.TrialState.RUNNING,
          intermediate_values={s: float(values[s, i]) for s in range(e + 1)}))
      trial = study.get_trials(deepcopy=False)[-1]
      decided[i] = pruner.prune(study, trial)
    pruned.update({i: e for i, p in decided.items() if p})
  return pruned


def vizier_median(values: np.ndarray, warmup: int) -> dict[int, int]:
  """Evaluation at which each member is stopped by Vizier's median stopping rule (higher
  is better), run over the full curves: at evaluation e >= warmup, a member whose best
  value up to e is strictly below the median of the running averages (means over
  evaluations 0..e) of the other members still training at e."""
  pruned: dict[int, int] = {}
  for e in range(warmup, values.shape[0]):
    live = [i for i in range(values.shape[1]) if i not in pruned]
    for i in live:
      averages = [sum(values[s, j] for s in range(e + 1)) / (e + 1) for j in live if j != i]
      if averages and max(values[s, i] for s in range(e + 1)) < float(np.median(averages)):
        pruned[i] = e
  return pruned


@pytest.fixture(scope='module')
def plain(tmp_path_factory):
  root = tmp_path_factory.mktemp('pruning')
  out = train_and_evaluate(config(''), root / 'plain')
  assert out['select_metric'] == 'val/accuracy'  # the rules maximise it
  return root, out, curves(root / 'plain')[0]


def halving(full, alive, rungs, eta=2):
  """Synchronous successive halving over ``alive`` members at evaluations ``rungs``
  (higher is better, ties go on together): member -> evaluation it is stopped at."""
  out = {}
  for e in rungs:
    cut = sorted((full[e, i] for i in alive), reverse=True)[max(1, len(alive) // eta) - 1]
    keep = [i for i in alive if full[e, i] >= cut]
    out.update({i: e for i in alive if i not in keep})
    alive = keep
  return out


@pytest.mark.parametrize('spec', ['median:warmup=1', 'median:warmup=1,rule=optuna',
                                  'asha:eta=2,min=1', 'hyperband:eta=2,min=1,brackets=2'])
def test_pruned_run_follows_the_rule_and_its_members_equal_the_unpruned_run(plain, spec):
  root, _, full = plain
  work = root / spec.replace(':', '_').replace(',', '_').replace('=', '')
  out = train_and_evaluate(config(spec), work)
  got, recs = curves(work)
  pruned_at = {r['member']: r['epoch'] for r in recs if r.get('pruned')}
  epochs = sorted({r['epoch'] for r in recs})
  rungs = {i: (0, 1, 3, 7) for i in range(K)}  # evaluations after 1, 2, 4, 8 (min 1, eta 2)
  if spec.endswith('rule=optuna'):
    expected = optuna_median(full, warmup=1, direction='maximize')
  elif spec.startswith('median'):
    expected = vizier_median(full, warmup=1)
  elif spec.startswith('asha'):
    expected = halving(full, list(range(K)), rungs[0])
  else:  # two brackets, members 0, 2, 4 from evaluation 1 and 1, 3, 5 from evaluation 2
    rungs.update({i: (1, 3, 7) for i in (1, 3, 5)})
    expected = {**halving(full, [0, 2, 4], (0, 1, 3, 7)), **halving(full, [1, 3, 5], (1, 3, 7))}
  assert expected, 'the rule prunes nobody here; the test needs a population it prunes'
  assert {m: epochs.index(e) for m, e in pruned_at.items()} == expected
  # results.json: each pruned member's epoch, rule, rung (of its bracket) and value there
  kind = 'median_optuna' if spec.endswith('rule=optuna') else spec.partition(':')[0]
  for m in out['members']:
    i = m['member']
    if i not in expected:
      assert m['pruned'] is None and m['pruned_epoch'] is None
      continue
    e = expected[i]
    want = {'epoch': epochs[e], 'rule': kind, 'evaluation': e,
            'rung': None if kind.startswith('median') else rungs[i].index(e),
            'value': pytest.approx(full[e, i], rel=1e-6)}
    if kind == 'hyperband':
      want['bracket'] = i % 2
    assert m['pruned'] == want and m['pruned_epoch'] == epochs[e]
  # While a member trains, its numbers are those of the unpruned run.
  for i in range(K):
    n = expected.get(i, full.shape[0] - 1) + 1
    np.testing.assert_allclose(got[:n, i], full[:n, i], rtol=1e-5, err_msg=f'member {i}')


def test_resumed_pruned_run_equals_uninterrupted(plain):
  root, _, _ = plain
  ref = train_and_evaluate(config('median:warmup=1'), root / 'ref')
  work = root / 'resumed'
  shutil.copytree(root / 'ref', work)
  for p in (work / 'checkpoints').iterdir():  # as if killed after the third checkpoint
    if p.name.isdigit() and int(p.name) > 3:
      shutil.rmtree(p)
  (work / 'results.json').unlink()
  out = train_and_evaluate(config('median:warmup=1'), work)
  for a, b in zip(ref['members'], out['members']):
    assert a['best_epoch'] == b['best_epoch'] and a['steps'] == b['steps']
    assert a['pruned'] == b['pruned']
    np.testing.assert_allclose(a['test/loss'], b['test/loss'], rtol=1e-6)
  assert curves(work)[1] and [r.get('pruned') for r in curves(work)[1]] == \
      [r.get('pruned') for r in curves(root / 'ref')[1]]


@pytest.mark.parametrize('spec, match', [
    ('mediam', "unknown pruner 'mediam'"),
    ('asha:eta=1', 'eta >= 2'),
    ('median:eta=2', 'median takes warmup, rule'),
    ('median:rule=tpe', 'rule must be one of vizier, optuna'),
    ('asha:eta=x', 'must be an integer'),
    ('hyperband:warmup=1', 'hyperband takes eta, min, brackets'),
])
def test_bad_rules_are_one_line_errors(tmp_path, spec, match):
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(config(spec), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_asha_keeps_ties_and_at_least_one():
  p = pruning.parse('asha:eta=3')
  v = np.array([[1.0, 1.0, 2.0, np.nan]])
  assert p.decide(v, np.array([True, True, True, False]), maximize=False).tolist() == \
      [False, False, True, False]
  assert p.decide(np.array([[5.0, np.nan, np.nan, np.nan]]), np.array([True, 0, 0, 0], bool),
                  maximize=False).tolist() == [False] * 4


# Four members, higher is better; the hand computation at evaluation 1 (warmup 1):
#   running averages over evaluations 0..1: m0 (.50 + .60) / 2 = .55, m1 (.40 + .55) / 2 = .475,
#   m2 (.30 + .35) / 2 = .325, m3 (.20 + .50) / 2 = .35
#   m0: best .60 vs median(.475, .325, .35) = .35  -> goes on
#   m1: best .55 vs median(.55, .325, .35) = .35   -> goes on
#   m2: best .35 vs median(.55, .475, .35) = .475  -> stopped
#   m3: best .50 vs median(.55, .475, .325) = .475 -> goes on (Optuna's rule stops it:
#       median of the others' values at 1, (.60, .55, .35), is .55 > .50)
CURVES = np.array([[0.50, 0.40, 0.30, 0.20],
                   [0.60, 0.55, 0.35, 0.50]])


def test_median_rule_is_vizier_running_averages_by_hand():
  p = pruning.parse('median:warmup=1')
  assert (p.rule, p.name) == ('vizier', 'median')
  live = np.ones(4, bool)
  assert p.decide(CURVES[:1], live, maximize=True).tolist() == [False] * 4  # warmup
  assert p.decide(CURVES, live, maximize=True).tolist() == [False, False, True, False]
  # the same curves as losses (lower is better): the same decisions
  assert p.decide(1 - CURVES, live, maximize=False).tolist() == [False, False, True, False]
  optuna_rule = pruning.parse('median:rule=optuna,warmup=1')
  assert optuna_rule.name == 'median_optuna'
  assert optuna_rule.decide(CURVES, live, maximize=True).tolist() == [False, False, True, True]
  assert optuna_rule.record(CURVES, 3) == {'rule': 'median_optuna', 'evaluation': 1,
                                           'rung': None, 'value': 0.5}


def test_vizier_stops_a_member_whose_best_trails_the_others_averages():
  # A: best .40; B and C fell to .35 and .38 but averaged (.90 + .35) / 2 = .625 and
  # (.80 + .38) / 2 = .59: Vizier stops A (.40 < median .6075); Optuna keeps it
  # (.40 > median(.35, .38) = .365). B: best .90 > median(.35, .59) = .47; C: .80 > .4925.
  v = np.array([[0.30, 0.90, 0.80], [0.40, 0.35, 0.38]])
  live = np.ones(3, bool)
  assert pruning.parse('median').decide(v, live, True).tolist() == [True, False, False]
  assert pruning.parse('median:rule=optuna').decide(v, live, True).tolist() == [False] * 3
  # members stopped earlier (NaN at the evaluation) are not among the others; equal to the
  # median is not strictly worse
  v = np.array([[0.5, 0.2, 0.9, 0.1], [0.6, 0.4, np.nan, 0.3]])
  # m1: best .4 vs median of m0's .55 and m3's .2 = .375 -> goes on; m3: .3 vs (.55 + .3) / 2
  # = .425 -> stopped; m0 -> goes on
  assert pruning.parse('median').decide(v, np.array([1, 1, 0, 1], bool), True).tolist() == \
      [False, False, False, True]
  # m0: best .5 = median of the averages .5, .25, .875 (exact in binary): goes on; at .49 stopped
  tie = np.array([[0.125, 0.25, 0.125, 1.0], [0.5, 0.75, 0.375, 0.75]])
  assert not pruning.parse('median').decide(tie, np.ones(4, bool), True)[0]
  tie[1, 0] = 0.49
  assert pruning.parse('median').decide(tie, np.ones(4, bool), True)[0]


def test_the_end_of_training_line_counts_why_every_member_stopped(tmp_path, caplog):
  """One member diverges at once, the rule prunes two, the rest run out of patience
  (after a compaction): the closing log line names each count."""
  config = small_mnist1d(**{'population': 'seed=0,1,2,3,4 optim.lr=1e30,0.3,0.3,0.3,0.3',
                            'population_mode': 'zip', 'train.prune': 'asha:eta=2,min=1',
                            'train.patience': 1, 'train.epochs': 40, 'train.compact': 0.5})
  with caplog.at_level(py_logging.INFO):
    out = train_and_evaluate(config, tmp_path / 'run')
  pruned = sum(m['pruned'] is not None for m in out['members'])
  diverged = sum(bool(m['diverged']) for m in out['members'])
  assert (pruned, diverged) == (2, 1)
  assert out['member_steps']['computed'] < out['member_steps']['uncompacted']
  lines = [r.getMessage() for r in caplog.records if 'Every member has stopped' in r.getMessage()]
  assert len(lines) == 1 and lines[0].endswith(
      ': 2 pruned, 1 diverged, 2 without improvement for 1 evaluations'), lines
