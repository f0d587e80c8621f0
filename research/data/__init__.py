"""Datasets. Every loader returns the same `Dataset` record of NumPy arrays.

Splits are dicts of equally long arrays (at least ``x`` and ``y``); the
training loop moves them to the device once and shuffles them there.
`load_dataset` rejects NaN / inf in the valid region of any float array of
any split (`check_finite`): one `research.errors.UserError` line naming the
split, key and first example, rather than a run that "diverges" or reports a
NaN test loss.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np

from research.registry import Registry

Split = dict[str, np.ndarray]


@dataclasses.dataclass
class Dataset:
  name: str
  train: Split
  val: Split | None
  test: Split
  info: dict[str, Any]  # e.g. num_classes, input_shape

  def sizes(self) -> dict[str, int]:
    out = {'train': len(self.train['x']), 'test': len(self.test['x'])}
    if self.val is not None:
      out['val'] = len(self.val['x'])
    return out


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float,
                     seed: int) -> tuple[Split, Split | None]:
  """Carves a validation split from training data with a fixed permutation."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'data.val_fraction must be in [0, 1), got {fraction}')
  if fraction == 0.0:
    return {'x': x, 'y': y}, None
  perm = np.random.default_rng(seed).permutation(len(x))
  n_val = int(round(fraction * len(x)))
  val_idx, train_idx = perm[:n_val], perm[n_val:]
  return ({'x': x[train_idx], 'y': y[train_idx]},
          {'x': x[val_idx], 'y': y[val_idx]})


# Loaders register themselves, ``@register('name')`` above a function of
# ``config.data`` returning a `Dataset`; this package's modules are imported on the
# first lookup of an unregistered name (`research.registry`), so a module whose
# optional package is missing fails only its own datasets.
DATASETS: Registry[Callable[[ml_collections.ConfigDict], Dataset]] = Registry('dataset', __name__)
register = DATASETS.register


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Builds the dataset named by ``config.name``."""
  ds = DATASETS[config.name](config)
  check_finite(ds, describe(config, ds))
  fraction = float(config.get('train_fraction', 1.0))
  if fraction != 1.0:
    ds = subsample_train(ds, fraction, int(config.get('seed', 0)))
  return ds


def describe(config: ml_collections.ConfigDict, ds: Dataset) -> str:
  """'data <name>' plus the file or source it came from, when the loader says."""
  source = ds.info.get('source') or config.get('path', None)
  return f'data {config.name}' + (f' ({source})' if source else '')


def valid_region(split: Split, key: str) -> np.ndarray | None:
  """Boolean mask of ``split[key]``'s valid (unpadded) entries, or None when the
  whole array is valid: arrays of a split with ``lengths`` whose axis 1 is the
  padded time axis of ``x`` are valid only at steps < lengths."""
  a, lengths = split[key], split.get('lengths')
  if (lengths is None or key == 'lengths' or a.ndim < 2 or split['x'].ndim < 2
      or len(a) != len(lengths) or a.shape[1] != split['x'].shape[1]):
    return None
  steps = np.arange(a.shape[1])[None, :] < np.asarray(lengths)[:, None]
  return np.broadcast_to(steps.reshape(steps.shape + (1,) * (a.ndim - 2)), a.shape)


def check_finite(ds: Dataset, where: str) -> None:
  """Raises `research.errors.UserError` naming the split, key, count and first
  example when a float array of any split holds NaN or inf in its valid region
  (padding does not count). A non-finite input is a data error: found here it
  is one line, where in training it would read as divergence (advice to lower
  the learning rate) or as a silent NaN test loss."""
  from research.errors import UserError
  for name in ('train', 'val', 'test'):
    split = getattr(ds, name)
    for key, a in (split or {}).items():
      a = np.asarray(a)
      if not np.issubdtype(a.dtype, np.inexact):
        continue
      bad = ~np.isfinite(a)
      if not bad.any():
        continue
      valid = valid_region(split, key)
      if valid is not None:
        bad &= valid
      count = int(bad.sum())
      if count:
        first = (f' (first at example {int(np.argmax(bad.reshape(len(a), -1).any(1)))})'
                 if a.ndim else '')
        raise UserError(f'{where}: {count} non-finite value{"s" if count != 1 else ""} in '
                        f"{name}[{key!r}]{first}; the data must be finite")


def subsample_train(ds: Dataset, fraction: float, seed: int) -> Dataset:
  """Keeps ``fraction`` of the training split (stratified by label for
  classification, at least one example per class), for learning curves under
  reduced data (``data.train_fraction``). Validation and test are untouched."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'data.train_fraction must be in (0, 1], got {fraction}')
  from research.data import preprocess
  if ds.info.get('task', 'classify') == 'classify':
    _, kept = preprocess.stratified_split(ds.train, fraction, seed + 7919)
  else:
    n = len(ds.train['x'])
    idx = np.sort(np.random.default_rng(seed + 7919).permutation(n)[:max(1, round(fraction * n))])
    kept = {k: v[idx] for k, v in ds.train.items()}
  return dataclasses.replace(ds, train=kept)
