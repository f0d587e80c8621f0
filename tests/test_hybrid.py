"""Frame and text hybrids: moving digits, per-frame CNN, ConvLSTM, char LMs, sampling."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import augment, data
from research.data import text as text_data
from research.data import video
from research.models import cnn, hybrid
from research.models import text as text_models


def _video(**kw):
  cfg = dict(name='moving_digits', num_clips=(60, 20, 30))
  cfg.update(kw)
  return data.load_dataset(ml_collections.ConfigDict(cfg))


# --- moving digits -------------------------------------------------------------------


def test_moving_digits_shapes_labels_and_motion():
  ds = _video(frames=6, size=18, speed=2, directions=4)
  assert ds.train["x"].shape == (60, 6, 18, 18) and ds.train['x'].dtype == np.float32
  assert ds.sizes() == {'train': 60, 'val': 20, 'test': 30}
  assert ds.info['num_classes'] == 40
  meta = ds.info['meta']['train']
  images, labels = video.digits._load_raw()
  for k in range(10):
    x, d, start = ds.train['x'][k], meta['direction'][k], meta['start'][k]
    dy, dx = np.asarray(video.DIRECTIONS[4][d]) * 2
    assert ds.train['y'][k] == labels[meta['image'][k]] * 4 + d
    for t in range(6):  # the digit sits where start + t * step says, nothing elsewhere
      r, c = start[0] + t * dy, start[1] + t * dx
      np.testing.assert_allclose(x[t, r:r + 8, c:c + 8], images[meta['image'][k]].reshape(8, 8) / 16)
      assert x[t].sum() == pytest.approx(images[meta['image'][k]].sum() / 16, rel=1e-5)


def test_moving_digits_test_digits_unseen_and_deterministic():
  a, b = _video(seed=3), _video(seed=3)
  np.testing.assert_array_equal(a.test['x'], b.test['x'])
  seen = set(a.info['meta']['train']['image']) | set(a.info['meta']['val']['image'])
  assert not seen & set(a.info['meta']['test']['image'])
  digit = _video(label='digit', directions=8)
  assert digit.info['num_classes'] == 10 and digit.train['y'].max() <= 9


def test_moving_digits_bad_config_is_named():
  with pytest.raises(ValueError, match='does not fit'):
    _video(frames=10, size=12, speed=2)
  with pytest.raises(ValueError, match='label'):
    _video(label='colour')


def test_train_fraction_is_stratified_and_leaves_test_alone():
  full, part = _video(), _video(train_fraction=0.25)
  assert len(part.train['y']) < 0.5 * len(full.train['y'])
  np.testing.assert_array_equal(part.test['x'], full.test['x'])
  with pytest.raises(ValueError, match='train_fraction'):
    _video(train_fraction=0.0)


def test_frame_shift_moves_whole_clips_and_keeps_labels():
  x = jnp.asarray(_video().train['x'][:8])
  methods = augment.parse('frame_shift=2')
  out = augment.apply(jax.random.key(0), x, None, methods)
  assert out.shape == x.shape
  def shifted(clip, dy, dx):  # out[t, r, c] = clip[t, r - dy, c - dx], zeros outside
    H, W = clip.shape[1:]
    padded = np.pad(np.asarray(clip), ((0, 0), (2, 2), (2, 2)))
    return padded[:, 2 - dy:2 - dy + H, 2 - dx:2 - dx + W]

  found = set()
  for k in range(8):  # one shift per clip, the same for all its frames
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
              if np.allclose(shifted(x[k], dy, dx), out[k])]
    assert shifts, 'the clip is not a shifted copy of the input'
    found.add(shifts[0])
  assert len(found) > 1  # clips draw their own shifts
  np.testing.assert_array_equal(augment.apply(jax.random.key(0), x, None,
                                              augment.parse('frame_shift=0')), x)
  with pytest.raises(ValueError, match='clips'):
    augment.apply(jax.random.key(0), x, None, augment.parse('jitter=0.1'))
  with pytest.raises(ValueError, match='whole number'):
    augment.parse('frame_shift=1.5')


# --- per-frame CNN and ConvLSTM ---------------------------------------------------------


def test_frame_features_vmap_equals_loop_and_pools_batch_stats_over_time():
  x = jax.random.normal(jax.random.key(0), (3, 5, 12, 12))
  m = cnn.FrameFeatures(channels=(4, 6), norm='batch', pool=2)
  v = m.init(jax.random.key(1), x)
  inner_v = {'params': v['params']['frame'], 'batch_stats': v['batch_stats']['frame']}
  # Eval mode: exactly the 2-D CNN applied to each frame in turn.
  loop = jnp.stack([cnn.ConvFeatures2D((4, 6), norm='batch', pool=2).apply(inner_v, x[:, t])
                    for t in range(5)], 1)
  np.testing.assert_allclose(m.apply(v, x), loop, atol=1e-5)
  # Training mode: batch statistics over all B * T frames, as one big batch.
  out, upd = m.apply(v, x, train=True, mutable=['batch_stats'])
  ref, ref_upd = cnn.ConvFeatures2D((4, 6), norm='batch', pool=2, train=True).apply(
      inner_v, x.reshape(15, 12, 12), mutable=['batch_stats'])
  np.testing.assert_allclose(out.reshape(15, -1), ref, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               upd['batch_stats']['frame'], ref_upd['batch_stats'])


@pytest.mark.parametrize('k', [3, 4])
def test_conv2d_is_nn_conv_values_and_gradients(k):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
  ours = cnn.Conv2D(5, k)
  v = ours.init(jax.random.key(1), x)
  v = jax.tree.map(lambda a: a + 0.1, v)  # a non-zero bias
  ref = nn.Conv(5, (k, k), padding='SAME')
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), atol=1e-5)
  g = lambda m: jax.grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))), (0, 1))(v, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g(ours), g(ref))


def test_max_pool2d_matches_flax_values_and_gradients():
  h = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
  ref = lambda h: nn.max_pool(h, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(cnn.max_pool2d(h, 2), ref(h))
  np.testing.assert_allclose(jax.grad(lambda h: jnp.sum(cnn.max_pool2d(h, 2) ** 2))(h),
                             jax.grad(lambda h: jnp.sum(ref(h) ** 2))(h))


def test_convlstm_without_peepholes_is_flax_cell():
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6, 3))
  cell = nn.ConvLSTMCell(5, (3, 3))
  carry = cell.initialize_carry(jax.random.key(1), x[:, 0].shape)
  cv = cell.init(jax.random.key(2), carry, x[:, 0])
  cv = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), cv)
  hs = []
  for t in range(4):
    carry, h = cell.apply(cv, carry, x[:, t])
    hs.append(h)
  p = cv['params']
  ours = hybrid.ConvLSTMLayer(5, 3, peepholes=False).apply(
      {'params': {'ih_kernel': p['ih']['kernel'], 'hh_kernel': p['hh']['kernel'],
                  'bias': p['ih']['bias'] + p['hh']['bias']}}, x)
  np.testing.assert_allclose(ours, jnp.stack(hs, 1), atol=1e-5)


def _conv_np(x, w):  # 'same' 2-D convolution (cross-correlation) in float64
  k = w.shape[0]
  l = (k - 1) // 2
  xp = np.pad(x, ((0, 0), (l, k - 1 - l), (l, k - 1 - l), (0, 0)))
  H, W = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (w.shape[-1],))
  for i in range(k):
    for j in range(k):
      out += np.einsum('bhwc,co->bhwo', xp[:, i:i + H, j:j + W], w[i, j])
  return out


def test_convlstm_peepholes_follow_shi_et_al_equation_3():
  jax.config.update('jax_enable_x64', True)
  try:
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5, 2))
    m = hybrid.ConvLSTMLayer(3, 3, peepholes=True, forget_bias=0.0)
    v = m.init(jax.random.key(0), jnp.asarray(x))
    v = jax.tree.map(lambda a: np.random.default_rng(1).normal(size=a.shape) * 0.3, v)
    p = v['params']
    sig = lambda z: 1 / (1 + np.exp(-z))
    c = h = np.zeros((2, 5, 5, 3))
    hs = []
    for t in range(3):
      z = _conv_np(x[:, t], p['ih_kernel']) + _conv_np(h, p['hh_kernel']) + p['bias']
      zi, zg, zf, zo = np.split(z, 4, axis=-1)
      i = sig(zi + p['peephole'][0] * c)
      f = sig(zf + p['peephole'][1] * c)
      c = f * c + i * np.tanh(zg)
      o = sig(zo + p['peephole'][2] * c)
      h = o * np.tanh(c)
      hs.append(h)
    np.testing.assert_allclose(m.apply(v, jnp.asarray(x)), np.stack(hs, 1), atol=1e-10)
  finally:
    jax.config.update('jax_enable_x64', False)


@pytest.mark.parametrize('cfg', [dict(name='lrcn', channels=(4,), rnn=dict(hidden=8)),
                                 dict(name='lrcn', channels=(4,), rnn=dict(cell='none')),
                                 dict(name='convlstm', features=(4,), input_pool=2),
                                 dict(name='rnn', rnn=dict(cell='lstm', hidden=4), readout='last')])
def test_clip_models_run_on_clips(cfg):
  from research.models import build_model
  m = build_model(ml_collections.ConfigDict(cfg), {'num_classes': 40})
  x = jnp.zeros((2, 5, 12, 12))
  v = m.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x)
  assert m.apply(v, x).shape == (2, 40)


def test_lrcn_without_recurrence_is_blind_to_frame_order():
  x = jax.random.normal(jax.random.key(0), (2, 5, 12, 12))
  for cell, blind in (('none', True), ('lstm', False)):
    m = hybrid.LRCN(channels=(4,), rnn=dict(cell=cell, hidden=8))
    v = m.init(jax.random.key(1), x)
    same = np.allclose(m.apply(v, x), m.apply(v, x[:, ::-1]), atol=1e-5)
    assert same == blind


# --- text -----------------------------------------------------------------------------


def test_pydoc_text_chunks_vocab_and_unigram_baseline():
  ds = data.load_dataset(ml_collections.ConfigDict(dict(name='pydoc_text', seq_len=50,
                                                        max_chars=60000)))
  vocab = ds.info['vocab']
  assert ds.train['x'].shape[1] == 50 and ds.train['x'].dtype == np.int32
  np.testing.assert_array_equal(ds.train['x'][:, 1:], ds.train['y'][:, :-1])
  np.testing.assert_array_equal(ds.train['x'][1:, 0], ds.train['y'][:-1, -1])  # contiguous
  corpus = text_data.corpus()[:60000]
  assert text_data.decode(ds.train['x'][0], vocab) == corpus[:50]
  # The unigram baseline lies between 0 and log2(vocab) and is what its definition says.
  counts = np.bincount(ds.train['x'].ravel(), minlength=len(vocab))
  assert 3.0 < ds.info['unigram_bits'] < np.log2(len(vocab))
  assert counts[0] == 0  # id 0 is reserved for characters training never saw


def test_causal_conv1d_is_left_padded_nn_conv():
  x = jax.random.normal(jax.random.key(0), (2, 9, 3))
  ours = cnn.Conv1D(4, 3, padding='causal')
  v = ours.init(jax.random.key(1), x)
  ref = nn.Conv(4, (3,), padding=[(2, 0)])
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), atol=1e-5)


@pytest.mark.parametrize('kw', [dict(), dict(channels=()),
                                dict(rnn=dict(cell='none'), channels=(8, 8), kernels=(3, 3))])
def test_char_lm_is_causal(kw):
  m = text_models.CharLM(embed=8, num_outputs=20,
                         **{'channels': (8,), 'rnn': dict(hidden=16), **kw})
  x = jnp.asarray(np.random.default_rng(0).integers(0, 20, (2, 12)), jnp.int32)
  v = m.init(jax.random.key(0), x)
  out = m.apply(v, x)
  assert out.shape == (2, 12, 20)
  changed = m.apply(v, x.at[:, 7].set((x[:, 7] + 1) % 20))
  np.testing.assert_allclose(out[:, :7], changed[:, :7], atol=1e-6)
  assert not np.allclose(out[:, 7:], changed[:, 7:])


def test_greedy_sampling_equals_stepwise_argmax():
  m = text_models.CharLM(embed=8, channels=(8,), kernels=(3,), rnn=dict(hidden=16), num_outputs=11)
  v = m.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
  prime = jnp.asarray([1, 2, 3], jnp.int32)
  out = text_models.sample(m, v, prime, 9, jax.random.key(1), temperature=0.0, context=6)
  ref = list(prime)
  for _ in range(9):  # the full model over the last `context` characters, read at the end
    window = jnp.asarray(ref[-6:], jnp.int32)[None]
    ref.append(int(jnp.argmax(m.apply(v, window)[0, -1])))
  assert list(np.asarray(out)) == ref
  a = text_models.sample(m, v, prime, 20, jax.random.key(2), temperature=1.0, context=6)
  b = text_models.sample(m, v, prime, 20, jax.random.key(2), temperature=1.0, context=6)
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0 and a.max() < 11


# --- forecasting ------------------------------------------------------------------------


def _forecast(**kw):
  return data.load_dataset(ml_collections.ConfigDict(dict(name='forecast', **kw)))


def test_forecast_windows_follow_the_series_and_train_statistics():
  from research.data import forecast
  ds = _forecast(series='airline', window=24, horizon=12)
  info, raw = ds.info, forecast.load_series('airline')
  assert ds.train['x'].shape[1:] == (24, 1) and ds.test['y'].shape[1:] == (12,)
  # Every window is the (log, normalised) series at its origin; targets stay in their split.
  for split in ('train', 'val', 'test'):
    s, o = getattr(ds, split), info['origins'][split]
    np.testing.assert_allclose(forecast.to_original(s['y'], info, split),
                               raw[o[:, None] + np.arange(12)], rtol=1e-5)
    np.testing.assert_allclose(forecast.to_original(s['x'][..., 0], info, split),
                               raw[o[:, None] + np.arange(-24, 0)], rtol=1e-5)
    np.testing.assert_allclose(s['x'][:, -1, 0], 0.0, atol=1e-6)  # relative to the last input
    a, b = info['bounds'][split]
    assert o.min() >= a and o.max() + 12 <= b
  assert info['bounds']['test'] == (120, 144)  # the classic 1959-1960 hold-out
  # Normalisation statistics come from the training period only.
  t_val = info['bounds']['val'][0]
  assert info['mean'] == pytest.approx(np.log(raw[:t_val]).mean())
  assert info['std'] == pytest.approx(np.log(raw[:t_val]).std())
  # Seasonal naive: the same month of the last year observed before the origin.
  o = info['origins']['test']
  np.testing.assert_array_equal(info['seasonal_naive']['test'], raw[o[:, None] + np.arange(12) - 12])
  # Levels (no per-window offset) map back to the same values.
  levels = _forecast(window_norm='none')
  np.testing.assert_allclose(forecast.to_original(levels.test['y'], levels.info),
                             forecast.to_original(ds.test['y'], info, 'test'), rtol=1e-5)


def test_forecast_bad_config_is_named():
  with pytest.raises(ValueError, match='unknown series'):
    _forecast(series='sunspots')
  with pytest.raises(ValueError, match='seasonal-naive lag'):
    _forecast(window=6)
  with pytest.raises(ValueError, match='no training window'):
    _forecast(window=60, horizon=24)
