"""Sequential (and permuted-sequential) 8x8 digits.

A small, offline stand-in for pixel-by-pixel MNIST (Le, Jaitly & Hinton 2015,
"A Simple Way to Initialize Recurrent Networks of Rectified Linear Units",
Section 4.2, which also introduced the permuted variant). The images are
scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten
Digits" test set (Alpaydin & Kaynak 1998; 1797 images of 8x8 pixels with
values 0..16, `sklearn.datasets.load_digits`), read from the package itself,
never downloaded.

Config keys (all optional, read with ``config.get``):

* ``seed`` (0): shuffles the images before they are cut into splits.
* ``split`` ((0.6, 0.2, 0.2)): train/val/test fractions; train and val are
  ``round(fraction * N)`` and test gets the rest (val may be 0 -> None).
* ``mode`` ('pixel'): 'pixel' gives x of shape (N, 64, 1), one pixel per
  step in raster order; 'row' gives (N, 8, 8), one image row per step.
* ``permute`` (False): apply one fixed permutation of the time steps,
  drawn with ``np.random.default_rng(perm_seed).permutation(seq_len)``, to
  every example (the permuted-sequential task); stored as
  ``info['permutation']`` (``x_permuted[:, t] = x[:, perm[t]]``).
* ``perm_seed`` (0).

Pixels are scaled to [0, 1] by dividing by 16; x float32, y int32 in 0..9.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from research import data

MODES = {'pixel': (64, 1), 'row': (8, 8)}


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Dataset 'seq_digits' needs scikit-learn (for its bundled 8x8 digits): "
        'pip install scikit-learn') from e
  images, labels = load_digits(return_X_y=True)
  return images, labels


@data.register('seq_digits')
def load(config: ml_collections.ConfigDict) -> data.Dataset:
  mode = config.get('mode', 'pixel')
  if mode not in MODES:
    raise ValueError(f'seq_digits: unknown mode {mode!r}; known: {sorted(MODES)}')
  fractions = tuple(float(f) for f in config.get('split', (0.6, 0.2, 0.2)))
  if (len(fractions) != 3 or min(fractions) < 0
      or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] == 0):
    raise ValueError(
        'seq_digits: split must be three non-negative fractions summing to 1 '
        f'with a non-empty train part, got {fractions}')

  images, labels = _load_raw()
  seq_len, features = MODES[mode]
  x = (images.astype(np.float32) / 16.0).reshape(-1, seq_len, features)
  y = labels.astype(np.int32)

  n = len(x)
  order = np.random.default_rng(int(config.get('seed', 0))).permutation(n)
  n_train = int(round(fractions[0] * n))
  n_val = int(round(fractions[1] * n))
  if n_train + n_val >= n:
    raise ValueError(f'seq_digits: split {fractions} leaves no test examples')
  idx = {'train': order[:n_train], 'val': order[n_train:n_train + n_val],
         'test': order[n_train + n_val:]}

  info = {'task': 'classify', 'num_classes': 10, 'seq_len': seq_len,
          'input_shape': (seq_len, features), 'mode': mode}
  if config.get('permute', False):
    perm = np.random.default_rng(int(config.get('perm_seed', 0))).permutation(seq_len)
    x = x[:, perm]
    info['permutation'] = perm

  splits = {k: {'x': np.ascontiguousarray(x[v]), 'y': y[v]} for k, v in idx.items()}
  return data.Dataset(
      name=config.name, train=splits['train'],
      val=splits['val'] if n_val > 0 else None, test=splits['test'], info=info)


@data.register('digits_images')
def load_images(config: ml_collections.ConfigDict) -> data.Dataset:
  """The 8x8 digits as images for density models (Tomczak's digits protocol).

  Tomczak ("Deep Generative Modeling", 2022, and the book's code) models
  sklearn's digits with 17 grey levels (0..16) per pixel and splits them in
  the package's order: the first 1000 images train, the next 350 validate,
  the last 447 test. x is (N, 8, 8, 1) float32 holding the levels 0..16
  (each likelihood maps them, see `research.models.vae`); y the digit labels.

  Config keys (optional): ``split`` ('tomczak', the default; or 'shuffled'
  with ``seed``: a permutation before the same 1000/350/447 cut) and
  ``num_train`` (keep only the first n training images; 0 = all).
  """
  images, labels = _load_raw()
  x = images.astype(np.float32).reshape(-1, 8, 8, 1)
  y = labels.astype(np.int32)
  split = config.get('split', 'tomczak')
  if split == 'shuffled':
    order = np.random.default_rng(int(config.get('seed', 0))).permutation(len(x))
    x, y = x[order], y[order]
  elif split != 'tomczak':
    raise ValueError(f"digits_images: split must be 'tomczak' or 'shuffled', got {split!r}")
  n_train = int(config.get('num_train', 0)) or 1000
  if not 0 < n_train <= 1000:
    raise ValueError(f'digits_images: num_train must be in 1..1000, got {n_train}')
  parts = {'train': slice(0, n_train), 'val': slice(1000, 1350), 'test': slice(1350, None)}
  splits = {k: {'x': np.ascontiguousarray(x[s]), 'y': y[s]} for k, s in parts.items()}
  info = {'task': 'elbo', 'image_shape': (8, 8, 1), 'num_levels': 17,
          'input_shape': (8, 8, 1)}
  return data.Dataset(name=config.name, train=splits['train'], val=splits['val'],
                      test=splits['test'], info=info)
