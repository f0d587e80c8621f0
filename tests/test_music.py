"""Polyphonic music: the .mat reader, next-frame pairs, the per-frame NLL, and the
music21 fallback."""
import io
import sys

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


def music_config(path, arg='', **over):
  c = cli.load_config('configs/music.py', f'cell=gru,hidden=8,path={path}' + arg)
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
  with pytest.raises(FileNotFoundError, match='nope.mat.*--config.data.path.*data.source=music21'):
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


def test_shared_jsb_file_has_the_published_split():
  """The reference file the studies read (configs/music.py's default path, from the
  repository root): Boulanger-Lewandowski et al.'s 229/76/77 chorales of 88 keys, 0/1 frames.
  Skips where the shared data folder is absent (CI)."""
  import hashlib
  from pathlib import Path
  from research.data.music import read_mat
  default = cli.load_config('configs/music.py', '').data.path
  path = Path(__file__).resolve().parents[1] / default
  if not path.is_file():
    pytest.skip(f'{path} not present')
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  assert digest.startswith('ac0e6085') and digest.endswith('9b18d4'), digest  # shared README
  rolls = read_mat(path)
  assert {k: len(v) for k, v in rolls.items()} == {'train': 229, 'val': 76, 'test': 77}
  for split in rolls.values():
    for r in split:
      assert r.shape[1] == 88 and set(np.unique(r)) <= {0.0, 1.0}
  ds = load_dataset(music_config(path).data)
  assert ds.sizes() == {'train': 229, 'val': 76, 'test': 77}
  assert all(ds.info['frames'][k] == sum(len(r) - 1 for r in rolls[k]) for k in rolls)


# data.source=music21 (research/data/chorales.py). CI has no music21: these skip there.

def tiny_score():
  """Two parts; quarterLength offsets chosen to hit every edge of the sampling rule."""
  m21 = pytest.importorskip('music21')
  from music21 import chord, note, stream
  upper, lower = stream.Part(), stream.Part()
  upper.insert(0, note.Note('C4', quarterLength=1))  # frame 0
  upper.insert(1, note.Note('E4', quarterLength=2))  # frames 1, 2
  upper.insert(3.5, note.Note('F4', quarterLength=0.5))  # sounds at no frame onset
  upper.insert(4, note.Rest(quarterLength=1))
  upper.insert(5, chord.Chord(['G4', 'B4'], quarterLength=1.5))  # frames 5, 6
  lower.insert(0, note.Note('C3', quarterLength=4))  # frames 0..3
  lower.insert(4, note.Note('A0', quarterLength=0.5))  # frame 4, the lowest key
  lower.insert(4.5, note.Note('C#2', quarterLength=1.5))  # frame 5 (4.5 <= 5 < 6)
  lower.insert(0, note.Note('C0', quarterLength=1))  # below MIDI 21: dropped
  score = m21.stream.Score()
  score.insert(0, upper)
  score.insert(0, lower)
  return score


def test_music21_roll_samples_one_frame_per_quarter_note():
  from research.data import chorales
  roll = chorales.stream_roll(tiny_score())
  assert roll.shape == (7, 88) and roll.dtype == np.uint8  # highest time 6.5 -> 7 frames
  on = {t: sorted(int(k) + 21 for k in np.nonzero(roll[t])[0]) for t in range(7)}
  assert on == {0: [48, 60], 1: [48, 64], 2: [48, 64], 3: [48], 4: [21],
                5: [37, 67, 71], 6: [67, 71]}


def fake_corpus(lengths):
  """names() and parse(name) over tiny streams of the given frame counts; None fails to parse."""
  m21 = pytest.importorskip('music21')
  calls = []

  def parse(name):
    calls.append(name)
    L = lengths[name]
    if L is None:
      raise m21.exceptions21.Music21Exception('unreadable')
    s = m21.stream.Score([m21.stream.Part()])
    for t in range(L):
      s.parts[0].insert(t, m21.note.Note(40 + (t + len(name)) % 30, quarterLength=1))
    return s
  return (lambda: sorted(lengths)), parse, calls


