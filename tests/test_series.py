"""Issue 4 building blocks: UCR loaders, preprocessing, augmentation, masked conv
front ends and hybrids (padded batches against unpadded runs)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import augment
from research.data import load_dataset, preprocess, ucr
from research.models import build_model
from research.models.cnn import Conv1D
from research.tasks import make_task


def _ucr(name, **kw):
  return load_dataset(ml_collections.ConfigDict(dict(name='ucr', dataset=name, **kw)))


@pytest.mark.parametrize('name,train,test,T,C,K', [
    ('GunPoint', 50, 150, 150, 1, 2),
    ('ItalyPowerDemand', 67, 1029, 24, 1, 2),
    ('BasicMotions', 40, 40, 100, 6, 4),
    ('JapaneseVowels', 270, 370, 29, 12, 9),
])
def test_ucr_sets_have_the_archive_shapes_and_splits(name, train, test, T, C, K):
  d = _ucr(name)
  assert d.sizes() == {'train': train, 'test': test}
  assert d.train['x'].shape == (train, T, C) and d.test['x'].shape == (test, T, C)
  assert d.info['num_classes'] == K
  assert set(np.unique(d.train['y'])) == set(range(K))
  assert d.train['x'].dtype == np.float32 and d.train['y'].dtype == np.int32
  assert ('lengths' in d.train) == (name == 'JapaneseVowels')


def test_variable_length_set_is_right_padded_with_zeros():
  d = _ucr('JapaneseVowels')
  lengths = d.train['lengths']
  both = np.concatenate([lengths, d.test['lengths']])
  assert both.min() == 7 and both.max() == 29  # the archive's range (train alone: 7..26)
  series, _ = ucr.read_split('JapaneseVowels', 'TRAIN')
  for i in (0, int(np.argmin(lengths)), int(np.argmax(lengths))):
    L = lengths[i]
    np.testing.assert_array_equal(d.train['x'][i, :L], series[i])
    assert not d.train['x'][i, L:].any()


def test_unknown_set_names_the_bundled_ones():
  with pytest.raises(ValueError, match='not bundled.*GunPoint'):
    _ucr('NoSuchSet')
  with pytest.raises(ValueError, match='normalize'):
    _ucr('GunPoint', normalize='minmax')


def test_stratified_validation_carve_comes_from_train_only():
  full = _ucr('JapaneseVowels')
  d = _ucr('JapaneseVowels', val_fraction=0.2, seed=3)
  assert len(d.train['x']) + len(d.val['x']) == len(full.train['x'])
  assert len(d.test['x']) == len(full.test['x'])
  for c in range(9):  # every class keeps ~80% of its examples in train
    n = (full.train['y'] == c).sum()
    assert (d.val['y'] == c).sum() == round(0.2 * n)
  # train and val are disjoint and together are the original train split
  rows = lambda s: {(s['x'][i].tobytes(), int(s['y'][i])) for i in range(len(s['y']))}
  assert rows(d.train) | rows(d.val) == rows(full.train)
  assert not rows(d.train) & rows(d.val)


def _splits(seed=0):
  rng = np.random.default_rng(seed)
  series = [rng.normal(3.0, 2.0, (L, 2)).astype(np.float32) for L in (5, 9, 7, 9)]
  train = preprocess.pad(series[:3], 9)
  test = preprocess.pad(series[3:], 9)
  return {'train': train, 'val': None, 'test': test}


def test_global_normalization_uses_train_statistics_only():
  splits = _splits()
  out = preprocess.normalize(splits, 'global')
  m = preprocess.valid_mask(splits['train'])[..., 0]
  valid = out['train']['x'][m]
  np.testing.assert_allclose(valid.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(valid.std(0), 1.0, atol=1e-4)
  assert not out['train']['x'][~m].any()  # padding stays zero
  raw = splits['train']['x'][m]
  np.testing.assert_allclose(out['test']['x'][0], (splits['test']['x'][0] - raw.mean(0))
                             / (raw.std(0) + preprocess.EPS), rtol=1e-5)
  # Changing the test split changes nothing in the train split.
  changed = {**splits, 'test': {**splits['test'], 'x': splits['test']['x'] * 100}}
  np.testing.assert_array_equal(preprocess.normalize(changed, 'global')['train']['x'],
                                out['train']['x'])


def test_per_series_normalization_over_valid_steps():
  splits = _splits()
  out = preprocess.normalize(splits, 'per_series')
  for i, L in enumerate(splits['train']['lengths']):
    x = out['train']['x'][i]
    np.testing.assert_allclose(x[:L].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x[:L].std(0), 1.0, atol=1e-4)
    assert not x[L:].any()


# ---- augmentation ----

def _batch(B=6, T=30, C=3, seed=0):
  x = jax.random.normal(jax.random.PRNGKey(seed), (B, T, C))
  lengths = jnp.array([30, 12, 5, 30, 21, 2])[:B]
  return x * (jnp.arange(T)[None, :, None] < lengths[:, None, None]), lengths


@pytest.mark.parametrize('spec', ['jitter=0', 'scaling=0', 'magnitude_warp=0', 'time_warp=0',
                                  'window_slice=1'])
def test_augmentation_at_zero_strength_is_the_identity(spec):
  x, lengths = _batch()
  y = augment.apply(jax.random.PRNGKey(1), x, lengths, augment.parse(spec))
  np.testing.assert_allclose(y, x, atol=1e-5)


@pytest.mark.parametrize('spec', ['jitter=0.1', 'scaling=0.2', 'magnitude_warp=0.2',
                                  'time_warp=0.3', 'window_slice=0.8',
                                  'jitter=0.03,scaling=0.1,time_warp=0.2,window_slice=0.9'])
def test_augmentation_keeps_shape_and_padding_and_changes_values(spec):
  x, lengths = _batch()
  y = augment.apply(jax.random.PRNGKey(1), x, lengths, augment.parse(spec))
  assert y.shape == x.shape and y.dtype == x.dtype
  pad = jnp.arange(x.shape[1])[None, :] >= lengths[:, None]
  assert not jnp.any(y[pad])
  assert not np.allclose(y[0], x[0])
  # The same key gives the same batch; another key another one.
  np.testing.assert_array_equal(y, augment.apply(jax.random.PRNGKey(1), x, lengths,
                                                 augment.parse(spec)))
  assert not np.allclose(y, augment.apply(jax.random.PRNGKey(2), x, lengths,
                                          augment.parse(spec)))


def test_jitter_and_scaling_have_the_stated_distributions():
  x = jnp.ones((2000, 10, 2))
  j = augment.apply(jax.random.PRNGKey(0), x, None, augment.parse('jitter=0.1')) - 1
  assert abs(float(j.std()) - 0.1) < 0.002 and abs(float(j.mean())) < 0.002
  s = augment.apply(jax.random.PRNGKey(0), x, None, augment.parse('scaling=0.2'))
  assert jnp.all(s == s[:, :1])  # one factor per series and channel
  assert abs(float(s[:, 0].std()) - 0.2) < 0.01


def test_time_warp_keeps_the_end_points_and_window_slice_stretches():
  x, lengths = _batch()
  y = augment.apply(jax.random.PRNGKey(3), x, lengths, augment.parse('time_warp=0.5'))
  idx = jnp.arange(len(lengths))
  np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-5)
  np.testing.assert_allclose(y[idx, lengths - 1], x[idx, lengths - 1], atol=1e-4)
  # A ramp sliced to half its length is a ramp of half the slope, inside the original range.
  ramp = jnp.arange(30.0)[None, :, None]
  w = augment.apply(jax.random.PRNGKey(0), ramp, None, augment.parse('window_slice=0.5'))[0, :, 0]
  np.testing.assert_allclose(jnp.diff(w), 14.5 / 29, rtol=1e-4)
  assert w[0] >= 0 and w[-1] <= 29


def test_augment_spec_errors_are_clear():
  with pytest.raises(ValueError, match='unknown method'):
    augment.parse('jiter=0.1')
  with pytest.raises(ValueError, match='needs a strength'):
    augment.parse('jitter')
  with pytest.raises(ValueError, match='out of range'):
    augment.parse('window_slice=1.5')


# ---- convolutions and masking ----

@pytest.mark.parametrize('k,s,t', [(8, 1, 20), (5, 1, 7), (3, 1, 9), (5, 2, 13)])
def test_same_padding_conv_matches_flax(k, s, t):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, t, 2))
  ours = Conv1D(4, k, s, 'same')
  params = jax.tree.map(lambda a: a + 0.1, ours.init(jax.random.PRNGKey(1), x))
  left = (k - 1) // 2
  ref = nn.Conv(4, (k,), strides=(s,), padding=[(left, k - 1 - left)])
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  if s == 1:
    assert ours.apply(params, x).shape[1] == t


MASKED_MODELS = {
    'fcn': dict(name='fcn', channels=(8, 16, 8), kernels=(8, 5, 3)),
    'fcn_layernorm': dict(name='fcn', channels=(8, 8), kernels=(5, 3), norm='layer'),
    'conv_lstm_strided_pooled': dict(
        name='cnn_rnn', channels=(6, 6), kernels=(3, 3), strides=(2, 1), padding='same',
        norm='batch', pool=2, rnn=dict(cell='lstm', hidden=5, num_layers=2, bidirectional=True),
        readout='last'),
    'conv_gru_mean': dict(name='cnn_rnn', channels=(6,), kernels=(5,), strides=(1,),
                          padding=2, rnn=dict(cell='gru', hidden=4, bidirectional=False),
                          readout='mean'),
    'lstm_fcn_temporal': dict(name='lstm_fcn', channels=(8, 8, 8), kernels=(8, 5, 3),
                              rnn=dict(hidden=4), lstm_input='temporal'),
}


@pytest.mark.parametrize('kind', sorted(MASKED_MODELS))
def test_padded_batch_equals_unpadded_runs(kind):
  model = build_model(ml_collections.ConfigDict(MASKED_MODELS[kind]), {'num_classes': 3})
  rng = np.random.default_rng(0)
  lengths = np.array([17, 9, 12, 10])
  series = [rng.normal(size=(L, 3)).astype(np.float32) for L in lengths]
  batch = preprocess.pad(series, 20)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(batch['x']),
                         lengths=jnp.asarray(lengths))
  variables = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(1), a.shape),
                           variables)  # non-trivial batch-norm statistics and biases
  apply = jax.jit(model.apply)  # one compile per shape; op-by-op dispatch is slower here
  padded = apply(variables, jnp.asarray(batch['x']), lengths=jnp.asarray(lengths))
  for i, s in enumerate(series):
    alone = apply(variables, jnp.asarray(s[None]))
    np.testing.assert_allclose(padded[i], alone[0], rtol=1e-4, atol=1e-5, err_msg=f'series {i}')


def test_batchnorm_statistics_ignore_padding_in_training():
  """Training-mode batch norm on a padded batch uses the valid steps only: the
  same batch padded to two different lengths gives the same outputs and stats."""
  model = build_model(ml_collections.ConfigDict(MASKED_MODELS['fcn']), {'num_classes': 3})
  rng = np.random.default_rng(1)
  lengths = np.array([11, 6, 9])
  series = [rng.normal(size=(L, 3)).astype(np.float32) for L in lengths]
  outs = []
  for T in (11, 25):
    b = preprocess.pad(series, T)
    v = model.init(jax.random.PRNGKey(0), jnp.asarray(b['x']), lengths=jnp.asarray(lengths))
    outs.append(model.apply(v, jnp.asarray(b['x']), train=True, lengths=jnp.asarray(lengths),
                            mutable=['batch_stats']))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               outs[0][1], outs[1][1])


def test_lstm_fcn_shuffle_branch_reads_the_transposed_series():
  """Dimension shuffle: the LSTM branch sees C steps of T features, so for a
  univariate series it is one step and the series' order only matters through
  the input weights (permuting time changes only the FCN branch's input)."""
  cfg = dict(name='lstm_fcn', channels=(4, 4, 4), kernels=(3, 3, 3), rnn=dict(hidden=3),
             dropout=0.0)
  model = build_model(ml_collections.ConfigDict(cfg), {'num_classes': 2})
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 1))
  v = model.init(jax.random.PRNGKey(1), x)
  lstm_in = [a.shape for a in jax.tree.leaves(v['params']['Recurrent_0'])]
  assert any(s[0] == 10 for s in lstm_in if len(s) == 2)  # input size T, not C


