"""The MNIST-1D loader and the validation split (`research.data`)."""
from __future__ import annotations

import re

import ml_collections
import numpy as np
import pytest

from research import data

NUM_SAMPLES, TRAIN_SPLIT, VAL_FRACTION = 600, 0.8, 0.1
N_TRAIN_TOTAL = int(NUM_SAMPLES * TRAIN_SPLIT)  # 480, of which 10% become val
N_VAL = int(round(VAL_FRACTION * N_TRAIN_TOTAL))  # 48


def small_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      name='mnist1d', num_samples=NUM_SAMPLES, train_split=TRAIN_SPLIT,
      val_fraction=VAL_FRACTION, seed=42))
  for k, v in overrides.items():
    setattr(cfg, k, v)
  return cfg


@pytest.fixture(scope='module')
def ds():
  return data.load_dataset(small_config())


def _rows(x):
  return {row.tobytes() for row in np.ascontiguousarray(x)}


def test_shapes_and_dtypes(ds):
  assert ds.name == 'mnist1d'
  for split in (ds.train, ds.val, ds.test):
    assert split['x'].dtype == np.float32 and split['y'].dtype == np.int32
    assert split['x'].ndim == 2 and split['x'].shape[1] == 40
    assert split['y'].shape == (len(split['x']),)
    assert np.isfinite(split['x']).all()
    assert split['y'].min() >= 0 and split['y'].max() <= 9
  assert ds.info == {'num_classes': 10, 'input_shape': (40,)}


def test_split_sizes(ds):
  assert ds.sizes() == {'train': N_TRAIN_TOTAL - N_VAL, 'val': N_VAL,
                        'test': NUM_SAMPLES - N_TRAIN_TOTAL}
  # Validation is carved out of the training part, not out of test.
  assert ds.sizes()['train'] + ds.sizes()['val'] == N_TRAIN_TOTAL == 480


def test_splits_do_not_overlap(ds):
  train, val, test = _rows(ds.train['x']), _rows(ds.val['x']), _rows(ds.test['x'])
  # Every row is distinct within its split, so set sizes count the examples.
  assert (len(train), len(val), len(test)) == (432, 48, 120)
  assert not train & val
  assert not train & test
  assert not val & test


def test_all_classes_present(ds):
  assert set(np.unique(ds.train['y'])) == set(range(10))
  assert set(np.unique(ds.test['y'])) == set(range(10))


def test_deterministic_for_the_same_seed(ds):
  again = data.load_dataset(small_config())
  for name in ('train', 'val', 'test'):
    a, b = getattr(ds, name), getattr(again, name)
    np.testing.assert_array_equal(a['x'], b['x'])
    np.testing.assert_array_equal(a['y'], b['y'])


def test_no_validation_split(ds):
  no_val = data.load_dataset(small_config(val_fraction=0.0))
  assert no_val.val is None
  assert no_val.sizes() == {'train': 480, 'test': 120}
  # The 432 + 48 examples of the split dataset are exactly the 480 here.
  assert _rows(no_val.train['x']) == _rows(ds.train['x']) | _rows(ds.val['x'])
  np.testing.assert_array_equal(no_val.test['x'], ds.test['x'])


def test_split_validation_zero_fraction_returns_none():
  x = np.arange(20, dtype=np.float32).reshape(10, 2)
  y = np.arange(10, dtype=np.int32)
  train, val = data.split_validation(x, y, 0.0, seed=0)
  assert val is None
  np.testing.assert_array_equal(train['x'], x)
  np.testing.assert_array_equal(train['y'], y)


def test_split_validation_partitions_and_keeps_pairs():
  x = np.arange(40, dtype=np.float32).reshape(20, 2)
  y = np.arange(20, dtype=np.int32)
  train, val = data.split_validation(x, y, 0.25, seed=3)
  assert len(val['x']) == 5 and len(train['x']) == 15
  assert sorted(np.concatenate([train['y'], val['y']]).tolist()) == list(range(20))
  for split in (train, val):  # x and y stay paired
    np.testing.assert_array_equal(split['x'][:, 0], 2 * split['y'])
  train2, val2 = data.split_validation(x, y, 0.25, seed=3)
  np.testing.assert_array_equal(val['y'], val2['y'])
  _, val3 = data.split_validation(x, y, 0.25, seed=4)
  assert not np.array_equal(val['y'], val3['y'])


@pytest.mark.parametrize('fraction', [-0.1, 1.0, 1.5])
def test_split_validation_invalid_fraction(fraction):
  x = np.zeros((10, 2), np.float32)
  with pytest.raises(ValueError, match='val_fraction'):
    data.split_validation(x, np.zeros(10, np.int32), fraction, seed=0)


def test_unknown_dataset():
  with pytest.raises(ValueError, match="'mnist2d'"):
    data.load_dataset(small_config(name='mnist2d'))


