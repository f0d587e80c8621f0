"""Structure as member data: every member of a mixed population ends where its solo run ends.

Each test trains one population whose members differ in structure (LSTM variant,
widths, optimizer rule) and, for every member, the single-member run of that
member's own config with the same seed; metrics and exported parameters must
agree to float tolerance. Models are tiny so that each run compiles in seconds.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax
import pytest

from research import cli, configlib, structure
from research.models.cells import LSTM_VARIANTS
from research.train import load_trained, setup, train_and_evaluate
from tests.helpers import run_train, small_mnist1d

VARIANT = 'model.rnn.cell_options.variant'
METRICS = ('val/loss', 'test/loss', 'best_epoch', 'steps')


def adding(**overrides):
  c = cli.load_config('configs/synthetic.py', 'task=adding,cell=lstm,T=6,hidden=3')
  c.data.num_train, c.data.num_val, c.data.num_test = 32, 16, 16
  c.train.epochs, c.train.batch_size, c.train.progress = 2, 16, False
  c.population = 'seed=0'
  return configlib.with_values(c, overrides)


def vae(**overrides):
  c = cli.load_config('configs/vae_digits.py', 'quick,hidden=8,latent=2')
  c.train.epochs, c.train.eval_every, c.train.progress = 1, 1, False
  c.data.num_train = 256
  return configlib.with_values(c, overrides)


def _solo(make, tmp_path, name, member: dict):
  """The member's own config, alone (seed and every other value from ``member``)."""
  c = make()
  c.population = f'seed={member["seed"]}'
  for k, v in member.items():
    if k != 'seed':
      configlib.set_path(c, k, v)
  return train_and_evaluate(c, tmp_path / name)


def assert_members_equal_solo(make, population: str, tmp_path, rtol=2e-5, atol=1e-6,
                              mode='product'):
  mixed = train_and_evaluate(make(population=population, population_mode=mode),
                             tmp_path / 'mixed')
  assert mixed['num_members'] > 1
  varied = [k for k in mixed['members'][0]['hparams']
            if len({repr(m['hparams'][k]) for m in mixed['members']}) > 1]
  for m in mixed['members']:
    own = {k: m['hparams'][k] for k in varied + ['seed']}
    own = {k: tuple(v) if isinstance(v, list) else v for k, v in own.items()}
    solo = _solo(make, tmp_path, f'solo{m["member"]}', own)['members'][0]
    for k in METRICS:
      np.testing.assert_allclose(m[k], solo[k], rtol=rtol, atol=atol, err_msg=f'{own}: {k}')
  return mixed


@pytest.mark.parametrize('fast', [True, False], ids=['fast_path', 'generic_scan'])
def test_lstm_variants_in_one_program_equal_their_solo_runs(tmp_path, fast):
  variants = LSTM_VARIANTS if fast else ('vanilla', 'NIG', 'CIFG', 'FGR', 'NOAF')
  mixed = assert_members_equal_solo(
      lambda **kw: adding(**{'model.rnn.fast': fast, **kw}),
      f'seed=0 {VARIANT}={",".join(variants)}', tmp_path)
  # A member counts only the parameters of its own variant.
  counts = {m['hparams'][VARIANT]: m['num_params'] for m in mixed['members']}
  if fast:
    assert counts['NIG'] == counts['CIFG'] < counts['NP'] < counts['vanilla'] < counts['FGR']
    assert counts['standard'] == counts['NP']


@pytest.mark.slow
def test_every_variant_on_the_generic_scan_equals_its_solo_run(tmp_path):
  assert_members_equal_solo(lambda **kw: adding(**{'model.rnn.fast': False, **kw}),
                            f'seed=0 {VARIANT}={",".join(LSTM_VARIANTS)}', tmp_path)


def test_recurrent_width_and_variant_mix_equals_solo_runs(tmp_path):
  assert_members_equal_solo(adding, f'seed=0,1 model.rnn.hidden=2,4 {VARIANT}=NIG,vanilla',
                            tmp_path, mode='zip')


def test_vae_latent_and_hidden_mix_equals_solo_runs(tmp_path):
  assert_members_equal_solo(vae, 'seed=0,1 model.latent=2,3 model.hidden=(8,8),(12,6)',
                            tmp_path, mode='zip')


def test_mlp_width_mix_equals_solo_runs(tmp_path):
  assert_members_equal_solo(lambda **kw: small_mnist1d(**{'train.epochs': 2, **kw}),
                            'seed=0,1 model.hidden=8,16', tmp_path, mode='zip')


