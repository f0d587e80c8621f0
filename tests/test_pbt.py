"""Population-based training inside the program: exploit copies a member's state exactly,
explore scales its hyperparameters, decisions follow the rule, and a resumed run ends
like the uninterrupted one."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from research import pbt as pbt_lib
from research.train import train_and_evaluate
from tests.helpers import small_mnist1d

POP = 'seed=0,1,2,3 optim.lr=0.3,1e-3,0.1,3e-3'


def config(**kw):
  return small_mnist1d(**{'train.epochs': 6, 'train.pbt': 'every=2,fraction=0.25,keys=optim.lr',
                          'train.checkpoint_keep': 100, 'population': POP,
                          'population_mode': 'zip', **kw})


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('pbt')
  return root, train_and_evaluate(config(), root / 'run')


def test_exploit_and_explore_follow_the_rule(run):
  root, out = run
  recs = [json.loads(l) for l in (root / 'run/metrics.jsonl').read_text().splitlines()]
  log = [e for m in out['members'] for e in m['pbt']]
  assert sorted(e['epoch'] for e in log) == [2, 4]  # every second evaluation, not the last
  lr = {m['member']: m['hparams']['optim.lr'] for m in out['members']}
  for epoch in (2, 4):
    acc = {r['member']: r['val/accuracy'] for r in recs if r['epoch'] == epoch}
    ranked = sorted(acc, key=lambda i: -acc[i])
    (e,) = [e for e in log if e['epoch'] == epoch]
    assert e['member'] == ranked[-1] and e['from'] == ranked[0]  # worst copies best (q = 1)
    ratio = e['hparams']['optim.lr'] / lr[e['from']]
    assert min(abs(ratio - 0.8), abs(ratio - 1.2)) < 1e-5
    lr[e['member']] = e['hparams']['optim.lr']
  assert {m['member']: m['final_hparams']['optim.lr'] for m in out['members']} == \
      pytest.approx(lr)


def test_results_hold_lineage_and_trajectories_consistent_with_the_moves_and_pbt_png(run):
  root, out = run
  recs = [json.loads(l) for l in (root / 'run/metrics.jsonl').read_text().splitlines()]
  lineage = out['pbt_lineage']
  assert lineage == sorted((e for m in out['members'] for e in m['pbt']),
                           key=lambda e: (e['epoch'], e['member']))
  spe = out['steps_per_epoch']
  assert [(e['epoch'], e['step']) for e in lineage] == [(2, 2 * spe), (4, 4 * spe)]
  traj = {m['member']: {t['epoch']: t['optim.lr'] for t in m['hparams_trajectory']}
          for m in out['members']}
  epochs = sorted({r['epoch'] for r in recs})
  for m in out['members']:
    i = m['member']
    assert sorted(traj[i]) == epochs  # every evaluation
    assert traj[i][epochs[0]] == pytest.approx(m['hparams']['optim.lr'], rel=1e-6)
    assert traj[i][epochs[-1]] == pytest.approx(m['final_hparams']['optim.lr'], rel=1e-6)
    moved = {e['epoch'] for e in m['pbt']}
    for a, b in zip(epochs, epochs[1:]):  # the value changes only after a move
      assert (traj[i][a] != traj[i][b]) == (a in moved), (i, a)
  for e in lineage:
    receiver, donor, t = e['member'], e['from'], e['epoch']
    factor = e['factors']['optim.lr']
    assert factor in (0.8, 1.2) and e['explore'] == {'optim.lr': 'perturb'}
    # after the move the receiver trains with the donor's value times the factor
    assert traj[receiver][t + 1] == pytest.approx(traj[donor][t] * factor, rel=1e-6)
    assert e['before']['optim.lr'] == traj[receiver][t]
  # the records carry the same values the trajectories were read from
  assert all(r['pbt_hparams']['optim.lr'] == traj[r['member']][r['epoch']] for r in recs)
  png = root / 'run/pbt.png'
  assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b'\x89PNG'


def test_resumed_pbt_run_equals_uninterrupted(run):
  root, out = run
  work = root / 'resumed'
  shutil.copytree(root / 'run', work)
  for p in (work / 'checkpoints').iterdir():  # as if killed after the exploit at epoch 2
    if p.name.isdigit() and int(p.name) > 3:
      shutil.rmtree(p)
  (work / 'results.json').unlink()
  again = train_and_evaluate(config(), work)
  for a, b in zip(out['members'], again['members']):
    assert a['pbt'] == b['pbt'] and a['final_hparams'] == b['final_hparams']
    np.testing.assert_allclose(a['test/loss'], b['test/loss'], rtol=1e-6)


def test_decide_is_truncation_selection():
  p = pbt_lib.PBT(every=1, fraction=0.25, keys=('optim.lr',))
  values = np.array([0.9, 0.1, 0.5, np.nan, 0.7, 0.3, 0.2, 0.8])
  moves = p.decide(values, np.ones(8, bool), maximize=True, seed=0, epoch=1)
  # 8 live, q = 2: the worst two (nan, 0.1) copy from the best two (0.9, 0.8)
  assert sorted(b for b, _, _ in moves) == [1, 3]
  assert all(d in (0, 7) for _, d, _ in moves)
  assert moves == p.decide(values, np.ones(8, bool), True, 0, 1)  # reproducible


def test_resample_draws_from_the_initial_range_with_probability_p():
  ranges = {'optim.lr': (1e-4, 1e-1), 'train.input_noise': (0.0, 0.5)}
  values = np.arange(8, dtype=float)
  live = np.ones(8, bool)
  keys = ('optim.lr', 'train.input_noise')
  always = pbt_lib.parse('every=1,keys=optim.lr+train.input_noise,explore=resample,resample_p=1')
  never = pbt_lib.parse('every=1,keys=optim.lr+train.input_noise,explore=resample,resample_p=0')
  assert (always.explore, always.resample_p, always.keys) == ('resample', 1.0, keys)
  draws = {k: [] for k in keys}
  for epoch in range(500):
    for _, _, changes in always.decide(values, live, True, 0, epoch, ranges):
      for k, (how, x) in changes.items():
        assert how == 'resample' and ranges[k][0] <= x <= ranges[k][1]
        draws[k].append(x)
    for _, _, changes in never.decide(values, live, True, 0, epoch, ranges):
      assert all(how == 'perturb' and x in (0.8, 1.2) for how, x in changes.values())
  lr, noise = np.log10(draws['optim.lr']), np.asarray(draws['train.input_noise'])
  # log-uniform over 1e-4..1e-1: log10 uniform on [-4, -1] (mean -2.5, std 3 / sqrt 12);
  # a lower end of 0: uniform on [0, 0.5] (mean 0.25, std 0.5 / sqrt 12)
  assert abs(lr.mean() + 2.5) < 0.1 and abs(lr.std() - 3 / 12 ** 0.5) < 0.06
  assert abs(noise.mean() - 0.25) < 0.02 and abs(noise.std() - 0.5 / 12 ** 0.5) < 0.02
  # resample_p = 0.25: a quarter of the explored values are drawn anew
  quarter = pbt_lib.parse('every=1,explore=resample')
  assert quarter.resample_p == 0.25
  hows = [how for epoch in range(1000)
          for _, _, ch in quarter.decide(values, live, True, 7, epoch, ranges)
          for how, _ in ch.values()]
  assert abs(hows.count('resample') / len(hows) - 0.25) < 0.03
  # deterministic from (seed, epoch)
  assert quarter.decide(values, live, True, 7, 3, ranges) == \
      quarter.decide(values, live, True, 7, 3, ranges)
  assert always.decide(values, live, True, 7, 3, ranges) != \
      always.decide(values, live, True, 7, 4, ranges)
  assert always.decide(values, live, True, 7, 3, ranges) != \
      always.decide(values, live, True, 8, 3, ranges)


def test_resampling_run_logs_values_from_the_initial_range(tmp_path):
  out = train_and_evaluate(
      config(**{'train.pbt': 'every=1,keys=optim.lr,explore=resample,resample_p=0.5',
                'train.epochs': 5}), tmp_path / 'run')
  log = sorted((e for m in out['members'] for e in m['pbt']), key=lambda e: e['epoch'])
  assert [e['epoch'] for e in log] == [1, 2, 3, 4]
  hows = [e['explore']['optim.lr'] for e in log]
  assert set(hows) == {'perturb', 'resample'}, hows  # this seed draws both
  lr = {m['member']: m['hparams']['optim.lr'] for m in out['members']}
  for e in log:
    new, donor = e['hparams']['optim.lr'], e['donor_hparams']['optim.lr']
    assert donor == pytest.approx(lr[e['from']], rel=1e-6) and \
        e['before']['optim.lr'] == pytest.approx(lr[e['member']], rel=1e-6)
    if e['explore']['optim.lr'] == 'resample':
      assert 1e-3 * (1 - 1e-6) <= new <= 0.3 * (1 + 1e-6) and e['factors'] == {}
    else:
      assert new == pytest.approx(donor * e['factors']['optim.lr'], rel=1e-6)
    lr[e['member']] = new
  assert {m['member']: m['final_hparams']['optim.lr'] for m in out['members']} == \
      pytest.approx(lr)


@pytest.mark.parametrize('spec, match', [
    ('every=0', 'every >= 1'), ('fraction=0.9', 'fraction <= 0.5'),
    ('keys=task.beta', 'cannot be explored'), ('evry=2', 'expected every=E'),
    ('explore=random', 'explore must be perturb or resample'),
    ('resample_p=0.5', 'resample_p needs explore=resample'),
    ('explore=resample,resample_p=2', '0 <= resample_p <= 1'),
])
def test_bad_pbt_specs_are_one_line_errors(tmp_path, spec, match):
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(config(**{'train.pbt': spec}), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_pbt_refuses_members_of_different_structure(tmp_path):
  with pytest.raises(ValueError, match='share one structure'):
    train_and_evaluate(config(population='seed=0,1 model.hidden=8,16'), tmp_path / 'run')


def test_exploit_copies_the_donors_state_exactly(run):
  import jax

  from research.train import load_trained
  root, out = run
  work = root / 'at2'
  shutil.copytree(root / 'run', work)
  for p in (work / 'checkpoints').iterdir():  # the checkpoint written right after the exploit
    if p.name.isdigit() and int(p.name) > 2:
      shutil.rmtree(p)
  _, _, _, state = load_trained(config(), work)
  (e,) = [e for m in out['members'] for e in m['pbt'] if e['epoch'] == 2]
  b, d = e['member'], e['from']
  for x in jax.tree.leaves((state.params, state.model_state)):
    np.testing.assert_array_equal(np.asarray(x)[b], np.asarray(x)[d])
  # the optimizer's moments too; only its injected hyperparameters are the member's own
  moments = jax.tree.leaves(state.opt_state.inner_state)
  assert moments
  for x in moments:
    if np.ndim(x):
      np.testing.assert_array_equal(np.asarray(x)[b], np.asarray(x)[d])
  lr = np.asarray(state.opt_state.hyperparams['learning_rate'])
  assert lr[b] == pytest.approx(e['hparams']['optim.lr']) and lr[b] != lr[d]
  assert not np.array_equal(np.asarray(state.rng)[b], np.asarray(state.rng)[d])  # own stream