def test_select_metric_override():
  base = ml_collections.ConfigDict(dict(kind='classify', label_smoothing=0.0, select='loss'))
  t = make_task(base)
  assert (t.select_metric, t.select_mode) == ('loss', 'min')
  base.select = 'accuracy'
  assert make_task(base).select_mode == 'max'
  base.select = 'bleu'
  with pytest.raises(ValueError, match='not a metric'):
    make_task(base)


def test_ucr_config_trains_with_augmentation_and_selects_on_training_loss(tmp_path):
  from research import cli
  from research.train import train_and_evaluate
  config = cli.load_config('configs/ucr.py', 'model=lstm_fcn_t,dataset=JapaneseVowels,quick=True,'
                           'augment=jitter=0.03+time_warp=0.2')
  assert config.train.augment == 'jitter=0.03,time_warp=0.2'
  config.train.progress = False
  out = train_and_evaluate(config, tmp_path)
  metrics = {r['metric'] for r in out['rows']}
  assert metrics == {'test_loss', 'test_accuracy'}
  # No validation split: selection ran on the training split, and no test value was logged
  # before the end.
  import json
  recs = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all('train/loss' in r and 'train_eval/loss' in r
             and not any(k.startswith(('test/', 'val/')) for k in r) for r in recs)
  # Training-step means (augmented, train mode) and the eval-mode pass differ.
  assert any(r['train/loss'] != r['train_eval/loss'] for r in recs)
  assert all(0 <= m['test/accuracy'] <= 1 for m in out['members'])
