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
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from research import cli, results  # noqa: E402
from research.data import forecast as fc  # noqa: E402
from research.experiments.common import write_report  # noqa: E402
from research.train import load_trained, member_variables, train_and_evaluate  # noqa: E402

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


def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  rows, extra, plots = [], {}, {}
  for series in b['series']:
    truth = naive = None
    fig, ax = plt.subplots(figsize=(8, 4))
    for model, label in MODELS.items():
      arg = f'model={model},series={series},epochs={b["epochs"]}' + (',quick' if b['quick'] else '')
      config = cli.load_config('configs/forecast.py', arg)
      config.train.progress = False
      run_dir = workdir / f'{series}_{model}'
      out = train_and_evaluate(config, run_dir)
      ds, pred = predict(config, run_dir)
      info = ds.info
      if truth is None:
        truth = fc.to_original(ds.test['y'], info, 'test')
        naive = info['seasonal_naive']['test']
        rows.append(results.row(f'{series} seasonal naive', 'test_mae', [scores(naive, truth)['mae']]))
        rows.append(results.row(f'{series} seasonal naive', 'test_rmse',
                                [scores(naive, truth)['rmse']]))
        t = np.arange(len(info['raw']))
        ax.plot(t, info['raw'], color='k', lw=1, label='series')
        o = info['origins']['test'][-1]
        ax.plot(o + np.arange(info['horizon']), naive[-1], 'k--', label='seasonal naive')
      ok = [i for i, m in enumerate(out['members']) if not m['diverged']]
      s = [scores(pred[i], truth) for i in ok]
      for metric in ('mae', 'rmse'):
        rows.append(results.row(f'{series} {label}', f'test_{metric}', [x[metric] for x in s]))
      extra[f'{series} {label}'] = {'num_params': out['num_params'],
                                    'train_time_s': out['train_time_s']}
      o = info['origins']['test'][-1]
      ax.plot(o + np.arange(info['horizon']), pred[ok[0], -1], label=f'{label} (seed 0)')
    ax.axvline(info['bounds']['test'][0], color='grey', lw=0.5)
    ax.set_title(f'{series}: last test window ({info["horizon"]}-step forecast)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / f'{series}_forecast.png', dpi=100)
    plt.close(fig)
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
