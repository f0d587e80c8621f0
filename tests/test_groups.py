"""Groups: member kinds at their own shapes inside one program (research/groups.py).

Every member of a grouped population must end where its solo run ends (and where
it ends in the padded program), with exported parameters of its own shapes; on
two devices as on one; through compaction and a resume from a checkpoint taken
after it.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from research import groups, structure
from research.train import load_trained, setup, train_and_evaluate
from tests.helpers import run_train, small_mnist1d
from tests.test_compaction import assert_same_members, killed_after_first_compaction
from tests.test_structure import METRICS, VARIANT, adding, assert_members_equal_solo


def test_a_grouped_variant_and_width_mix_equals_solo_runs(tmp_path):
  mixed = assert_members_equal_solo(
      lambda **kw: adding(**{'train.groups': 'kinds', **kw}),
      f'seed=0 model.rnn.hidden=2,4 {VARIANT}=NIG,FGR,NOAF', tmp_path)
  assert mixed['groups'] == [{'members': 1, 'kinds': [k]} for k in range(6)]
  padded = train_and_evaluate(adding(population=f'seed=0 model.rnn.hidden=2,4 '
                                                f'{VARIANT}=NIG,FGR,NOAF'), tmp_path / 'padded')
  assert 'groups' not in padded
  for a, b in zip(mixed['members'], padded['members']):
    assert a['num_params'] == b['num_params']
    for k in METRICS:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_a_group_with_its_own_mixed_cell_and_an_optimizer_mix(tmp_path, monkeypatch):
  """Two variants of one shape share a group (its own mixed cell, smaller than the
  program's: no gate recurrence), the wide FGR members another; the members' rules
  differ across and inside groups. Exported parameters are the members' own."""
  pop = (f'seed=0,1,2,3 {VARIANT}=vanilla,NOAF,FGR,FGR model.rnn.hidden=3,3,5,5 '
         'optim.name=adam,sgd,sgd,adam')
  parts = []

  def two_groups(how, config, plan, members, dataset, devices):
    parts.append([[0, 1], [2, 3]])
    return parts[-1]
  monkeypatch.setattr(groups, 'partition', two_groups)
  make = lambda **kw: adding(**{'train.groups': 'cost', 'optim.lr': 0.01,
                                'population_mode': 'zip', **kw})
  grouped = train_and_evaluate(make(population=pop), tmp_path / 'grouped')
  assert parts and grouped['groups'] == [{'members': 2, 'kinds': [0, 1]},
                                         {'members': 2, 'kinds': [2]}]
  padded = train_and_evaluate(make(population=pop, **{'train.groups': 'none'}),
                              tmp_path / 'padded')
  assert_same_members(padded, grouped)
  config = make(population=pop)
  run = setup(config)
  _, _, _, state = load_trained(config, tmp_path / 'grouped')
  _, _, _, pstate = load_trained(make(population=pop, **{'train.groups': 'none'}),
                                 tmp_path / 'padded')
  # padding and absent parameters stayed exactly zero, as in the padded program
  mask = run.hp['_mask']
  gaps = jax.tree.map(lambda p, m: float(np.abs(np.asarray(p) * (1 - np.asarray(m))).max()),
                      state.params, mask)
  assert max(jax.tree.leaves(gaps)) == 0.0
  for i in range(4):
    v, pv = run.member_variables(state, i), run.member_variables(pstate, i)
    assert jax.tree.structure(v) == jax.tree.structure(pv)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(pv)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  cell = run.member_variables(state, 0)['params']['Recurrent_0']['layer0_fwd']
  assert 'R_gates' not in cell and cell['W'].shape[-1] == 12


def test_grouped_on_two_devices_matches_one_device(tmp_path):
  """Sharded over two devices, with groups that stop (and are skipped) at different
  epochs: the members and the member-steps of one device."""
  pop = 'seed=0,1,2,3 optim.lr=0.3,1e-3,0.1,3e-3 model.hidden=8,16,8,16'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = run_train(tmp_path / 'two', '--config.train.epochs=10', f'--config.population={pop}',
                   '--config.population_mode=zip', '--config.train.patience=1',
                   '--config.train.compact=0', '--config.train.groups=kinds',
                   '--config.train.eval_every=1', env=env)
  assert proc.returncode == 0, proc.stderr
  two = json.loads((tmp_path / 'two/results.json').read_text())
  assert two['member_sharding'] == 2 and len(two['groups']) == 2
  one = train_and_evaluate(_compacting(0.0, True), tmp_path / 'one')
  assert two['member_steps'] == one['member_steps']
  assert one['member_steps']['computed'] < one['member_steps']['uncompacted']
  for a, b in zip(two['members'], one['members']):
    assert a['best_epoch'] == b['best_epoch']
    for k in METRICS:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)


def _compacting(compact: float, grouped: bool):
  return small_mnist1d(**{
      'train.epochs': 10, 'train.patience': 1, 'train.compact': compact,
      'train.checkpoint_keep': 100, 'train.groups': 'kinds' if grouped else 'none',
      'population': 'seed=0,1,2,3 optim.lr=0.3,1e-3,0.1,3e-3 model.hidden=8,16,8,16',
      'population_mode': 'zip'})


