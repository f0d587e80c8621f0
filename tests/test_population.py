"""Population specs (`research.population`) and variant strings (`research.configlib`)."""
from __future__ import annotations

import numpy as np
import pytest

from research import cli, configlib, population

TASK_KEYS = ('task.label_smoothing',)


@pytest.fixture
def config():
  return cli.load_config('configs/mnist1d.py', 'model=mlp')


def expand(config, spec, mode='product'):
  config.population = spec
  config.population_mode = mode
  return population.expand(config, TASK_KEYS)


# ------------------------------------------------------------------ parse_spec

def test_parse_spec_spaces_and_semicolons():
  assert population.parse_spec('seed=0,1,2 optim.lr=1e-3,1e-2') == {
      'seed': [0.0, 1.0, 2.0], 'optim.lr': [1e-3, 1e-2]}
  assert population.parse_spec(' seed=0,1;optim.lr=3e-3 ;  task.label_smoothing=0.1 ') == {
      'seed': [0.0, 1.0], 'optim.lr': [3e-3], 'task.label_smoothing': [0.1]}
  assert population.parse_spec('') == {}
  assert population.parse_spec('   ') == {}


def test_parse_spec_keeps_order_and_trailing_comma():
  spec = population.parse_spec('optim.lr=1e-2,1e-3, seed=5')
  assert list(spec) == ['optim.lr', 'seed']
  assert spec['optim.lr'] == [1e-2, 1e-3]


@pytest.mark.parametrize('bad', ['seed', 'seed=', 'seed=0 optim.lr', 'seed:0,1'])
def test_parse_spec_malformed_entry(bad):
  with pytest.raises(ValueError, match='Bad population entry'):
    population.parse_spec(bad)


def test_expand_rejects_empty_key(config):
  with pytest.raises(ValueError, match="Bad population entry"):
    expand(config, '=1,2')


def test_entry_without_values_is_rejected(config):
  with pytest.raises(ValueError):
    population.parse_spec('seed=,')
  with pytest.raises(ValueError):
    expand(config, 'seed=, optim.lr=1e-3')


def test_non_numeric_values_of_numeric_keys_are_refused(config):
  assert population.parse_spec('optim.name=adam,sgd model.hidden=(4,4),(8,8)') == {
      'optim.name': ['adam', 'sgd'], 'model.hidden': [(4, 4), (8, 8)]}
  with pytest.raises(ValueError, match="'optim.lr' must be numbers"):
    expand(config, 'optim.lr=fast,slow')


def test_parse_spec_duplicate_key():
  with pytest.raises(ValueError, match="'seed' given twice"):
    population.parse_spec('seed=0,1 optim.lr=1e-3 seed=2')


# ---------------------------------------------------------------------- expand

def test_expand_default_population_of_config(config):
  assert config.population == 'seed=0,1,2'
  members = population.expand(config, TASK_KEYS)
  assert [m['seed'] for m in members] == [0, 1, 2]
  for m in members:
    assert set(m) == {'seed', 'optim.lr', 'optim.weight_decay', 'optim.clip_norm',
                      'optim.momentum', 'train.input_noise', 'task.label_smoothing'}
    assert m['optim.lr'] == pytest.approx(1e-2)  # the config's, not optim's default


def test_expand_product(config):
  config.optim.weight_decay = 1e-4
  config.task.label_smoothing = 0.05
  members = expand(config, 'seed=0,1 optim.lr=1e-3,1e-2,1e-1')
  assert len(members) == 6
  assert [(m['seed'], m['optim.lr']) for m in members] == [
      (0, 1e-3), (0, 1e-2), (0, 1e-1), (1, 1e-3), (1, 1e-2), (1, 1e-1)]
  for m in members:
    # Keys that do not vary take the config's values.
    assert m['optim.weight_decay'] == pytest.approx(1e-4)
    assert m['optim.clip_norm'] == 0.0
    assert m['task.label_smoothing'] == pytest.approx(0.05)
    assert type(m['seed']) is int
    assert isinstance(m['optim.lr'], float)


def test_expand_zip(config):
  members = expand(config, 'seed=3,4,5 optim.lr=1e-3,2e-3,3e-3 task.label_smoothing=0,0.1,0.2',
                   mode='zip')
  assert len(members) == 3
  assert [m['seed'] for m in members] == [3, 4, 5]
  assert [m['optim.lr'] for m in members] == [1e-3, 2e-3, 3e-3]
  assert [m['task.label_smoothing'] for m in members] == [0.0, 0.1, 0.2]
  assert all(type(m['seed']) is int for m in members)
  assert all(m['optim.clip_norm'] == 0.0 for m in members)


