"""Univariate forecasting series bundled with sktime, cut into sliding windows.

``data.series``: ``airline`` (Box & Jenkins' monthly airline passengers,
1949-1960, 144 points, season 12), ``lynx`` (annual Canadian lynx trappings,
1821-1934, 114 points, a ~10-year cycle) or ``shampoo_sales`` (36 months).
They are read from the CSV files inside sktime's wheel; nothing is downloaded.

The series is split in time: the last ``test_size`` points are the test
period, the ``val_size`` before them validation, the rest training (for
airline the classic hold-out is the last 24 months, 1959-1960). A window is
``window`` past values (x, (N, window, 1)) and the next ``horizon`` values
(y, (N, horizon)); a window belongs to the split that holds its *targets*
(its inputs may reach back into earlier splits, as a forecaster's would), one
window per forecast origin (rolling origin, stride 1).

Values are first transformed (``transform='log'`` or ``'none'``), then
z-normalised with the mean and std of the training period only. With
``window_norm='last'`` (the default) each window is then expressed relative to
its last input value (subtracted from inputs and targets), so a network
forecasts changes, not levels: a trending series leaves the training range in
the test period, where a network fed levels saturates (on airline, the
LSTM's test MAE was ~3x seasonal naive's with levels). `to_original` undoes
all of it, so metrics are reported in the series' own units. ``info['seasonal_naive']`` holds, per
split, the forecasts of the seasonal-naive baseline (y_{t+h} = y_{t+h-m k},
the last observed value of the same season, Hyndman & Athanasopoulos,
"Forecasting: Principles and Practice", 3rd ed., section 5.2) in original
units, aligned with ``y``.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from research import data

SERIES = {'airline': ('load_airline', 12), 'lynx': ('load_lynx', 10),
          'shampoo_sales': ('load_shampoo_sales', 12)}
TRANSFORMS = ('none', 'log')


def load_series(name: str) -> np.ndarray:
  if name not in SERIES:
    raise ValueError(f'forecast: unknown series {name!r}; known: {sorted(SERIES)}')
  try:
    import sktime.datasets
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"Series {name!r} ships with sktime: pip install 'sktime>=0.30,<2'") from e
  return np.asarray(getattr(sktime.datasets, SERIES[name][0])(), np.float64)


def to_original(z: np.ndarray, info: dict, split: str | None = None) -> np.ndarray:
  """Model-space values (N, horizon) of ``split``'s windows (or inputs (N, window))
  back to the series' own units."""
  z = np.asarray(z, np.float64)
  if info['window_norm'] == 'last':
    if split is None:
      raise ValueError("to_original: window_norm='last' needs the split, for its offsets")
    z = z + info['offsets'][split].reshape((-1,) + (1,) * (z.ndim - 1))
  v = z * info['std'] + info['mean']
  return np.exp(v) if info['transform'] == 'log' else v


def windows(values: np.ndarray, window: int, horizon: int, first_target: int, last_target: int):
  """Windows whose targets lie in [first_target, last_target); x (N, window), y (N, horizon),
  and the index of each window's first target."""
  starts = np.arange(max(first_target, window), last_target - horizon + 1)
  x = np.stack([values[t - window:t] for t in starts]) if len(starts) else np.zeros((0, window))
  y = np.stack([values[t:t + horizon] for t in starts]) if len(starts) else np.zeros((0, horizon))
  return x, y, starts


@data.register('forecast')
def load(config: ml_collections.ConfigDict) -> data.Dataset:
  name = config.get('series', 'airline')
  window = int(config.get('window', 24))
  horizon = int(config.get('horizon', 12))
  transform = config.get('transform', 'log')
  window_norm = config.get('window_norm', 'last')
  if window_norm not in ('none', 'last'):
    raise ValueError(f"forecast: window_norm must be 'none' or 'last', got {window_norm!r}")
  if transform not in TRANSFORMS:
    raise ValueError(f'forecast: transform must be one of {TRANSFORMS}, got {transform!r}')
  raw = load_series(name)
  season = int(config.get('season', SERIES[name][1]))
  test_size = int(config.get('test_size', 2 * horizon))
  val_size = int(config.get('val_size', 2 * horizon))
  n = len(raw)
  t_val, t_test = n - test_size - val_size, n - test_size
  if test_size < horizon or (val_size and val_size < horizon):
    raise ValueError(f'forecast: test_size ({test_size}) and val_size ({val_size}, or 0) '
                     f'must hold at least one horizon ({horizon})')
  if t_val - window - horizon + 1 < 1:
    raise ValueError(f'forecast: {name} has {n} points; window {window} + horizon {horizon} '
                     f'leaves no training window before the last {test_size + val_size}')
  if window < season * ((horizon - 1) // season + 1):
    raise ValueError(f'forecast: window {window} is shorter than the seasonal-naive lag '
                     f'{season * ((horizon - 1) // season + 1)} (season {season}, horizon {horizon})')
  if transform == 'log' and raw.min() <= 0:
    raise ValueError(f'forecast: log transform of {name}, which has values <= 0')
  v = np.log(raw) if transform == 'log' else raw
  mean, std = float(v[:t_val].mean()), float(v[:t_val].std())
  z = ((v - mean) / std).astype(np.float32)
  bounds = {'train': (0, t_val), 'val': (t_val, t_test), 'test': (t_test, n)}
  splits, naive, origins, offsets = {}, {}, {}, {}
  for split, (a, b) in bounds.items():
    if b - a < horizon:
      continue
    x, y, starts = windows(z, window, horizon, a, b)
    offsets[split] = x[:, -1].copy() if window_norm == 'last' else np.zeros(len(x), np.float32)
    splits[split] = {'x': (x - offsets[split][:, None])[..., None],
                     'y': y - offsets[split][:, None]}
    h = np.arange(horizon)
    lag = season * ((h // season) + 1)  # the same season, in the last observed cycle
    naive[split] = raw[starts[:, None] + h[None, :] - lag[None, :]]
    origins[split] = starts
  info = {'task': 'regress', 'num_outputs': horizon, 'series': name, 'season': season,
          'window': window, 'horizon': horizon, 'transform': transform, 'mean': mean,
          'window_norm': window_norm, 'offsets': offsets,
          'std': std, 'raw': raw, 'bounds': bounds, 'origins': origins,
          'seasonal_naive': naive, 'input_shape': (window, 1)}
  return data.Dataset(name=f'forecast_{name}', train=splits['train'], val=splits.get('val'),
                      test=splits['test'], info=info)