def test_a_grouped_run_compacts_and_resumes_like_the_padded_uncompacted_run(tmp_path):
  plain = train_and_evaluate(_compacting(0.0, False), tmp_path / 'plain')
  compact = train_and_evaluate(_compacting(0.75, True), tmp_path / 'compact')
  assert compact['member_steps']['computed'] < compact['member_steps']['uncompacted']
  assert_same_members(plain, compact)
  # killed after the first checkpoint with fewer rows, resumed: the same run
  work = tmp_path / 'resumed'
  killed_after_first_compaction(tmp_path / 'compact', work, 4)
  out = train_and_evaluate(_compacting(0.75, True), work)
  assert_same_members(compact, out)
  assert out['member_steps'] == compact['member_steps']


def test_a_group_whose_members_all_stopped_is_skipped_and_changes_no_member(tmp_path):
  """No compaction: a group none of whose members still trains stops costing at
  once (`jax.lax.cond`), and every member ends as in the padded program."""
  plain = train_and_evaluate(_compacting(0.0, False), tmp_path / 'plain')
  grouped = train_and_evaluate(_compacting(0.0, True), tmp_path / 'grouped')
  assert_same_members(plain, grouped)
  # by hand from the padded run: with patience 1 and an evaluation every epoch, a
  # member trains through the epoch after its best; the loop ends when all stopped
  trained = {m['member']: m['best_epoch'] + 1 for m in plain['members']}
  epochs = max(trained.values())
  steps = plain['member_steps']['computed'] // (len(trained) * epochs)
  by_group = {}
  for m in plain['members']:
    by_group.setdefault(m['hparams']['model.hidden'], []).append(trained[m['member']])
  expected = sum(len(t) * max(t) for t in by_group.values()) * steps
  assert len(by_group) == 2 and expected < plain['member_steps']['computed']  # it matters here
  assert grouped['member_steps'] == {'computed': expected,
                                     'uncompacted': plain['member_steps']['computed']}


def test_compaction_keeps_each_groups_live_rows_rounded_to_the_shards():
  """By hand: members 0 and 2 are one kind (hidden 8), 1 and 3 the other. With two
  shards a group keeps its live rows plus stopped rows of its own up to a multiple
  of two, and a group with no live row leaves; the padded program rounds the total."""
  grouped = setup(_compacting(0.5, True)).trainer.for_rows(np.arange(4))
  padded = setup(_compacting(0.5, False)).trainer.for_rows(np.arange(4))
  live = np.array([True, False, False, False])
  assert grouped.rows_kept(live, 2).tolist() == [0, 2]
  assert padded.rows_kept(live, 2).tolist() == [0, 1]
  assert grouped.rows_computed(live) == 2 and padded.rows_computed(live) == 4
  live = np.array([True, True, False, True])
  assert grouped.rows_kept(live, 2).tolist() == [0, 1, 2, 3]
  assert grouped.rows_kept(live, 1).tolist() == [0, 1, 3]
  assert grouped.rows_kept(np.zeros(4, bool), 2).tolist() == []
  # a subset of rows (after a compaction): positions are the subset's
  sub = setup(_compacting(0.5, True)).trainer.for_rows(np.array([1, 2, 3]))
  assert sub.rows_kept(np.array([False, True, True]), 2).tolist() == [0, 1, 2]
  assert sub.rows_kept(np.array([False, True, False]), 2).tolist() == [1]


def test_the_cost_model_puts_kinds_of_one_shape_in_one_group():
  config = adding(population=f'seed=0,1 {VARIANT}=vanilla,NOAF,NIG model.rnn.hidden=3,64')
  run = setup(config)
  plan = run.plan
  kinds = groups.partition('kinds', config, plan, run.members, run.dataset, 1)
  assert len(kinds) == 6 and sorted(i for g in kinds for i in g) == list(range(12))
  cost = groups.partition('cost', config, plan, run.members, run.dataset, 1)
  assert sorted(i for g in cost for i in g) == list(range(12))
  group_of = {i: n for n, g in enumerate(cost) for i in g}
  shape = lambda m: (m['model.rnn.hidden'], m[VARIANT] == 'NIG')
  for i, a in enumerate(run.members):  # members of one kind, and vanilla/NOAF of one width
    for j, b in enumerate(run.members):
      if shape(a) == shape(b):
        assert group_of[i] == group_of[j], (a, b)


@pytest.mark.parametrize('overrides, match', [
    ({'train.groups': 'kind'}, r"train.groups='kind': must be one of none, kinds, cost"),
    ({'train.groups': 'kinds', 'data.stream': True}, 'train.groups with data.stream'),
])
def test_bad_groups_settings_are_refused_before_anything_is_written(tmp_path, overrides, match):
  config = adding(population=f'seed=0 {VARIANT}=vanilla,NIG', **overrides)
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()
