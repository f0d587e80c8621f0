"""Forecasting: a conv -> LSTM hybrid vs an LSTM vs an MLP on a bundled series,
against the seasonal-naive baseline.

Each model is trained on sliding windows of the log-transformed, train-
normalised series (configs/forecast.py), several seeds as one population; the
checkpoint with the lowest validation MSE is kept. Test forecasts (every
origin whose horizon lies in the test period) are mapped back to the series'
units and scored with MAE and RMSE, next to the seasonal-naive forecast
(Hyndman & Athanasopoulos, FPP3, section 5.2), which is hard to beat on a
series as short and regular as the airline data: the point of the table is
to say honestly whether a network does.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from research import results
from research.data import forecast as fc
from research.experiments import register
from research.experiments.common import train_variant, variant_config, write_report
from research.train import load_trained, member_variables

MODELS = {'conv_lstm': 'Conv -> LSTM', 'lstm': 'LSTM only', 'mlp': 'MLP'}
BUDGETS = {'full': dict(series=('airline',), epochs=300, quick=False),
           'smoke': dict(series=('airline',), epochs=4, quick=True)}


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  err = np.asarray(pred, np.float64) - truth
  return {'mae': float(np.abs(err).mean()), 'rmse': float(np.sqrt((err ** 2).mean()))}


def predict(config, workdir: Path):
  """Test forecasts of every member in the series' units: (members, N, horizon)."""
  trainer, ds, members, state = load_trained(config, workdir)
  apply = jax.jit(lambda v, x: trainer.model.apply(v, x))
  out = [np.asarray(apply(member_variables(state, i), ds.test['x'])).reshape(ds.test['y'].shape)
         for i in range(len(members))]
  return ds, np.stack([fc.to_original(o, ds.info, 'test') for o in out])


# Axis labels of the plotted series: (time step, value), in the series' units.
SERIES_AXES = {'airline': ('month (0 = January 1949)', 'passengers (thousands per month)'),
               'lynx': ('year (0 = 1821)', 'lynx trapped per year'),
               'shampoo': ('month (0 = first month)', 'shampoo sales per month')}


def plot_forecasts(series: str, info: dict, forecasts: dict[str, np.ndarray],
                   path: Path | None = None):
  """The whole series, the start of its test period and each forecast of the last
  test window (``forecasts``: legend label -> values). Returns the Figure."""
  from research.analysis import curves
  fig, ax = curves.new_figure(figsize=(8, 4))
  ax.plot(np.arange(len(info['raw'])), info['raw'], color='k', lw=1, label=f'{series} series')
  t = info['origins']['test'][-1] + np.arange(info['horizon'])
  for label, values in forecasts.items():
    ax.plot(t, values, 'k--' if label == 'seasonal naive' else '-', label=label)
  ax.axvline(info['bounds']['test'][0], color='grey', lw=0.5, label='test period starts')
  xlabel, ylabel = SERIES_AXES.get(series, ('time step', series))
  ax.set_xlabel(xlabel)
  curves.integer_ticks(ax.xaxis)
  ax.set_ylabel(ylabel)
  ax.set_title(f'{series}: last test window ({info["horizon"]}-step forecast)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return curves.save(fig, path, dpi=100)


@register('forecast')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  rows, extra, plots = [], {}, {}
  for series in b['series']:
    truth = naive = None
    forecasts = {}  # legend label -> the last test window's forecast, for the plot
    for model, label in MODELS.items():
      arg = f'model={model},series={series},epochs={b["epochs"]}' + (',quick' if b['quick'] else '')
      over = {'train.progress': False}
      config = variant_config('configs/forecast.py', arg, **over)
      run_dir = workdir / f'{series}_{model}'
      out = train_variant('configs/forecast.py', arg, run_dir, **over)
      ds, pred = predict(config, run_dir)
      info = ds.info
      if truth is None:
        truth = fc.to_original(ds.test['y'], info, 'test')
        naive = info['seasonal_naive']['test']
        rows.append(results.row(f'{series} seasonal naive', 'test_mae', [scores(naive, truth)['mae']]))
        rows.append(results.row(f'{series} seasonal naive', 'test_rmse',
                                [scores(naive, truth)['rmse']]))
        forecasts['seasonal naive'] = naive[-1]
      ok = [i for i, m in enumerate(out['members']) if not m['diverged']]
      s = [scores(pred[i], truth) for i in ok]
      for metric in ('mae', 'rmse'):
        rows.append(results.row(f'{series} {label}', f'test_{metric}', [x[metric] for x in s]))
      extra[f'{series} {label}'] = {'num_params': out['num_params'],
                                    'train_time_s': out['train_time_s']}
      forecasts[f'{label} (member {ok[0]})'] = pred[ok[0], -1]
    plot_forecasts(series, info, forecasts, workdir / f'{series}_forecast.png')
    plots[f'{series} forecasts'] = f'{series}_forecast.png'
  wall = time.time() - t0
  out = results.write(workdir / 'results.json', 'forecast', rows, budget=budget, wall_time_s=wall,
                      runs=extra)
  cost = ['| model | parameters | train time (s) |', '|---|---|---|']
  cost += [f'| {n} | {e["num_params"]} | {e["train_time_s"]:.0f} |' for n, e in extra.items()]
  write_report(workdir, 'Forecasting: hybrid vs LSTM vs MLP vs seasonal naive',
               f'Budget `{budget}`. MAE and RMSE in the series\' units over every test origin '
               '(rolling, stride 1), mean ± std over seeds; lower is better.',
               [results.markdown_table(rows, digits=1), '\n'.join(cost)], plots, wall)
  print(results.markdown_table(rows, digits=1))
  return out
