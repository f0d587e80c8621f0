"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", 2020/2024).

Generated locally with the ``mnist1d`` package's ``make_dataset``; its
downloader is never used. The default arguments give 4000 train / 1000 test
sequences of length 40; a validation split is carved from train.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from research import data


@data.register('mnist1d')
def load(config: ml_collections.ConfigDict) -> data.Dataset:
  try:
    from mnist1d.data import get_dataset_args, make_dataset
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "Dataset 'mnist1d' needs the `mnist1d` package: pip install mnist1d") from e
  args = get_dataset_args()
  args.num_samples = int(config.num_samples)
  args.train_split = float(config.train_split)
  args.seed = int(config.seed)
  raw = make_dataset(args)
  x = raw['x'].astype(np.float32)
  y = raw['y'].astype(np.int32)
  train, val = data.split_validation(x, y, config.val_fraction, config.seed)
  test = {'x': raw['x_test'].astype(np.float32), 'y': raw['y_test'].astype(np.int32)}
  return data.Dataset(
      name='mnist1d', train=train, val=val, test=test,
      info={'num_classes': 10, 'input_shape': (x.shape[1],)})
