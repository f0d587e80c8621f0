"""Polyphonic music: the .mat reader, next-frame pairs, and the per-frame NLL."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from research import cli
from research.data import load_dataset
from research.train import batch_split, train_and_evaluate
from tests.test_train import setup_trainer


def write_mat(path, lengths=((7, 5, 9), (4, 6), (8, 3)), seed=0, keys=88):
  """A small file in the layout of JSB_Chorales.mat: (1, N) object arrays of (T, 88) rolls."""
  rng = np.random.default_rng(seed)
  rolls = {}
  for key, ls in zip(('traindata', 'validdata', 'testdata'), lengths):
    arr = np.empty((1, len(ls)), dtype=object)
    for i, L in enumerate(ls):
      arr[0, i] = (rng.random((L, keys)) < 0.05).astype(np.uint8)
    rolls[key] = arr
  scipy.io.savemat(str(path), rolls)
  return {k: [np.asarray(r, np.float64) for r in v[0]] for k, v in rolls.items()}


def music_config(path, **over):
  c = cli.load_config('configs/music.py', f'cell=gru,hidden=8,path={path}')
  c.train.batch_size = 2
  c.train.epochs = 2
  c.train.eval_batch_size = 2
  c.train.progress = False
  c.population = ''
  for k, v in over.items():
    c.train[k] = v
  return c


def test_reader_builds_next_frame_pairs_with_lengths(tmp_path):
  rolls = write_mat(tmp_path / 'm.mat')
  ds = load_dataset(music_config(tmp_path / 'm.mat').data)
  assert ds.sizes() == {'train': 3, 'val': 2, 'test': 2}
  T = 9 - 1  # longest sequence of all splits, minus the frame nothing predicts
  assert ds.train['x'].shape == (3, T, 88) and ds.info['num_outputs'] == 88
  np.testing.assert_array_equal(ds.train['lengths'], [6, 4, 8])
  np.testing.assert_array_equal(ds.val['lengths'], [3, 5])
  for i, roll in enumerate(rolls['traindata']):
    L = len(roll) - 1
    np.testing.assert_array_equal(ds.train['x'][i, :L], roll[:-1])
    np.testing.assert_array_equal(ds.train['y'][i, :L], roll[1:])
    assert not ds.train['x'][i, L:].any() and not ds.train['y'][i, L:].any()
  assert ds.info['frames'] == {'train': 18, 'val': 8, 'test': 9}


def test_reader_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.mat.*--config.data.path'):
    load_dataset(music_config(tmp_path / 'nope.mat').data)
  (tmp_path / 'bad.mat').write_bytes(b'not a mat file')
  with pytest.raises(ValueError, match='bad.mat is not a readable MATLAB file'):
    load_dataset(music_config(tmp_path / 'bad.mat').data)
  write_mat(tmp_path / 'keys.mat', keys=12)
  with pytest.raises(ValueError, match=r'traindata\[0\] has shape \(7, 12\)'):
    load_dataset(music_config(tmp_path / 'keys.mat').data)


def test_split_nll_is_per_frame_summed_over_keys(tmp_path):
  """Evaluation = total Bernoulli NLL over all valid frames / number of frames
  (not a mean of per-sequence means), in float64 NumPy; padding changes nothing."""
  write_mat(tmp_path / 'm.mat')
  c = music_config(tmp_path / 'm.mat')
  trainer, ds, hp, state = setup_trainer(c)
  split = ds.train
  got = trainer.evaluate(state.params, state.model_state, hp, batch_split(split, 2))
  logits = np.asarray(trainer.model.apply(
      {'params': jax.tree.map(lambda x: x[0], state.params)}, split['x'],
      lengths=split['lengths']), np.float64)
  total, frames = 0.0, 0
  for b, L in enumerate(split['lengths']):
    p = 1 / (1 + np.exp(-logits[b, :L]))
    y = split['y'][b, :L]
    total += -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
    frames += L
  assert float(got['loss'][0]) == pytest.approx(total / frames, rel=1e-5)
  # Equal-weighted sequence means would differ: the lengths differ.
  one = trainer.evaluate(state.params, state.model_state, hp, batch_split(split, 3))
  np.testing.assert_allclose(one['loss'], got['loss'], rtol=1e-5)


def test_music_trains_and_lowers_nll(tmp_path):
  write_mat(tmp_path / 'm.mat', lengths=((30,) * 8, (30,) * 2, (30,) * 2))
  c = music_config(tmp_path / 'm.mat', epochs=8)
  c.optim.lr = 1e-2
  out = train_and_evaluate(c, tmp_path / 'run')
  import json
  recs = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert recs[-1]['train/loss'] < 0.6 * recs[0]['train/loss']
  assert np.isfinite(out['members'][0]['test/loss'])
