"""Moving digits: a synthetic action-recognition task for per-frame CNN -> LSTM.

Each example is a short clip of ``frames`` frames of ``size`` x ``size``
pixels in which one of scikit-learn's 8x8 digits (values scaled to [0, 1])
moves in a straight line at ``speed`` pixels per frame, in one of 4 (right,
left, down, up) or 8 (and the diagonals) directions, from a random start
chosen so the digit stays inside the frame. In the spirit of Moving MNIST
(Srivastava, Mansimov & Salakhutdinov 2015), but small, offline and labelled:

* ``label='digit'``: 10 classes; any single frame suffices.
* ``label='digit_direction'``: 10 x directions classes; the direction is only
  visible in the *order* of the frames, so a model that pools frames without
  order (the per-frame CNN with a temporal mean) cannot exceed chance on it,
  up to the digit (it cannot tell a clip from the same clip reversed).

The digit images are split first (stratified by class, ``split`` fractions of
the 1797 images), so test clips show digits no training clip showed; clips are
then generated per split from ``seed``. Optional Gaussian pixel ``noise``.

x: float32 (N, frames, size, size), y: int32. ``info['directions']`` holds the
(dy, dx) unit steps, ``info['meta']`` per split the image index, direction and
start of every clip (for tests and plots).
"""
from __future__ import annotations

import ml_collections
import numpy as np

from research import data
from research.data import digits, preprocess

DIRECTIONS = {4: ((0, 1), (0, -1), (1, 0), (-1, 0)),
              8: ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))}
LABELS = ('digit', 'digit_direction')


def render(image: np.ndarray, start: tuple[int, int], step: tuple[int, int], frames: int,
           size: int) -> np.ndarray:
  """One clip (frames, size, size): ``image`` pasted at start + t * step."""
  h, w = image.shape
  clip = np.zeros((frames, size, size), np.float32)
  for t in range(frames):
    r, c = start[0] + t * step[0], start[1] + t * step[1]
    clip[t, r:r + h, c:c + w] = image
  return clip


def make_clips(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator, *,
               frames: int, size: int, speed: int, directions: int, label: str,
               noise: float = 0.0):
  dirs = np.asarray(DIRECTIONS[directions])
  side = images.shape[1]
  travel = (frames - 1) * speed
  room = size - side - travel  # start positions per axis that keep the path inside
  idx = rng.integers(0, len(images), n)
  d = rng.integers(0, directions, n)
  x = np.zeros((n, frames, size, size), np.float32)
  starts = np.zeros((n, 2), np.int64)
  for k in range(n):
    step = dirs[d[k]] * speed
    start = [int(rng.integers(0, room + 1)) + (travel if s < 0 else 0) for s in step]
    starts[k] = start
    x[k] = render(images[idx[k]], tuple(start), tuple(step), frames, size)
  if noise:
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
  y = labels[idx] if label == 'digit' else labels[idx] * directions + d
  return x, y.astype(np.int32), {'image': idx, 'direction': d, 'start': starts}


@data.register('moving_digits')
def load(config: ml_collections.ConfigDict) -> data.Dataset:
  frames = int(config.get('frames', 8))
  size = int(config.get('size', 16))
  speed = int(config.get('speed', 1))
  directions = int(config.get('directions', 4))
  label = config.get('label', 'digit_direction')
  sizes = tuple(int(s) for s in config.get('num_clips', (4000, 1000, 2000)))
  fractions = tuple(float(f) for f in config.get('split', (0.6, 0.2, 0.2)))
  if directions not in DIRECTIONS:
    raise ValueError(f'moving_digits: directions must be 4 or 8, got {directions}')
  if label not in LABELS:
    raise ValueError(f'moving_digits: label must be one of {LABELS}, got {label!r}')
  if size - 8 - (frames - 1) * speed < 0:
    raise ValueError(f'moving_digits: a digit moving {speed} px/frame for {frames} frames '
                     f'does not fit in {size}x{size} frames (needs size >= '
                     f'{8 + (frames - 1) * speed})')
  if len(sizes) != 3 or len(fractions) != 3:
    raise ValueError('moving_digits: num_clips and split need three values (train, val, test)')
  raw, labels = digits._load_raw()
  images = (raw.astype(np.float32) / 16.0).reshape(-1, 8, 8)
  seed = int(config.get('seed', 0))
  # Images: test part first, then val carved from the rest, both stratified by digit.
  everything = {'i': np.arange(len(labels)), 'y': labels}
  rest, test = preprocess.stratified_split(everything, fractions[2], seed)
  train, val = preprocess.stratified_split(rest, fractions[1] / (1 - fractions[2]), seed + 1)
  parts = {'train': train['i'], 'val': val['i'] if val else np.zeros(0, int), 'test': test['i']}
  rng = np.random.default_rng(seed)
  splits, meta = {}, {}
  for (name, idx), n in zip(parts.items(), sizes, strict=True):
    if n == 0 or len(idx) == 0:
      continue
    x, y, m = make_clips(images[idx], labels[idx], n, rng, frames=frames, size=size,
                         speed=speed, directions=directions, label=label,
                         noise=float(config.get('noise', 0.0)))
    m['image'] = idx[m['image']]
    splits[name], meta[name] = {'x': x, 'y': y}, m
  num_classes = 10 if label == 'digit' else 10 * directions
  info = {'task': 'classify', 'num_classes': num_classes, 'input_shape': (frames, size, size),
          'seq_len': frames, 'directions': DIRECTIONS[directions], 'label': label, 'meta': meta}
  return data.Dataset(name='moving_digits', train=splits['train'], val=splits.get('val'),
                      test=splits['test'], info=info)
