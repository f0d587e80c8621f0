"""Every PNG the lab writes, drawn from small synthetic inputs (no training) and
checked on the matplotlib Figure: titles, axis labels, a legend entry for every
drawn line, step-shaped monotone best-so-far curves, whole-number ticks on axes
that count."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from research.analysis import curves, lineage
from research.experiments import bptt, forecast, lstm_variants, vae_optimizers, vae_tradeoff
from research.sweep import report


# ---------------------------------------------------------------- checks


def _legend_texts(ax) -> set[str]:
  texts = set()
  for leg in [ax.get_legend(), *ax.figure.legends]:
    if leg is not None:
      texts |= {t.get_text() for t in leg.get_texts()}
  return texts


def _errorbar_parts(ax) -> set[int]:
  parts = set()
  for c in ax.containers:
    if isinstance(c, ErrorbarContainer):
      _, caps, bars = c.lines
      parts |= {id(a) for a in (*caps, *bars)}
  return parts


def _is_integer(axis) -> bool:
  lo, hi = axis.get_view_interval()
  ticks = [t for t in axis.get_majorticklocs() if lo - 1e-9 <= t <= hi + 1e-9]
  return len(ticks) > 0 and np.allclose(ticks, np.round(ticks))


def check_figure(fig) -> None:
  """What a reader needs to trust a plot at a glance, on every Axes: a title (or a
  figure title), both axis labels, a legend naming every line that shows data. A
  line may go unnamed only next to a named line of the same colour and style
  (further sweeps of one method)."""
  assert isinstance(fig, Figure), f'a plot function returned {type(fig).__name__}, not a Figure'
  suptitle = fig.get_suptitle()
  assert fig.axes, 'figure without axes'
  for ax in fig.axes:
    where = f'axes {ax.get_title() or suptitle or "?"!r}'
    assert ax.get_title() or suptitle, 'an axes without a title and no figure title'
    assert ax.get_xlabel(), f'{where}: no x label'
    assert ax.get_ylabel(), f'{where}: no y label'
    texts = _legend_texts(ax)
    skip = _errorbar_parts(ax)
    lines = [l for l in ax.get_lines() if id(l) not in skip and len(l.get_xdata())]
    named = {(l.get_color(), l.get_linestyle(), l.get_drawstyle())
             for l in lines if l.get_label() in texts}
    for line in lines:
      label = line.get_label()
      if label.startswith('_'):
        assert (line.get_color(), line.get_linestyle(), line.get_drawstyle()) in named, (
            f'{where}: a line without a legend entry ({label})')
      else:
        assert label in texts, f'{where}: line {label!r} is missing from the legend'
    dots = [c for c in ax.collections if hasattr(c, 'get_offsets') and len(c.get_offsets())
            and type(c).__name__ == 'PathCollection']
    named_colors = {tuple(np.round(c.get_facecolor()[0], 3)) for c in dots
                    if c.get_label() in texts}
    for c in dots:
      assert tuple(np.round(c.get_facecolor()[0], 3)) in named_colors, (
          f'{where}: scatter points whose colour the legend does not explain')


# ---------------------------------------------------------------- synthetic inputs


def _run_dir(tmp_path: Path, name: str, values, members: int = 2) -> Path:
  """A workdir whose metrics.jsonl has ``values[e] + member offset`` at epochs 1..E."""
  wd = tmp_path / name
  wd.mkdir()
  recs = [{'epoch': e + 1, 'step': 2 * (e + 1), 'member': m, 'diverged': False,
           'val/accuracy': v + 0.01 * m, 'val/loss': 2.0 - v, 'train/loss': 2.5 - v}
          for e, v in enumerate(values) for m in range(members)]
  (wd / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in recs) + '\n')
  return wd


def _curves_fig(tmp_path, path=None):
  runs = {'CNN': _run_dir(tmp_path, 'cnn', [0.5, 0.7, 0.8]),
          'MLP': _run_dir(tmp_path, 'mlp', [0.4, 0.5, 0.55]),
          'hybrid': _run_dir(tmp_path, 'hyb', [0.45, 0.6, 0.7])}
  return curves.plot_curves(runs, 'val/accuracy', path, title='validation accuracy', scale=100,
                            references={'CNN': (0.94, 'Greydanus & Kobak 2020'), 'MLP': 0.68,
                                        'hybrid': None},
                            reference_label='published test accuracy')


def _sweep_curves():
  rng = np.random.default_rng(0)
  out = {}
  for m in ('grid', 'random', 'tpe'):
    runs = []
    for _ in range(3):
      v = rng.uniform(1, 2, 6)
      runs.append((np.arange(1, 7), np.cumsum(rng.uniform(1, 5, 6)), np.minimum.accumulate(v)))
    out[m] = runs
  return out


def _study(values, direction='minimize'):
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(direction=direction)
  study.optimize(lambda t: values[t.number], n_trials=len(values))
  return study


def _best_so_far_fig(path=None):
  study = _study([3.0, 2.0, 2.5])
  return report.plot_best_so_far({'random': [report.best_so_far(study)]}, path, 'val/nelbo',
                                 task_kind='elbo')


def _tradeoff_fig(path=None):
  betas = (0.1, 1.0, 10.0)
  table = {(name, beta): [{'test/kl': 10 / beta + i, 'test/recon': 20 + beta + i, 'au': 8 - i}
                          for _ in range(2)]
           for i, name in enumerate(vae_tradeoff.VARIANTS) for beta in betas}
  return vae_tradeoff._plot(table, {'betas': betas}, 16, path)


def _optimizers_fig(path=None):
  b = {'optimizers': ('adam', 'sgd'), 'schedules': ('constant', 'cosine')}
  table = {(o, s): {'test_nelbo': [30.0 + i + j, 31.0 + i], 'lr': 1e-3}
           for i, o in enumerate(b['optimizers']) for j, s in enumerate(b['schedules'])}
  return vae_optimizers._plot_table(table, b, path)


def _variants_fig(path=None):
  variants = ('vanilla', 'NIG', 'CIFG')
  analysis = {'variants': {v: {'all_test_nll': [9.0 + i, 9.5, 10.2, 11.0],
                               'top_test_nll': [9.0 + i, 9.5]} for i, v in enumerate(variants)}}
  return lstm_variants._plot_variants(analysis, variants, path,
                                      reference=(8.45, 'Bai et al. 2018, LSTM'))


def _profiles_fig(path=None):
  T = 12
  prof = {name: np.geomspace(1, 1e-3 * (i + 1), T) for i, name in enumerate(('RNN', 'LSTM'))}
  return bptt._plot_profiles({'at initialisation': prof, 'after training': dict(prof)}, T, path)


def _success_fig(path=None):
  detail = [{'task': task, 'cell': cell, 'clip': clip, 'truncation': '', 'T': T,
             'success_rate': 1.0 / (1 + T / 10)}
            for task in ('adding', 'temporal_order') for cell in bptt.CELLS
            for clip in (0.0, 1.0) for T in (5, 10, 20)
            if not (task == 'temporal_order' and cell == 'lstm')]  # a cell missing in a panel
  return bptt._plot_success(detail, path)


def _forecast_fig(path=None):
  raw = 100 + 10 * np.sin(np.arange(48) / 12 * 2 * np.pi) + np.arange(48)
  info = {'raw': raw, 'horizon': 6, 'origins': {'test': np.arange(36, 42)},
          'bounds': {'test': (36, 48)}}
  fc = {'seasonal naive': raw[30:36], 'LSTM only (member 0)': raw[42:48] + 1,
        'MLP (member 1)': raw[42:48] - 1}
  return forecast.plot_forecasts('airline', info, fc, path)


def _pbt_fig(path=None):
  """Three members over four evaluations; member 2 copies member 0 after epoch 2 (lr x 1.2)
  and member 1 copies member 0 after epoch 3 (lr resampled)."""
  lr = {0: [0.1, 0.1, 0.1, 0.1], 1: [1e-3, 1e-3, 1e-3, 0.02], 2: [0.3, 0.3, 0.12, 0.12]}
  members = [{'member': i, 'final_hparams': {'optim.lr': v[-1]},
              'hparams_trajectory': [{'epoch': e + 1, 'step': 10 * (e + 1), 'optim.lr': x}
                                     for e, x in enumerate(v)]} for i, v in lr.items()]
  moves = [{'epoch': 2, 'step': 20, 'member': 2, 'from': 0, 'hparams': {'optim.lr': 0.12},
            'donor_hparams': {'optim.lr': 0.1}, 'before': {'optim.lr': 0.3},
            'explore': {'optim.lr': 'perturb'}, 'factors': {'optim.lr': 1.2}},
           {'epoch': 3, 'step': 30, 'member': 1, 'from': 0, 'hparams': {'optim.lr': 0.02},
            'donor_hparams': {'optim.lr': 0.1}, 'before': {'optim.lr': 1e-3},
            'explore': {'optim.lr': 'resample'}, 'factors': {}}]
  records = [{'epoch': e + 1, 'member': i, 'val/accuracy': 0.5 + 0.1 * e - 0.1 * i}
             for i in lr for e in range(4)]
  out = {'members': members, 'pbt_lineage': moves, 'select_metric': 'val/accuracy'}
  return lineage.plot_pbt(out, records, path)


# Every plot function of the lab that draws a chart: (its name, how the test draws it).
FIGURES = {
    'research.analysis.curves.plot_curves': _curves_fig,
    'research.sweep.report.plot_best_so_far': lambda tmp_path, path=None: _best_so_far_fig(path),
    'research.experiments.vae_tradeoff._plot': lambda tmp_path, path=None: _tradeoff_fig(path),
    'research.experiments.vae_optimizers._plot_table':
        lambda tmp_path, path=None: _optimizers_fig(path),
    'research.experiments.lstm_variants._plot_variants':
        lambda tmp_path, path=None: _variants_fig(path),
    'research.experiments.bptt._plot_profiles': lambda tmp_path, path=None: _profiles_fig(path),
    'research.experiments.bptt._plot_success': lambda tmp_path, path=None: _success_fig(path),
    'research.experiments.forecast.plot_forecasts':
        lambda tmp_path, path=None: _forecast_fig(path),
    'research.analysis.lineage.plot_pbt': lambda tmp_path, path=None: _pbt_fig(path),
}


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize('name', list(FIGURES))
def test_every_plot_is_titled_labelled_and_explained(name, tmp_path):
  path = tmp_path / 'plot.png'
  fig = FIGURES[name](tmp_path, path)
  check_figure(fig)
  assert path.stat().st_size > 1000  # and it was written


def test_every_plot_function_is_walked():
  """A chart function added to the lab (anything drawing through curves.new_figure)
  must join FIGURES, so the checks above reach it."""
  import research.analysis.curves as m_curves
  import research.experiments.bptt as m_bptt
  found = set()
  for mod in (m_curves, report, vae_tradeoff, vae_optimizers, lstm_variants, m_bptt, forecast,
              lineage):
    for fname, f in inspect.getmembers(mod, inspect.isfunction):
      if f.__module__ == mod.__name__ and fname != 'new_figure' and \
          'new_figure(' in inspect.getsource(f):
        found.add(f'{mod.__name__}.{fname}')
  assert found == set(FIGURES)
  # and no chart is drawn past the helpers any more (generative.py's image grids aside)
  root = Path(__file__).resolve().parents[1] / 'research'
  stray = [str(p.relative_to(root)) for p in root.rglob('*.py')
           if 'plt.subplots(' in p.read_text() and p.name != 'generative.py']
  assert stray == []


def test_best_so_far_is_a_monotone_step_with_whole_trial_ticks():
  fig = _best_so_far_fig()
  ax = fig.axes[0]
  line = next(l for l in ax.get_lines() if not l.get_label().startswith('_'))
  assert line.get_drawstyle().startswith('steps')
  y = np.asarray(line.get_ydata())
  np.testing.assert_array_equal(y, [3.0, 2.0, 2.0])
  assert np.all(np.diff(y) <= 0)
  assert _is_integer(ax.xaxis), ax.xaxis.get_majorticklocs()
  assert 'trial' in ax.get_xlabel()
  assert fig.get_suptitle()
  wall = fig.axes[1].get_lines()[0]
  assert wall.get_drawstyle().startswith('steps')
  assert 'nats/image' in ax.get_ylabel()


def test_best_so_far_with_several_sweeps_is_a_monotone_step_median():
  fig = report.plot_best_so_far(_sweep_curves(), None, 'val/loss', title='three methods')
  ax = fig.axes[0]
  for line in ax.get_lines():
    assert line.get_drawstyle().startswith('steps')
    assert np.all(np.diff(np.asarray(line.get_ydata())) <= 0)
  assert _is_integer(ax.xaxis)
  check_figure(fig)


def test_best_so_far_of_a_maximised_metric_never_falls():
  study = _study([0.5, 0.7, 0.6, 0.9], direction='maximize')
  fig = report.plot_best_so_far({'tpe': [report.best_so_far(study)]}, None, 'val/accuracy')
  y = np.asarray(fig.axes[0].get_lines()[0].get_ydata())
  np.testing.assert_array_equal(y, [0.5, 0.7, 0.7, 0.9])
  assert fig.axes[0].get_ylabel() == 'best validation accuracy (fraction) so far'


def test_best_so_far_without_completed_trials_still_titled():
  fig = report.plot_best_so_far({'grid': [(np.zeros(0), np.zeros(0), np.zeros(0))]}, None,
                                'val/loss')
  assert fig.get_suptitle() and fig.axes[0].get_legend() is None
  check_figure(fig)


def test_curves_published_levels_are_in_the_legend(tmp_path):
  fig = _curves_fig(tmp_path)
  ax = fig.axes[0]
  texts = _legend_texts(ax)
  dotted = [l for l in ax.get_lines() if l.get_linestyle() == ':']
  assert len(dotted) == 2  # CNN and MLP have a reference, the hybrid none
  labels = sorted(l.get_label() for l in dotted)
  assert labels == ['CNN: published test accuracy (Greydanus & Kobak 2020)',
                    'MLP: published test accuracy']
  assert set(labels) <= texts
  assert np.allclose(sorted(l.get_ydata()[0] for l in dotted), [68.0, 94.0])
  cnn = next(l for l in ax.get_lines() if l.get_label() == 'CNN')
  assert dotted[0].get_color() == cnn.get_color() or dotted[1].get_color() == cnn.get_color()
  assert ax.get_ylabel() == 'validation accuracy (%)'
  assert ax.get_xlabel() == 'training step' and _is_integer(ax.xaxis)


def test_metric_labels_carry_units():
  assert curves.metric_label('val/accuracy', 100) == 'validation accuracy (%)'
  assert curves.metric_label('val/accuracy') == 'validation accuracy (fraction)'
  assert curves.metric_label('val/nelbo') == 'validation negative ELBO (nats/image)'
  assert curves.metric_label('val/loss', task_kind='multilabel_sequence') == \
      'validation loss (nats/frame)'
  assert curves.metric_label('train/loss', task_kind='classify') == 'training loss (nats/example)'


def test_count_axes_have_whole_number_ticks():
  for fig, axis in ((_profiles_fig(), 'x'), (_success_fig(), 'x'), (_tradeoff_fig(), 'y'),
                    (_forecast_fig(), 'x')):
    axes = fig.axes if axis == 'x' else fig.axes[2:]
    for ax in axes:
      assert _is_integer(ax.xaxis if axis == 'x' else ax.yaxis), ax.get_title()


def test_success_legend_names_cells_missing_from_the_last_panel():
  fig = _success_fig()
  texts = _legend_texts(fig.axes[-1])
  assert 'LSTM, clip 1' in texts and 'LSTM, no clip' in texts
  assert not any(l.get_label().startswith('LSTM') for l in fig.axes[-1].get_lines())


def test_pbt_plot_draws_every_member_and_every_copy():
  fig = _pbt_fig()
  lr_ax, metric_ax = fig.axes
  assert lr_ax.get_yscale() == 'log' and 'learning rate' in lr_ax.get_ylabel()
  named = {l.get_label(): l for l in lr_ax.get_lines()}
  assert {'member 0', 'member 1', 'member 2'} <= set(named)
  np.testing.assert_allclose(named['member 2'].get_ydata(), [0.3, 0.3, 0.12, 0.12])
  assert named['member 2'].get_drawstyle() == 'steps-pre'
  copies = [l for l in lr_ax.get_lines() if l.get_linestyle() == '--']
  # donor's value -> receiver's new value, at the epoch of the copy
  assert [(list(l.get_xdata()), list(l.get_ydata())) for l in copies] == \
      [([2, 2], [0.1, 0.12]), ([3, 3], [0.1, 0.02])]
  assert len([l for l in metric_ax.get_lines() if l.get_linestyle() == '--']) == 2
  assert _is_integer(metric_ax.xaxis) and metric_ax.get_xlabel() == 'epoch'
