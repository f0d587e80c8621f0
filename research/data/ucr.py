"""UCR/UEA time-series classification sets that ship inside sktime.

sktime's wheel bundles a few archive sets as ``.ts`` files
(``sktime/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts``): among them GunPoint,
ItalyPowerDemand, ArrowHead, OSULeaf (univariate), BasicMotions and
JapaneseVowels (multivariate; JapaneseVowels has variable lengths 7..29). We
read those files with sktime's own parser; nothing is downloaded. Any bundled
set is a config value (``data.dataset``); `bundled()` lists them.

Layout returned: x float32 (N, T, C) right-padded with zeros to the longest
series of all splits, y int32 class indices (labels sorted as strings, mapped
on the training split), and ``lengths`` (N,) when the lengths differ. The
archive's own train/test split is kept; a validation split is carved from
train only (``val_fraction``, stratified), never from test.

Config keys:

* ``dataset`` ('GunPoint'): the bundled set's name.
* ``normalize`` ('none'): 'per_series' z-normalises every series and channel
  over its own valid steps (the archive's convention; most univariate UCR sets
  already are); 'global' z-normalises each channel with the mean and std of
  the *training* split's valid steps (val and test use the train statistics);
  'none' leaves the values as read.
* ``val_fraction`` (0.0) and ``seed`` (0): the stratified validation carve.
"""
from __future__ import annotations

import functools
from pathlib import Path

import ml_collections
import numpy as np

from research import data
from research.data import preprocess


def _data_dir() -> Path:
  try:
    import sktime
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("Dataset 'ucr' reads the UCR/UEA files bundled with sktime: "
                      "pip install 'sktime>=0.30,<2'") from e
  return Path(sktime.__file__).parent / 'datasets' / 'data'


def bundled() -> list[str]:
  """Names of the classification sets with both splits in sktime's wheel."""
  root = _data_dir()
  return sorted(p.name for p in root.iterdir()
                if (p / f'{p.name}_TRAIN.ts').is_file() and (p / f'{p.name}_TEST.ts').is_file())


@functools.lru_cache(maxsize=None)
def train_size(name: str) -> int:
  """The number of series in the set's TRAIN split, as `load` reads it (before any
  validation carve): what a config needs to size batches before training."""
  return len(read_split(name, 'TRAIN')[1])


def read_split(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray]:
  """([series (T_i, C) float32, ...], labels as strings) for split TRAIN or TEST."""
  from sktime.datasets import load_from_tsfile
  path = _data_dir() / name / f'{name}_{split}.ts'
  if not path.is_file():
    raise ValueError(f"UCR/UEA set {name!r} is not bundled with sktime; bundled: {bundled()}")
  X, y = load_from_tsfile(str(path), return_data_type='nested_univ')
  series = []
  for i in range(len(X)):
    cols = [np.asarray(X.iloc[i, c], np.float32) for c in range(X.shape[1])]
    if len({len(c) for c in cols}) != 1:
      raise ValueError(f'{path}: series {i} has channels of different lengths')
    series.append(np.stack(cols, axis=-1))
  return series, np.asarray(y).astype(str)


@data.register('ucr')
def load(config: ml_collections.ConfigDict) -> data.Dataset:
  name = config.get('dataset', 'GunPoint')
  norm = config.get('normalize', 'none')
  if norm not in preprocess.NORMALIZE:
    raise ValueError(f'ucr: normalize must be one of {preprocess.NORMALIZE}, got {norm!r}')
  train_s, train_y = read_split(name, 'TRAIN')
  test_s, test_y = read_split(name, 'TEST')
  classes = sorted(set(train_y))
  unknown = sorted(set(test_y) - set(classes))
  if unknown:
    raise ValueError(f'ucr {name}: test labels {unknown} never occur in train')
  index = {c: i for i, c in enumerate(classes)}
  max_len = max(len(s) for s in train_s + test_s)
  train = preprocess.pad(train_s, max_len)
  test = preprocess.pad(test_s, max_len)
  train['y'] = np.array([index[c] for c in train_y], np.int32)
  test['y'] = np.array([index[c] for c in test_y], np.int32)

  train, val = preprocess.stratified_split(train, float(config.get('val_fraction', 0.0)),
                                           int(config.get('seed', 0)))
  splits = preprocess.normalize({'train': train, 'val': val, 'test': test}, norm)
  variable = len({len(s) for s in train_s + test_s}) > 1
  if not variable:
    for s in splits.values():
      if s is not None:
        s.pop('lengths')
  return data.Dataset(
      name=f'ucr_{name}', train=splits['train'], val=splits['val'], test=splits['test'],
      info={'num_classes': len(classes), 'classes': classes, 'input_shape': (max_len, train['x'].shape[-1]),
            'variable_length': variable, 'normalize': norm})