@pytest.mark.slow
def test_conv_channel_mix_equals_solo_runs(tmp_path):
  def make(**kw):
    c = cli.load_config('configs/mnist1d.py', 'model=cnn')
    c.data.num_samples, c.train.batch_size, c.train.epochs = 300, 50, 1
    c.train.progress = False
    return configlib.with_values(c, kw)
  assert_members_equal_solo(make, 'seed=0,0 model.channels=(3,3,3),(5,4,3)', tmp_path, mode='zip')


def test_optimizer_and_schedule_mix_equals_solo_runs(tmp_path):
  assert_members_equal_solo(
      lambda **kw: adding(**{'optim.momentum': 0.9, 'optim.lr': 0.01, **kw}),
      'seed=0 optim.name=adam,rmsprop,sgd,sgd optim.nesterov=False,False,False,True '
      'optim.schedule=constant,cosine,step,warmup_cosine', tmp_path, mode='zip')


def test_exported_parameters_are_the_members_own(tmp_path):
  """Parameters a member lacks are absent from its export; its padded entries stayed
  zero with zero optimizer state; the export equals its solo run's parameters."""
  pop = f'seed=0 model.rnn.hidden=2,4 {VARIANT}=NIG,FGR'
  config = adding(population=pop, population_mode='zip')
  train_and_evaluate(config, tmp_path / 'mixed')
  run = setup(config)
  _, _, _, state = load_trained(config, tmp_path / 'mixed')
  mask = run.hp['_mask']
  leaves = jax.tree.leaves(jax.tree.map(lambda p, m: np.abs(np.asarray(p) * (1 - np.asarray(m))),
                                        state.params, mask))
  assert max(float(x.max()) for x in leaves) == 0.0
  for name in ('mu', 'nu'):  # Adam's moments are zero wherever the member has no parameter
    moment = optax.tree_utils.tree_get(state.opt_state, name)
    gaps = jax.tree.map(lambda x, m: float(np.abs(np.asarray(x) * (1 - np.asarray(m))).max()),
                        moment, mask)
    assert max(jax.tree.leaves(gaps)) == 0.0, name
  for i, own in enumerate(({'model.rnn.hidden': 2, VARIANT: 'NIG'},
                           {'model.rnn.hidden': 4, VARIANT: 'FGR'})):
    v = run.member_variables(state, i)
    solo_cfg = adding(population='seed=0', **own)
    train_and_evaluate(solo_cfg, tmp_path / f'solo{i}')
    _, _, _, solo = load_trained(solo_cfg, tmp_path / f'solo{i}')
    solo_params = jax.tree.map(lambda a: np.asarray(a[0]), solo.best_params)
    assert jax.tree.structure(v['params']) == jax.tree.structure(solo_params)
    for a, b in zip(jax.tree.leaves(v['params']), jax.tree.leaves(solo_params)):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    cell = v['params']['Recurrent_0']['layer0_fwd']
    assert ('R_gates' in cell) == (own[VARIANT] == 'FGR')
    assert cell['W'].shape[-1] == (3 if own[VARIANT] == 'NIG' else 4) * own['model.rnn.hidden']
    out = run.member_model(i).apply(v, np.zeros((1, 6, 2), np.float32))
    assert out.shape[0] == 1


