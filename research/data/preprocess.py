"""Preprocessing shared by the series loaders: padding, validation carving,
z-normalisation fitted on the training split only.

Splits are dicts of equally long arrays; variable-length series are
right-padded with zeros and carry ``lengths``. Padded steps are zero before and
after normalisation, so models that mask by ``lengths`` see the same values
as a run on the unpadded series.
"""
from __future__ import annotations

import numpy as np

NORMALIZE = ('none', 'per_series', 'global')
EPS = 1e-8


def pad(series: list[np.ndarray], max_len: int) -> dict[str, np.ndarray]:
  """[(T_i, C)] -> {'x': (N, max_len, C) zero-padded, 'lengths': (N,) int32}."""
  channels = series[0].shape[-1]
  x = np.zeros((len(series), max_len, channels), np.float32)
  lengths = np.zeros(len(series), np.int32)
  for i, s in enumerate(series):
    if s.ndim != 2 or s.shape[1] != channels:
      raise ValueError(f'series {i} has shape {s.shape}; expected (T, {channels})')
    x[i, :len(s)] = s
    lengths[i] = len(s)
  return {'x': x, 'lengths': lengths}


def valid_mask(split: dict[str, np.ndarray]) -> np.ndarray:
  """(N, T, 1) bool: True on valid (unpadded) steps."""
  n, t = split['x'].shape[:2]
  lengths = split.get('lengths', np.full(n, t))
  return (np.arange(t)[None, :] < lengths[:, None])[..., None]


def stratified_split(split: dict[str, np.ndarray], fraction: float, seed: int):
  """Carves ``fraction`` of every class (at least one example of each class
  with two or more) into a validation split; returns (train, val or None)."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'data.val_fraction must be in [0, 1), got {fraction}')
  if fraction == 0.0:
    return split, None
  rng = np.random.default_rng(seed)
  val_idx = []
  for c in np.unique(split['y']):
    idx = rng.permutation(np.flatnonzero(split['y'] == c))
    if len(idx) >= 2:
      val_idx.extend(idx[:max(1, int(round(fraction * len(idx))))])
  is_val = np.zeros(len(split['y']), bool)
  is_val[val_idx] = True
  return ({k: v[~is_val] for k, v in split.items()}, {k: v[is_val] for k, v in split.items()})


def normalize(splits: dict[str, dict | None], mode: str) -> dict[str, dict | None]:
  """z-normalises ``x`` of every split. 'per_series': each series and channel
  over its own valid steps. 'global': each channel with the statistics of the
  training split's valid steps, applied unchanged to the other splits."""
  if mode not in NORMALIZE:
    raise ValueError(f'normalize must be one of {NORMALIZE}, got {mode!r}')
  if mode == 'none':
    return splits
  out = {}
  if mode == 'global':
    train = splits['train']
    m = np.broadcast_to(valid_mask(train), train['x'].shape)
    vals = train['x'][m].reshape(-1, train['x'].shape[-1])
    mean, std = vals.mean(0), vals.std(0)
  for name, s in splits.items():
    if s is None:
      out[name] = None
      continue
    mask = valid_mask(s)
    x = s['x']
    if mode == 'per_series':
      n = mask.sum(1, keepdims=True)
      mean = (x * mask).sum(1, keepdims=True) / n
      std = np.sqrt((((x - mean) * mask) ** 2).sum(1, keepdims=True) / n)
    out[name] = {**s, 'x': (np.where(mask, (x - mean) / (std + EPS), 0.0)).astype(np.float32)}
  return out