def test_music21_split_and_cache(tmp_path, caplog):
  from research.data import chorales
  lengths = {f'bach/c{i:02d}': 3 + i % 4 for i in range(12)}
  lengths.update({'bach/broken': None, 'bach/short': 1})
  names, parse, calls = fake_corpus(lengths)
  cache = tmp_path / 'c.npz'
  rolls, skipped, path = chorales.load_rolls(cache, names, parse)
  assert path == cache and cache.is_file() and len(calls) == 14
  assert skipped == ['bach/broken', 'bach/short'] and len(rolls) == 12
  assert {n: len(r) for n, r in rolls.items()} == {n: L for n, L in lengths.items()
                                                   if L and L >= 2}
  # A second load reads the cache only, and gives the same rolls.
  again, skipped2, _ = chorales.load_rolls(cache, names, parse)
  assert len(calls) == 14 and skipped2 == skipped and list(again) == sorted(rolls)
  for n in rolls:
    np.testing.assert_array_equal(again[n], rolls[n])
  # The split: deterministic, disjoint, complete, each sorted, JSB proportions.
  split = chorales.split_names(reversed(list(rolls)))
  assert split == chorales.split_names(rolls)
  assert [len(v) for v in split.values()] == [8, 2, 2]
  assert sorted(sum(split.values(), [])) == sorted(rolls)
  assert all(v == sorted(v) for v in split.values())
  sizes = {k: len(v) for k, v in chorales.split_names(f'n{i}' for i in range(382)).items()}
  assert sizes == {'train': 229, 'val': 76, 'test': 77}
  # Damaged caches are errors naming the file; another music21 version's is rebuilt.
  good = cache.read_bytes()
  for damaged in (b'garbage', good[:len(good) // 2]):
    cache.write_bytes(damaged)
    with pytest.raises(ValueError, match=r'c\.npz.*corrupt.*delete it'):
      chorales.load_rolls(cache, names, parse)
  arrays = dict(np.load(io.BytesIO(good)))
  np.savez(cache, **{**arrays, 'lengths': arrays['lengths'] + 1})
  with pytest.raises(ValueError, match='corrupt.*lengths'):
    chorales.load_rolls(cache, names, parse)
  np.savez(cache, **{**arrays, 'music21_version': np.str_('0.0')})
  with caplog.at_level('WARNING'):
    rebuilt, _, _ = chorales.load_rolls(cache, names, parse)
  assert len(calls) == 28 and 'rebuilding' in caplog.text and list(rebuilt) == list(rolls)


def test_music21_source_through_the_config(tmp_path, monkeypatch, caplog):
  from research.data import chorales
  names, parse, _ = fake_corpus({f'bach/c{i:02d}': 3 + i % 5 for i in range(10)})
  monkeypatch.setattr(chorales, 'corpus_names', names)
  monkeypatch.setattr(chorales, 'parse_chorale', parse)
  c = music_config(tmp_path / 'absent.mat', f',source=music21,cache={tmp_path / "c.npz"}')
  assert c.experiment.startswith('bach21_') and c.data.source == 'music21'
  with caplog.at_level('WARNING'):
    ds = load_dataset(c.data)
  assert 'NOT the JSB Chorales benchmark' in caplog.text
  assert ds.sizes() == {'train': 6, 'val': 2, 'test': 2}
  assert ds.info['comparable_to_jsb'] is False and ds.info['chorales']['train'] == 6
  assert ds.train['x'].shape == (6, 7 - 1, 88) and ds.train['lengths'].max() <= 6


def test_music21_missing_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'music21', None)  # import music21 -> ImportError
  c = music_config(tmp_path / 'absent.mat', ',source=music21')
  with pytest.raises(ImportError, match=r"music21.*pip install -e '\.\[music21\]'"):
    load_dataset(c.data)
  c.data.source = 'midi'
  with pytest.raises(ValueError, match="data.source must be 'mat' or 'music21'"):
    load_dataset(c.data)