def test_expand_empty_population_is_one_member(config):
  config.seed = 7
  members = expand(config, '')
  assert members == [{'seed': 7, 'optim.lr': pytest.approx(1e-2), 'optim.weight_decay': 0.0,
                      'optim.clip_norm': 0.0, 'optim.momentum': 0.0, 'train.input_noise': 0.0,
                      'task.label_smoothing': 0.0}]
  assert type(members[0]['seed']) is int
  assert len(expand(config, '', mode='zip')) == 1


def test_expand_float_seed_becomes_int(config):
  members = expand(config, 'seed=10,11')
  assert [m['seed'] for m in members] == [10, 11]
  assert all(type(m['seed']) is int for m in members)
  stacked = population.stack(members)
  assert stacked['seed'].dtype == np.int32 and stacked['optim.lr'].dtype == np.float32
  assert stacked['seed'].tolist() == [10, 11]


def test_expand_zip_unequal_lengths(config):
  with pytest.raises(ValueError, match='zip'):
    expand(config, 'seed=0,1,2 optim.lr=1e-3,1e-2', mode='zip')


def test_expand_zip_unequal_lengths_is_fine_for_product(config):
  assert len(expand(config, 'seed=0,1,2 optim.lr=1e-3,1e-2', mode='product')) == 6


def test_expand_unknown_mode(config):
  with pytest.raises(ValueError, match="'grid'"):
    expand(config, 'seed=0,1', mode='grid')


def test_expand_unknown_key(config):
  with pytest.raises(ValueError, match="'optim.learning_rate' is not a config key"):
    expand(config, 'optim.learning_rate=1e-3,1e-2')


def test_expand_structural_key_cannot_vary(config):
  assert config.train.batch_size > 0  # it exists in the config ...
  with pytest.raises(ValueError, match=r"'train\.batch_size' cannot vary .* separate run"):
    expand(config, 'train.batch_size=32,64')  # ... but the batch shape is the program's
  # A width the model declares (ResidualMLP.member_widths) may vary; it keeps its type.
  members = expand(config, 'model.hidden=50,100')
  assert [m['model.hidden'] for m in members] == [50, 100]
  with pytest.raises(ValueError, match="'model.hidden' must be integers"):
    expand(config, 'model.hidden=50.5,100')


def test_expand_task_key_needs_task_keys(config):
  config.population = 'task.label_smoothing=0,0.1'
  with pytest.raises(ValueError, match='cannot vary'):
    population.expand(config, ())
  assert len(population.expand(config, TASK_KEYS)) == 2


def test_varied_keys_and_group_name(config):
  members = expand(config, 'seed=0,1 optim.lr=1e-3,1e-2')
  varied = population.varied_keys(members)
  assert varied == ['seed', 'optim.lr']
  assert population.group_name(members[1], varied) == 'lr=0.01'


# ---------------------------------------------------------------- configlib

def test_parse_arg_defaults():
  c = configlib.parse_arg(None, model='cnn', quick=False)
  assert c.model == 'cnn' and c.quick is False
  assert configlib.parse_arg('', model='cnn').model == 'cnn'


def test_parse_arg_bare_word_is_true():
  c = configlib.parse_arg('quick', model='cnn', quick=False)
  assert c.quick is True and c.model == 'cnn'


def test_parse_arg_literals():
  c = configlib.parse_arg('model=mlp, quick ,lr=1e-3,n=3,flag=False,name=None',
                          model='cnn', quick=False, lr=0.1, n=1, flag=True, name='x')
  assert c.model == 'mlp'  # not a literal: kept as a string
  assert c.quick is True
  assert c.lr == 1e-3 and isinstance(c.lr, float)
  assert c.n == 3 and isinstance(c.n, int)
  assert c.flag is False
  assert c.name is None


def test_parse_arg_unknown_variant():
  with pytest.raises(ValueError, match="'modle'"):
    configlib.parse_arg('modle=mlp', model='cnn')
  with pytest.raises(ValueError, match="'fast'"):
    configlib.parse_arg('fast', model='cnn')


def test_load_config_variants():
  c = cli.load_config('configs/mnist1d.py', 'model=mlp')
  assert c.model.name == 'mlp' and c.model.hidden == 100
  q = cli.load_config('configs/mnist1d.py', 'model=linear,quick')
  assert q.model.name == 'linear' and q.train.epochs == 4 and q.population == 'seed=0,1'
  with pytest.raises(ValueError, match="'quik'"):
    cli.load_config('configs/mnist1d.py', 'quik')


def test_get_path_and_flatten(config):
  assert configlib.get_path(config, 'optim.lr') == pytest.approx(1e-2)
  assert configlib.get_path(config, 'seed') == 0
  with pytest.raises(KeyError):
    configlib.get_path(config, 'optim.nope')
  with pytest.raises(KeyError):
    configlib.get_path(config, 'seed.deeper')
  flat = configlib.flatten(config)
  assert flat['optim.lr'] == pytest.approx(1e-2)
  assert flat['model.hidden'] == 100
  assert 'optim' not in flat
