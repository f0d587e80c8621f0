"""Sweeps train a batch in the programs the cost model picks: trials that differ in
a structural value the model can mix (optimizer rule, widths) share a population
and each still gets the value of its solo run; trials that differ in anything else
(batch size, depth) train apart; results.json counts programs and member steps."""
import json

import optuna
import pytest

from research import cli, population, structure
from research.sweep import runner
from research.sweep.space import Choice, Float
from tests import sweep_worker as sw

TS = optuna.trial.TrialState
MERGE = dict(step_overhead_s=10.0, flops_per_s=1e12)  # a program costs far more than padding
APART = dict(step_overhead_s=1e-3, flops_per_s=1e3)  # padding costs far more than a program


def _cost(monkeypatch, cost):
  for backend in ('cpu', 'default'):
    monkeypatch.setitem(structure.COST, backend, cost)


def _tiny(epochs=1):
  c = cli.load_config('configs/vae_digits.py', 'quick')
  c.model.hidden = (8, 8)
  c.model.latent = 2
  c.train.epochs = epochs
  c.train.eval_every = 1
  c.lock()
  return c


def _calls(workdir):
  return [json.loads(line) for line in (workdir / 'calls.jsonl').read_text().splitlines()]


BATCH = [{'optim.lr': 1e-3 * (1 + i), 'optim.name': name, 'model.hidden': hidden,
          'train.batch_size': bs}
         for i, (bs, name, hidden) in enumerate(
             (bs, name, hidden) for bs in (32, 64) for name in ('adam', 'sgd')
             for hidden in ((8, 8), (12, 12)))]
MEMBER_KEYS = population.member_keys(('task.beta', 'task.free_bits', 'task.anneal_steps'))


def test_plan_programs_mixes_rules_and_widths_and_splits_the_rest(tmp_path, monkeypatch):
  config = _tiny()
  load = runner._dataset_loader()
  _cost(monkeypatch, MERGE)
  programs = runner.plan_programs(config, BATCH, MEMBER_KEYS, load, devices=1)
  # Batch size cannot vary inside a population: one program per batch size, each
  # holding both optimizers and both widths (4 kinds).
  assert [p.trials for p in programs] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert [p.structure for p in programs] == [{'train.batch_size': 32}, {'train.batch_size': 64}]
  assert [p.num_kinds for p in programs] == [4, 4]
  for p in programs:
    c, run_dir = runner.population_run(config, p.structure, p.members, tmp_path)
    members = population.expand(c, MEMBER_KEYS)  # the population string reads back
    assert [(m['optim.name'], m['model.hidden'], m['optim.lr']) for m in members] == [
        (BATCH[i]['optim.name'], BATCH[i]['model.hidden'], BATCH[i]['optim.lr'])
        for i in p.trials]
    assert c.train.batch_size == p.structure['train.batch_size']
    assert 'model.hidden=(8,8),(12,12),(8,8),(12,12)' in c.population
  # Deterministic run directories: the same program, the same directory.
  again = runner.plan_programs(config, BATCH, MEMBER_KEYS, load, devices=1)
  dirs = lambda ps: [runner.population_run(config, p.structure, p.members,
                                           tmp_path)[1].name for p in ps]
  assert dirs(again) == dirs(programs) and len(set(dirs(programs))) == 2
  # When padding costs more than a program, widths train apart; optimizer rules still mix.
  _cost(monkeypatch, APART)
  apart = runner.plan_programs(config, BATCH, MEMBER_KEYS, load, devices=1)
  assert [p.trials for p in apart] == [[0, 2], [1, 3], [4, 6], [5, 7]]
  assert [p.structure for p in apart][:2] == [
      {'train.batch_size': 32, 'model.hidden': (8, 8)},
      {'train.batch_size': 32, 'model.hidden': (12, 12)}]
  assert all(m.keys() >= {'optim.name'} and 'model.hidden' not in m
             for p in apart for m in p.members)