# --- non-finite values and missing files are input errors, found at load time ----------


def _write_music(path, nan_at=None):
  """A small JSB-layout .mat file (float rolls); ``nan_at=(split key, example,
  frame, key)`` puts one NaN in it."""
  import scipy.io
  rng = np.random.default_rng(0)
  rolls = {}
  for key, lengths in (('traindata', (7, 5, 9)), ('validdata', (4, 6)), ('testdata', (8, 3))):
    arr = np.empty((1, len(lengths)), dtype=object)
    for i, L in enumerate(lengths):
      arr[0, i] = (rng.random((L, 88)) < 0.05).astype(np.float64)
    rolls[key] = arr
  if nan_at is not None:
    split, i, t, k = nan_at
    rolls[split][0, i][t, k] = np.nan
  scipy.io.savemat(str(path), rolls)
  return path


def _music(path, **kw):
  return ml_collections.ConfigDict(dict(name='music', path=str(path), **kw))


@pytest.mark.parametrize('nan_at,where', [
    (('traindata', 1, 0, 3), r"1 non-finite value in train\['x'\] \(first at example 1\)"),
    (('traindata', 2, 4, 3), r"1 non-finite value in train\['x'\] \(first at example 2\)"),
    (('validdata', 1, 5, 0), r"1 non-finite value in val\['y'\] \(first at example 1\)"),
    (('testdata', 0, 7, 50), r"1 non-finite value in test\['y'\] \(first at example 0\)"),
], ids=['train_x', 'train_x_and_y', 'val_y', 'test_y'])
def test_nan_in_a_music_split_is_a_user_error_naming_it(tmp_path, nan_at, where):
  from research.errors import UserError
  path = _write_music(tmp_path / 'nan.mat', nan_at)
  with pytest.raises(UserError, match=rf'^data music \(.*nan\.mat\): {where}; the data must be '
                                      'finite$'):
    data.load_dataset(_music(path))
  data.load_dataset(_music(_write_music(tmp_path / 'ok.mat')))  # the same file without NaN loads


def test_finite_check_counts_the_valid_region_only():
  from research.errors import UserError
  lengths = np.array([3, 5, 2], np.int32)
  x = np.zeros((3, 5, 2), np.float32)
  x[0, 3:] = np.nan  # padding: not data
  x[2, 2:] = np.inf
  ds = data.Dataset('toy', {'x': x, 'y': np.zeros(3, np.int32), 'lengths': lengths}, None,
                    {'x': np.ones((1, 5, 2), np.float32), 'y': np.zeros(1, np.int32)}, {})
  data.check_finite(ds, 'data toy')
  x[1, 4, 1] = x[2, 0, 0] = x[2, 1, 1] = -np.inf
  with pytest.raises(UserError, match=r"^data toy: 3 non-finite values in train\['x'\] "
                                      r'\(first at example 1\); the data must be finite$'):
    data.check_finite(ds, 'data toy')
  ds.train['x'][:] = 0
  ds.test['x'][0, 0, 0] = np.nan  # no lengths: every step is data
  with pytest.raises(UserError, match=r"1 non-finite value in test\['x'\] \(first at example 0\)"):
    data.check_finite(ds, 'data toy')


def test_missing_music_file_names_the_path_and_the_key(tmp_path):
  from research.errors import UserError
  missing = tmp_path / 'nope' / 'JSB.mat'
  with pytest.raises(FileNotFoundError, match=re.escape(f"'{missing}' not found (data.path). "
                                                        'Set --config.data.path')):
    data.load_dataset(_music(missing))
  with pytest.raises(UserError, match=r'data\.path is not set.*--config\.data\.path'):
    data.load_dataset(ml_collections.ConfigDict(dict(name='music')))
  with pytest.raises(UserError, match=r'data\.path is not set'):
    data.load_dataset(_music(''))


@pytest.mark.parametrize('name', ['ArrowHead', 'ACSF1', 'UnitTest', 'GunPoint', 'JapaneseVowels'])
def test_ucr_config_batch_is_fawaz_rule_of_the_loaded_training_set(name):
  """configs/ucr.py: batch min(N_train / 10, 16) (Fawaz et al. 2019) for every bundled
  set, N_train the size of the set's training split as the loader reads it: ArrowHead
  (36 series) trains with batch 3, not the 16 of a set missing from a size table."""
  from research import cli
  from research.data import ucr
  n_train = len(ucr.read_split(name, 'TRAIN')[1])
  expected = max(1, min(n_train // 10, 16))
  assert cli.load_config('configs/ucr.py', f'dataset={name}').train.batch_size == expected
  assert cli.load_config('configs/ucr.py', f'dataset={name},val=0.2').train.batch_size == expected
  if name == 'ArrowHead':
    assert expected == 3