def test_mixed_population_sharded_over_two_devices_matches_one_device(tmp_path):
  pop = 'seed=0,1 model.hidden=8,16 optim.name=adam,sgd'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = run_train(tmp_path / 'two', '--config.train.epochs=2', f'--config.population={pop}',
                   '--config.population_mode=zip', '--config.optim.lr=0.01',
                   '--config.train.eval_every=1', env=env)
  assert proc.returncode == 0, proc.stderr
  two = json.loads((tmp_path / 'two/results.json').read_text())
  assert two['member_sharding'] == 2
  one = train_and_evaluate(small_mnist1d(**{'train.epochs': 2, 'population': pop,
                                            'population_mode': 'zip', 'optim.lr': 0.01}),
                           tmp_path / 'one')
  for a, b in zip(two['members'], one['members']):
    for k in METRICS:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize('population, match', [
    ('model.hidden=8,16', 'dropout masks are drawn per width'),
    ('train.batch_size=25,50', "'train.batch_size' cannot vary .* separate run"),
])
def test_inexact_or_structural_keys_are_refused(tmp_path, population, match):
  c = small_mnist1d(population=population, **{'model.dropout': 0.1})
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(c, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_variant_of_a_gru_and_layer_count_mix_are_refused(tmp_path):
  c = cli.load_config('configs/synthetic.py', 'task=adding,cell=gru,T=6,hidden=3')
  c.population = f'{VARIANT}=vanilla,NIG'
  with pytest.raises(ValueError, match='not a config key'):  # a GRU has no variant
    setup(c)
  with pytest.raises(ValueError, match='differ in length'):
    setup(vae(population='model.hidden=(8,8),(8,)'))


def test_cli_reports_a_refused_key_in_one_line(tmp_path):
  proc = run_train(tmp_path / 'run', '--config.population=train.batch_size=25,50')
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and 'train.batch_size' in lines[0] and 'separate run' in lines[0], lines
  assert not (tmp_path / 'run').exists()


def test_program_groups_merge_when_overhead_dominates():
  kinds = ['a', 'b', 'c']
  cheap = lambda ks: 1e3 * (1 + max(ks))  # tiny members: one program
  assert structure.program_groups(kinds, [4, 4, 4], cheap, backend='cpu') == [[0, 1, 2]]
  # A member kind 1000x as costly as the others stays apart: padding to it costs more
  # than a program's overhead saves.
  costly = lambda ks: 1e12 if 2 in ks else 1e3
  assert structure.program_groups(kinds, [4, 4, 4], costly, backend='cpu') == [[0, 1], [2]]
  capped = structure.program_groups(kinds, [4, 4, 4], cheap, backend='cpu', max_members=8)
  assert sorted(map(len, capped)) == [1, 2]
  # A program's fixed cost (compilation) counts once per program: over few steps it
  # outweighs padding that would not pay per step.
  wide = lambda ks: 1e8 * (1 + 9 * (2 in ks))  # kind 2 is 10x as costly per step
  assert len(structure.program_groups(kinds, [4, 4, 4], wide, backend='cpu', steps=10)) == 1
  assert len(structure.program_groups(kinds, [4, 4, 4], wide, backend='cpu',
                                      steps=100000)) == 2
  # max_programs forces merges past the cost model's choice, the cheapest first: over
  # many steps padding outweighs a program's overhead, so no merge pays by itself; a+b
  # adds 4 x 1e9 FLOPs per step, then (a+b)+c 4 x 2e9 + 4 x 2e9; d (1000x) stays apart
  four, own = ['a', 'b', 'c', 'd'], [1e9, 2e9, 4e9, 1e12]
  apart = lambda ks: max(own[k] for k in ks)
  kw = dict(backend='cpu', steps=100000)
  assert len(structure.program_groups(four, [4] * 4, apart, **kw)) == 4
  assert structure.program_groups(four, [4] * 4, apart, max_programs=3, **kw) == [[0, 1], [2], [3]]
  assert structure.program_groups(four, [4] * 4, apart, max_programs=2, **kw) == [[0, 1, 2], [3]]
  assert structure.program_groups(four, [4] * 4, apart, max_programs=1, **kw) == [[0, 1, 2, 3]]
  # a cap above what the cost model makes changes nothing
  assert structure.program_groups(kinds, [4, 4, 4], costly, backend='cpu', max_programs=5) == \
      [[0, 1], [2]]


def test_structural_values_every_member_shares_are_the_runs_config(tmp_path):
  """A lone member's (or every member's) structural value is applied, not ignored."""
  pop = train_and_evaluate(vae(population='seed=0 optim.name=sgd model.hidden=(12,12)'),
                           tmp_path / 'pop')
  solo = train_and_evaluate(vae(population='seed=0', **{'optim.name': 'sgd',
                                                        'model.hidden': (12, 12)}),
                            tmp_path / 'solo')
  assert pop['num_params'] == solo['num_params']
  np.testing.assert_allclose(pop['members'][0]['val/nelbo'], solo['members'][0]['val/nelbo'],
                             rtol=1e-6)


def test_non_positive_widths_are_refused_before_anything_is_written(tmp_path):
  with pytest.raises(ValueError, match='widths must be positive integers'):
    train_and_evaluate(adding(population='model.rnn.hidden=3,0'), tmp_path / 'mixed')
  with pytest.raises(ValueError, match='rnn.hidden must be a positive integer'):
    train_and_evaluate(adding(**{'model.rnn.hidden': 0}), tmp_path / 'solo')
  assert not (tmp_path / 'mixed').exists() and not (tmp_path / 'solo').exists()
