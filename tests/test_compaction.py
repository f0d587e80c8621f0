"""Compaction: members that stopped leave the program; the others' numbers do not change.

A population whose members early-stop at different epochs trains once with
compaction (``train.compact``) and once without; every member must end with the
same results and write the same records while it trains, and a run resumed from a
checkpoint taken after compaction must end like the uninterrupted one.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from research.train import train_and_evaluate
from tests.helpers import small_mnist1d

POP = 'seed=0,1,2,3 optim.lr=0.3,1e-3,0.1,3e-3'


def config(compact: float, **kw):
  return small_mnist1d(**{'train.epochs': 10, 'train.patience': 1, 'train.compact': compact,
                          'train.checkpoint_keep': 100, 'population': POP,
                          'population_mode': 'zip', **kw})


def records(workdir):
  out = {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    r = json.loads(line)
    r.pop('time_s'), r.pop('perf/examples_per_s')
    out[(r['member'], r['epoch'])] = r
  return out


def assert_same_members(a, b):
  for x, y in zip(a['members'], b['members']):
    for k, v in x.items():
      if isinstance(v, float):
        np.testing.assert_allclose(v, y[k], rtol=1e-5, atol=1e-7, err_msg=k)
      else:
        assert v == y[k], k


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('compaction')
  return (root, train_and_evaluate(config(0.0), root / 'plain'),
          train_and_evaluate(config(0.75), root / 'compact'))


def test_compacted_members_equal_the_uncompacted_run(runs):
  root, plain, compact = runs
  assert_same_members(plain, compact)
  stops = sorted(m['best_epoch'] for m in plain['members'])
  assert stops[0] < stops[-1]  # the members do stop at different epochs
  # results.json: the member-steps computed, and what an uncompacted program computes
  assert plain['member_steps']['computed'] == plain['member_steps']['uncompacted']
  assert compact['member_steps']['uncompacted'] == plain['member_steps']['computed']
  assert compact['member_steps']['computed'] < compact['member_steps']['uncompacted']
  a, b = records(root / 'plain'), records(root / 'compact')
  assert set(b) < set(a)  # stopped members wrote no more records once they left
  for key, rec in b.items():
    for k, v in rec.items():
      if isinstance(v, float):
        np.testing.assert_allclose(v, a[key][k], rtol=1e-5, atol=1e-7, err_msg=f'{key} {k}')
      else:
        assert v == a[key][k], (key, k)


def killed_after_first_compaction(run_dir, work, members: int) -> None:
  """A copy of the finished ``run_dir`` in ``work`` as if killed after the first
  checkpoint at which fewer than ``members`` members were on the device."""
  shutil.copytree(run_dir, work)
  seen = {}
  for (member, epoch) in records(work):
    seen.setdefault(epoch, set()).add(member)
  cut = next(e for e in sorted(seen) if len(seen[e]) < members)
  for p in (work / 'checkpoints').iterdir():
    if p.name.isdigit() and int(p.name) > cut:
      shutil.rmtree(p)
  (work / 'results.json').unlink()


def test_resume_after_compaction_equals_uninterrupted(runs):
  root, _, compact = runs
  work = root / 'resumed'
  killed_after_first_compaction(root / 'compact', work, 4)
  out = train_and_evaluate(config(0.75), work)
  assert_same_members(compact, out)
  assert out['member_steps'] == compact['member_steps']
  assert records(work).keys() == records(root / 'compact').keys()


@pytest.mark.parametrize('value', [2.0, -0.5])
def test_a_compact_fraction_outside_0_1_is_refused(tmp_path, value):
  with pytest.raises(ValueError, match=r'train.compact=.*fraction in \[0, 1\]'):
    train_and_evaluate(config(value), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_a_population_of_mixed_widths_and_optimizers_compacts_like_the_uncompacted_run(
    tmp_path):
  """Narrow members' padding masks are nested trees along the member axis; compaction
  repacks them like every other member-axis array (a mixed sweep batch under ASHA)."""
  from research.experiments.common import variant_config
  pop = 'seed=0,1,2,3 optim.name=adam,rmsprop,sgd,adam model.latent=2,8,32,8'
  cfg = lambda compact: variant_config(
      'configs/vae_digits.py', 'quick,epochs=4,patience=0', population=pop,
      population_mode='zip', **{'train.eval_every': 1, 'train.prune': 'asha:eta=2,min=1',
                                'train.compact': compact})
  plain = train_and_evaluate(cfg(0.0), tmp_path / 'plain')
  compact = train_and_evaluate(cfg(0.5), tmp_path / 'compact')
  assert compact['member_steps']['computed'] < compact['member_steps']['uncompacted']
  assert_same_members(plain, compact)
