"""Synthetic long-range tasks (`research.data.synthetic`) and seq_digits."""
from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest

from research import data
from research.data import synthetic

N = 200


def cfg(name, **kw):
  base = dict(name=name, num_train=N, num_val=N // 2, num_test=N, seed=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def splits(ds):
  return [ds.train, ds.val, ds.test]


def assert_same(a, b):
  for sa, sb in zip(splits(a), splits(b)):
    assert sa.keys() == sb.keys()
    for k in sa:
      np.testing.assert_array_equal(sa[k], sb[k])


def _rows(x):
  return {r.tobytes() for r in np.ascontiguousarray(x)}


# ----------------------------------------------------------------------------
# Adding.


@pytest.fixture(scope='module')
def hochreiter():
  return data.load_dataset(cfg('adding', variant='hochreiter', seq_len=100))


@pytest.fixture(scope='module')
def modern():
  return data.load_dataset(cfg('adding', variant='modern', seq_len=100))


def test_adding_formats(hochreiter, modern):
  for ds, t_max in ((hochreiter, 110), (modern, 100)):
    assert ds.sizes() == {'train': N, 'val': N // 2, 'test': N}
    for s in splits(ds):
      n = len(s['x'])
      assert s['x'].dtype == np.float32 and s['x'].shape == (n, t_max, 2)
      assert s['y'].dtype == np.float32 and s['y'].shape == (n,)
      assert s['lengths'].dtype == np.int32 and s['lengths'].shape == (n,)
    assert ds.info['task'] == 'regress' and ds.info['num_outputs'] == 1
    assert ds.info['seq_len'] == 100


def test_adding_hochreiter_definition(hochreiter):
  T = 100
  for s in splits(hochreiter):
    x, y, lengths = s['x'], s['y'], s['lengths']
    vals, marks = x[..., 0], x[..., 1]
    assert lengths.min() >= T and lengths.max() <= T + T // 10
    steps = np.arange(x.shape[1])
    valid = steps[None] < lengths[:, None]
    # Zero padding after the length, both channels.
    assert np.all(x[~valid] == 0.0)
    # Values in [-1, 1]; markers in {-1, 0, 1}.
    assert np.abs(vals).max() <= 1.0
    assert set(np.unique(marks)) <= {-1.0, 0.0, 1.0}
    for i in range(len(x)):
      L = lengths[i]
      pos = np.flatnonzero(marks[i] == 1.0)
      assert len(pos) == 2
      p1, p2 = pos  # sorted; the first mark is among the first 10 pairs,
      assert p1 < 10  # the second among the first T/2 - 1 unmarked ones.
      assert p2 <= T // 2 - 1
      assert marks[i, L - 1] == -1.0
      assert marks[i, 0] == (1.0 if p1 == 0 else -1.0)
      if p1 == 0:  # "X1 is set to zero ... where the first pair got marked"
        assert vals[i, 0] == 0.0
      others = np.setdiff1d(np.arange(1, L - 1), pos)
      assert np.all(marks[i, others] == 0.0)
      # Target recomputed from x.
      np.testing.assert_allclose(
          y[i], 0.5 + (vals[i, p1] + vals[i, p2]) / 4, rtol=0, atol=1e-6)
  # Lengths actually vary, and the first pair does get marked sometimes.
  assert len(np.unique(hochreiter.train['lengths'])) > 5
  assert np.any(hochreiter.train['x'][:, 0, 1] == 1.0)


def test_adding_modern_definition(modern):
  T = 100
  for s in splits(modern):
    vals, marks = s['x'][..., 0], s['x'][..., 1]
    assert np.all(s['lengths'] == T)
    assert vals.min() >= 0.0 and vals.max() <= 1.0
    assert set(np.unique(marks)) == {0.0, 1.0}
    assert np.all(marks.sum(1) == 2)
    assert np.all(marks[:, :T // 2].sum(1) == 1)  # one in each half
    assert np.all(marks[:, T // 2:].sum(1) == 1)
    np.testing.assert_allclose(s['y'], (vals * marks).sum(1), atol=1e-6)


def test_adding_baselines(hochreiter, modern):
  assert modern.info['baseline_mse'] == pytest.approx(1 / 6)
  assert modern.info['baseline_mse_empirical'] == pytest.approx(
      np.mean((modern.test['y'] - 1.0) ** 2))
  # Var of the sum of two U(0,1) is 1/6; 200 samples: std error ~0.016.
  assert abs(modern.info['baseline_mse_empirical'] - 1 / 6) < 0.05
  big = synthetic.adding_modern(np.random.default_rng(1), 20000, 50)['y']
  assert np.var(big) == pytest.approx(1 / 6, abs=0.01)
  assert np.mean(big) == pytest.approx(1.0, abs=0.02)
  # Hochreiter: (1.9 - 0.9 / (T//2 - 1)) / 48, checked against a large sample.
  expected = (1.9 - 0.9 / 49) / 48
  assert hochreiter.info['baseline_mse'] == pytest.approx(expected)
  big = synthetic.adding_hochreiter(np.random.default_rng(1), 40000, 100)['y']
  assert np.mean((big - 0.5) ** 2) == pytest.approx(expected, rel=0.03)
  assert abs(hochreiter.info['baseline_mse_empirical'] - expected) < 0.015


def test_adding_determinism_and_seeds():
  for variant in ('hochreiter', 'modern'):
    a = data.load_dataset(cfg('adding', variant=variant, seq_len=30))
    b = data.load_dataset(cfg('adding', variant=variant, seq_len=30))
    c = data.load_dataset(cfg('adding', variant=variant, seq_len=30, seed=1))
    assert_same(a, b)
    assert not np.array_equal(a.train['x'], c.train['x'])
    # Splits come from different derived seeds.
    assert not np.array_equal(a.train['x'][:N // 2], a.val['x'])
    assert not np.array_equal(a.train['x'], a.test['x'])


def test_adding_defaults_and_errors():
  ds = data.load_dataset(ml_collections.ConfigDict(
      dict(name='adding', num_train=8, num_val=0, num_test=8)))
  assert ds.info['variant'] == 'modern' and ds.info['seq_len'] == 100
  assert ds.val is None
  with pytest.raises(ValueError, match='variant'):
    data.load_dataset(cfg('adding', variant='nope'))
  with pytest.raises(ValueError, match='seq_len'):
    data.load_dataset(cfg('adding', variant='hochreiter', seq_len=10))


# ----------------------------------------------------------------------------
# Copy memory.


def test_copy_layout():
  T = 50
  ds = data.load_dataset(cfg('copy', seq_len=T))
  assert ds.info['seq_len'] == T + 20 and ds.info['T'] == T
  assert ds.info['num_classes'] == 9 and ds.info['task'] == 'sequence_classify'
  for s in splits(ds):
    x, y = s['x'], s['y']
    n = len(x)
    assert x.dtype == np.float32 and x.shape == (n, T + 20, 10)
    assert y.dtype == np.int32 and y.shape == (n, T + 20)
    assert np.all(x.sum(-1) == 1.0)  # one-hot
    tok = x.argmax(-1)
    assert tok[:, :10].min() >= 1 and tok[:, :10].max() <= 8
    assert np.all(tok[:, 10:T + 9] == 0)
    assert np.all(tok[:, T + 9] == 9)  # the delimiter
    assert np.all(tok[:, T + 10:] == 0)
    assert np.all((tok == 9).sum(1) == 1)
    assert np.all(y[:, :T + 10] == 0)
    np.testing.assert_array_equal(y[:, T + 10:], tok[:, :10])
    assert y.min() >= 0 and y.max() <= 8


def test_copy_baseline_and_determinism():
  ds = data.load_dataset(cfg('copy'))  # seq_len defaults to 100
  assert ds.info['T'] == 100
  assert ds.info['baseline_ce'] == pytest.approx(10 * math.log(8) / 120)
  assert ds.train['x'].shape[1] == 120
  # The memoryless strategy's cross-entropy, computed on the data.
  y = ds.test['y']
  p = np.where(np.arange(120)[None] < 110, (y == 0) * 1.0, 1 / 8)
  assert -np.log(p).mean() == pytest.approx(ds.info['baseline_ce'])
  same = data.load_dataset(cfg('copy'))
  other = data.load_dataset(cfg('copy', seed=3))
  assert_same(ds, same)
  assert not np.array_equal(ds.train['y'], other.train['y'])
  assert not np.array_equal(ds.train['y'], ds.test['y'])


# ----------------------------------------------------------------------------
# Temporal order.


@pytest.mark.parametrize('name,num_relevant', [('temporal_order', 2),
                                               ('temporal_order3', 3)])
@pytest.mark.parametrize('T', [100, 57])
def test_temporal_order(name, num_relevant, T):
  ds = data.load_dataset(cfg(name, seq_len=T))
  # Pascanu's ranges: offsets int(.1T), int(.5T) (2 symbols) or int(.1T),
  # int(.3T), int(.6T) (3 symbols), width int(.1T), half-open.
  w = int(T * .1)
  offsets = ((int(T * .1), int(T * .5)) if num_relevant == 2
             else (int(T * .1), int(T * .3), int(T * .6)))
  ranges = tuple((o, o + w) for o in offsets)
  assert ds.info['positions'] == ranges
  assert ds.info['num_classes'] == 2 ** num_relevant
  assert ds.info['seq_len'] == T and ds.info['task'] == 'classify'
  seen_pos = [set() for _ in ranges]
  for s in splits(ds):
    x, y = s['x'], s['y']
    n = len(x)
    assert x.dtype == np.float32 and x.shape == (n, T, 6)
    assert y.dtype == np.int32 and y.shape == (n,)
    assert np.all(x.sum(-1) == 1.0)
    tok = x.argmax(-1)
    for i in range(n):
      pos = np.flatnonzero(tok[i] < 2)  # relevant symbols A=0, B=1
      assert len(pos) == num_relevant
      label = 0
      for j, (p, (lo, hi)) in enumerate(zip(pos, ranges)):
        assert lo <= p < hi
        seen_pos[j].add(int(p))
        label += int(tok[i, p]) << j
      assert y[i] == label  # class recoverable from the relevant symbols
  assert set(np.unique(ds.train['y'])) == set(range(2 ** num_relevant))
  for seen, (lo, hi) in zip(seen_pos, ranges):
    assert seen == set(range(lo, hi))  # the whole range is used
  assert_same(ds, data.load_dataset(cfg(name, seq_len=T)))
  other = data.load_dataset(cfg(name, seq_len=T, seed=5))
  assert not np.array_equal(ds.train['x'], other.train['x'])


def test_temporal_order_rejects_short():
  with pytest.raises(ValueError, match='seq_len'):
    data.load_dataset(cfg('temporal_order', seq_len=9))


# ----------------------------------------------------------------------------
# Sequential digits.


def dcfg(**kw):
  base = dict(name='seq_digits', seed=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


@pytest.fixture(scope='module')
def digits_plain():
  pytest.importorskip('sklearn')
  return data.load_dataset(dcfg())


def test_digits_shapes_and_splits(digits_plain):
  ds = digits_plain
  assert ds.sizes() == {'train': 1078, 'val': 359, 'test': 360}
  assert ds.info == {'task': 'classify', 'num_classes': 10, 'seq_len': 64,
                     'input_shape': (64, 1), 'mode': 'pixel'}
  for s in splits(ds):
    assert s['x'].dtype == np.float32 and s['x'].shape == (len(s['y']), 64, 1)
    assert s['y'].dtype == np.int32
    assert s['x'].min() >= 0.0 and s['x'].max() <= 1.0
  assert ds.train['x'].max() == 1.0
  assert set(np.unique(ds.train['y'])) == set(range(10))
  # The 1797 (all distinct) images are partitioned among the splits.
  train, val, test = (_rows(s['x']) for s in splits(ds))
  assert len(train) + len(val) + len(test) == 1797
  assert not train & val and not train & test and not val & test


def test_digits_row_mode_and_split():
  pytest.importorskip('sklearn')
  ds = data.load_dataset(dcfg(mode='row', split=(0.8, 0.0, 0.2)))
  assert ds.val is None and ds.info['seq_len'] == 8
  assert ds.train['x'].shape[1:] == (8, 8)
  assert ds.sizes() == {'train': 1438, 'test': 359}
  pix = data.load_dataset(dcfg(split=(0.8, 0.0, 0.2)))
  np.testing.assert_array_equal(
      ds.train['x'].reshape(-1, 64), pix.train['x'].reshape(-1, 64))
  with pytest.raises(ValueError, match='mode'):
    data.load_dataset(dcfg(mode='column'))
  with pytest.raises(ValueError, match='split'):
    data.load_dataset(dcfg(split=(0.5, 0.2, 0.2)))


@pytest.mark.parametrize('mode', ['pixel', 'row'])
def test_digits_permute(digits_plain, mode):
  plain = digits_plain if mode == 'pixel' else data.load_dataset(dcfg(mode=mode))
  perm_ds = data.load_dataset(dcfg(mode=mode, permute=True, perm_seed=3))
  L = plain.info['seq_len']
  perm = perm_ds.info['permutation']
  assert sorted(perm.tolist()) == list(range(L))  # a true permutation
  assert not np.array_equal(perm, np.arange(L))
  for s, sp in zip(splits(plain), splits(perm_ds)):
    np.testing.assert_array_equal(s['y'], sp['y'])  # same examples, order
    # One permutation for every example.
    np.testing.assert_array_equal(sp['x'], s['x'][:, perm])
    # Pixel multiset preserved per example.
    flat = lambda a: np.sort(a.reshape(len(a), -1), axis=1)
    np.testing.assert_array_equal(flat(sp['x']), flat(s['x']))
  # Fixed by perm_seed, independent of the split seed; changes with perm_seed.
  again = data.load_dataset(dcfg(mode=mode, permute=True, perm_seed=3, seed=7))
  np.testing.assert_array_equal(again.info['permutation'], perm)
  other = data.load_dataset(dcfg(mode=mode, permute=True, perm_seed=4))
  assert not np.array_equal(other.info['permutation'], perm)


def test_digits_determinism_and_seed(digits_plain):
  assert_same(digits_plain, data.load_dataset(dcfg()))
  other = data.load_dataset(dcfg(seed=1))
  assert not np.array_equal(digits_plain.train['y'], other.train['y'])