def test_a_mixed_batch_tells_each_trial_the_value_of_its_solo_run(tmp_path, monkeypatch):
  """Three trials of three structures (two optimizers, two widths) train as one
  program; a sweep of the same trials one at a time trains three solo runs (each a
  single-member run of that structure, same seed): every trial's value is the same."""
  _cost(monkeypatch, MERGE)
  space = {'optim.name': Choice(('adam', 'sgd')),
           'model.hidden': Choice(((8, 8), (12, 12)))}
  mixed = runner.run_sweep(_tiny(), space, 'grid', 3, tmp_path / 'mixed', batch=3)
  solo = runner.run_sweep(_tiny(), space, 'grid', 3, tmp_path / 'solo', batch=1)
  steps = 1000 // 64  # one epoch of the digits training split
  assert mixed['programs'] == 1 and mixed['populations'][0]['kinds'] == 3
  assert solo['programs'] == 3 and {p['size'] for p in solo['populations']} == {1}
  assert mixed['member_steps'] == solo['member_steps'] == 3 * steps
  values = {}
  for name, out in (('mixed', mixed), ('solo', solo)):
    assert out['states']['COMPLETE'] == 3
    values[name] = {(t['params.optim.name'], tuple(t['params.model.hidden'])): t['value']
                    for t in out['trials']}
    assert all(t['user.member_steps'] == steps for t in out['trials'])
  assert set(values['mixed']) == {('adam', (8, 8)), ('adam', (12, 12)), ('sgd', (8, 8))}
  for k, v in values['solo'].items():
    assert values['mixed'][k] == pytest.approx(v, rel=1e-5), k
  run = json.loads((tmp_path / 'mixed' / mixed['populations'][0]['run'] /
                    'results.json').read_text())
  assert [(m['hparams']['optim.name'], tuple(m['hparams']['model.hidden']))
          for m in run['members']] == [('adam', (8, 8)), ('adam', (12, 12)), ('sgd', (8, 8))]


def test_trials_that_differ_in_batch_size_or_depth_train_apart(tmp_path, monkeypatch):
  _cost(monkeypatch, MERGE)
  space = {'optim.lr': Float(1e-4, 1e-2, log=True, grid=(1e-3, 1e-2)),
           'optim.name': Choice(('adam', 'sgd')),
           'train.batch_size': Choice((32, 64)),
           'model.hidden': Choice(((8, 8), (8, 8, 8)))}  # depth is structural
  out = runner.run_sweep(_tiny(), space, 'grid', 0, tmp_path, batch=16, train_fn=sw.fake_train)
  calls = _calls(tmp_path)
  assert out['states']['COMPLETE'] == 16
  assert out['programs'] == len(calls) == 4 and out['member_steps'] == 16 * sw.STEPS
  shapes = sorted((c['batch_size'], len(c['members']), tuple(sorted(set(c['names']))))
                  for c in calls)
  assert shapes == [(32, 4, ('adam', 'sgd')), (32, 4, ('adam', 'sgd')),
                    (64, 4, ('adam', 'sgd')), (64, 4, ('adam', 'sgd'))]
  assert all('model.hidden' not in c['population'] for c in calls)
  study = optuna.load_study(study_name='sweep',
                            storage=runner.make_storage(None, tmp_path))
  for t in study.get_trials(states=(TS.COMPLETE,)):  # (the config's beta: 1)
    assert t.value == pytest.approx(sw.objective({**t.params, 'task.beta': 1.0},
                                                 t.params['optim.name']))


def test_a_mix_that_training_refuses_trains_one_program_per_kind(tmp_path):
  def refuse_mixes(config, run_dir):
    if 'optim.name' in config.population:
      raise ValueError('this mix is refused')
    return sw.fake_train(config, run_dir)

  space = dict(sw.SPACE, **{'task.beta': Float(0.5, 2.0, grid=(0.5,))})
  # The grid's first three points: adam, then sgd with two momenta.
  out = runner.run_sweep(_tiny(), space, 'grid', 3, tmp_path, batch=3, train_fn=refuse_mixes)
  assert out['states']['COMPLETE'] == 3 and out['programs'] == 2
  assert sorted(c['names'] for c in _calls(tmp_path)) == [['adam'], ['sgd', 'sgd']]


def test_members_pruned_inside_a_program_are_pruned_trials(tmp_path):
  """train.prune stops members inside the batch's program; Optuna gets every evaluation
  of every member as an intermediate value, and the pruned members as PRUNED."""
  c = _tiny(epochs=4)
  c.train.eval_every = 1
  c.train.prune = 'asha:eta=2'
  space = {'optim.lr': Float(1e-4, 3e-2, log=True)}
  runner.run_sweep(c, space, 'random', 4, tmp_path, batch=4, seed=0, report=False)
  study = optuna.load_study(study_name='sweep', storage=runner.make_storage(None, tmp_path))
  states = [t.state for t in study.get_trials()]
  assert states.count(optuna.trial.TrialState.PRUNED) >= 2, states  # halved at evaluation 1
  run = tmp_path / study.get_trials()[0].user_attrs['run']
  members = json.loads((run / 'results.json').read_text())['members']
  for t in study.get_trials():
    m = members[t.user_attrs['member']]
    curve = {r['epoch']: r['val/nelbo'] for r in map(json.loads,
                                                      (run / 'metrics.jsonl').read_text().splitlines())
             if r['member'] == t.user_attrs['member']}
    assert t.intermediate_values == pytest.approx(curve)  # every evaluation, as Optuna's
    if t.state == optuna.trial.TrialState.PRUNED:
      assert m['pruned_epoch'] is not None and max(curve) == m['pruned_epoch']
    else:
      assert m['pruned_epoch'] is None and t.value == pytest.approx(m['val/nelbo'])
