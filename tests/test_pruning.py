"""Pruning inside the population, against Optuna's pruner and against unpruned runs.

The median rule's decisions are checked against Optuna's ``MedianPruner`` fed the
same curves (the other members as completed trials); successive halving against
a direct statement of the synchronous algorithm. A pruned run's members equal
the unpruned run's while they train, and a resumed pruned run ends like the
uninterrupted one.
"""
from __future__ import annotations

import json
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


@pytest.mark.parametrize('spec', ['median:warmup=1', 'asha:eta=2,min=1',
                                  'hyperband:eta=2,min=1,brackets=2'])
def test_pruned_run_follows_the_rule_and_its_members_equal_the_unpruned_run(plain, spec):
  root, _, full = plain
  work = root / spec.replace(':', '_').replace(',', '_').replace('=', '')
  out = train_and_evaluate(config(spec), work)
  got, recs = curves(work)
  pruned_at = {r['member']: r['epoch'] for r in recs if r.get('pruned')}
  epochs = sorted({r['epoch'] for r in recs})
  rungs = {i: (0, 1, 3, 7) for i in range(K)}  # evaluations after 1, 2, 4, 8 (min 1, eta 2)
  if spec.startswith('median'):
    expected = optuna_median(full, warmup=1, direction='maximize')
  elif spec.startswith('asha'):
    expected = halving(full, list(range(K)), rungs[0])
  else:  # two brackets, members 0, 2, 4 from evaluation 1 and 1, 3, 5 from evaluation 2
    rungs.update({i: (1, 3, 7) for i in (1, 3, 5)})
    expected = {**halving(full, [0, 2, 4], (0, 1, 3, 7)), **halving(full, [1, 3, 5], (1, 3, 7))}
  assert expected, 'the rule prunes nobody here; the test needs a population it prunes'
  assert {m: epochs.index(e) for m, e in pruned_at.items()} == expected
  # results.json: each pruned member's epoch, rule, rung (of its bracket) and value there
  kind = spec.partition(':')[0]
  for m in out['members']:
    i = m['member']
    if i not in expected:
      assert m['pruned'] is None and m['pruned_epoch'] is None
      continue
    e = expected[i]
    want = {'epoch': epochs[e], 'rule': kind, 'evaluation': e,
            'rung': None if kind == 'median' else rungs[i].index(e),
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
    ('median:eta=2', 'median takes warmup'),
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
