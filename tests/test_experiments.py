"""The studies' analysis code on known inputs, and (slow) their smoke budgets end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from research import results
from research.experiments import bptt, lstm_variants

REPO = Path(__file__).resolve().parents[1]


def fake_trials(seed=0, n=30):
  """Test NLL depends on the learning rate only (plus a variant offset and small noise)."""
  rng = np.random.default_rng(seed)
  out = []
  for k, (variant, offset) in enumerate((('vanilla', 0.0), ('NFG', 1.0), ('CIFG', 0.0))):
    for i, t in enumerate(lstm_variants.sample_trials(n, seed=k)):
      nll = 8.5 + offset + 2.0 * abs(np.log10(t['optim.lr']) + 1.5) + rng.normal(0, 0.01)
      out.append({'variant': variant, 'hidden': 32, 'member': i, **t, 'diverged': False,
                  'val_nll': nll + rng.normal(0, 0.01), 'test_nll': nll,
                  'best_epoch': 5, 'val_curve': [12.0, 10.0, nll]})
  return out


def test_sample_trials_are_deterministic_and_in_range():
  a, b = lstm_variants.sample_trials(50, seed=3), lstm_variants.sample_trials(50, seed=3)
  assert a == b and a != lstm_variants.sample_trials(50, seed=4)
  lr = np.array([t['optim.lr'] for t in a])
  mom = np.array([t['optim.momentum'] for t in a])
  noise = np.array([t['train.input_noise'] for t in a])
  assert lr.min() >= 1e-3 and lr.max() <= 1 and 0 <= mom.min() and mom.max() <= 0.99
  assert 0 <= noise.min() and noise.max() <= 0.3


def test_variant_analysis_selects_by_validation_and_tests_against_vanilla():
  trials = fake_trials(n=50)
  a = lstm_variants.analyse(trials, ('vanilla', 'NFG', 'CIFG'))
  for v in ('vanilla', 'NFG', 'CIFG'):
    mine = sorted((t for t in trials if t['variant'] == v), key=lambda t: t['val_nll'])
    assert a['variants'][v]['top_test_nll'] == [t['test_nll'] for t in mine[:5]]  # 10% of 50
  small = lstm_variants.analyse(fake_trials(n=12), ('vanilla',))
  assert small['variants']['vanilla']['n_top'] == 3  # 10% of 12, but at least 3
  p = stats.ttest_ind(a['variants']['NFG']['top_test_nll'],
                      a['variants']['vanilla']['top_test_nll'], equal_var=False).pvalue
  assert a['variants']['NFG']['welch_p_vs_vanilla'] == pytest.approx(p)
  assert p < 1e-3 and a['variants']['CIFG']['welch_p_vs_vanilla'] > 0.01
  # The target is 5% above vanilla's best validation NLL; NFG (1 nat worse) never reaches it.
  assert a['variants']['vanilla']['epochs_to_target'] == 3
  assert a['variants']['NFG']['epochs_to_target'] is None
  imp = a['importance']
  assert max(imp, key=imp.get) == 'lr' and imp['lr'] > 0.5


def test_variant_analysis_per_hidden_size():
  """With two sizes the overall comparison pools them, and each size gets its own best
  trials and t-test: here NFG is 1 nat worse at 32 units and as good as vanilla at 64."""
  small = fake_trials(n=60)
  wide = [dict(t, hidden=64, test_nll=t['test_nll'] - (t['variant'] == 'NFG'),
               val_nll=t['val_nll'] - (t['variant'] == 'NFG'))
          for t in fake_trials(seed=1, n=60)]
  a = lstm_variants.analyse(small + wide, ('vanilla', 'NFG'))
  assert a['variants']['NFG']['n_trials'] == 120 and a['variants']['NFG']['n_top'] == 12
  assert set(a['by_hidden']) == {32, 64}
  for h, trials in ((32, small), (64, wide)):
    got = a['by_hidden'][h]
    for v in ('vanilla', 'NFG'):
      mine = sorted((t for t in trials if t['variant'] == v), key=lambda t: t['val_nll'])
      assert got[v]['top_test_nll'] == [t['test_nll'] for t in mine[:6]]  # 10% of 60
  assert a['by_hidden'][32]['NFG']['welch_p_vs_vanilla'] < 1e-3
  assert a['by_hidden'][64]['NFG']['welch_p_vs_vanilla'] > 0.01
  assert 'by_hidden' not in lstm_variants.analyse(small, ('vanilla', 'NFG'))
  table = lstm_variants._sizes_table(a, ('vanilla', 'NFG'))
  assert 'hidden 32: best trials' in table and 'hidden 64: best trials' in table


def test_tanh_rnn_gradient_decays_faster_below_radius_one():
  prof = bptt.gradient_profiles(T=30, radii=(0.5, 1.5), batch=20)
  assert set(prof) == {'LSTM', 'GRU', 'tanh RNN, radius 0.5', 'tanh RNN, radius 1.5'}
  decay = {k: g[-1] / g[0] for k, g in prof.items()}  # last step vs first: the longest lag
  assert decay['tanh RNN, radius 0.5'] > 1e4  # vanished over 29 steps
  assert decay['tanh RNN, radius 0.5'] > 100 * decay['tanh RNN, radius 1.5']
  assert all(np.all(np.isfinite(g)) and g.shape == (30,) for g in prof.values())


def _reproduce(tmp_path, *args):
  proc = subprocess.run([sys.executable, 'scripts/reproduce.py', *args, '--budget=smoke'],
                        cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_bptt_smoke_writes_results_and_plots(tmp_path):
  _reproduce(tmp_path, '--experiment=bptt', f'--workdir={tmp_path}')
  out = results.read(tmp_path / 'results.json')
  assert len(out['rows']) == 2 * 7  # (2 tasks x 3 cells + 1 truncated) x {no clip, clip}
  for f in ('report.md', 'gradient_vs_lag.png', 'success.png'):
    assert (tmp_path / f).stat().st_size > 0


@pytest.mark.slow
def test_music_studies_smoke_on_a_generated_file(tmp_path):
  from tests.test_music import write_mat
  write_mat(tmp_path / 'jsb.mat', lengths=((20,) * 16, (20,) * 4, (20,) * 4))
  for exp in ('rnn_music', 'lstm_variants'):
    _reproduce(tmp_path, f'--experiment={exp}', f'--workdir={tmp_path / exp}',
               f'--data_path={tmp_path / "jsb.mat"}')
    out = results.read(tmp_path / exp / 'results.json')
    assert all(np.isfinite(r['value']) for r in out['rows'])
  gates = out['analysis']['gates']  # lstm_variants: each variant's best trial
  assert set(gates) == {'vanilla', 'NIG', 'CIFG'}
  assert gates['NIG']['i']['mean'] == 1.0 and gates['NIG']['i']['frac_above_0.9'] == 1.0
  assert 0 < gates['vanilla']['i']['mean'] < 1
  cfg = json.loads((tmp_path / 'rnn_music' / 'gru_small' / 'config.json').read_text())
  assert cfg['data']['path'] == str(tmp_path / 'jsb.mat')


def test_rnn_music_picks_the_learning_rate_by_validation_only():
  from research.experiments.rnn_music import select_lr
  m = lambda lr, val, test, div=False: {'hparams': {'optim.lr': lr}, 'val/loss': val,
                                        'test/loss': test, 'diverged': div}
  members = [m(1e-3, 9.0, 7.0), m(1e-3, 9.2, 7.1), m(1e-2, 8.8, 9.5), m(1e-2, 8.9, 9.6),
             m(1e-2, float('nan'), float('nan'), div=True)]
  lr, chosen = select_lr(members)
  assert lr == 1e-2 and [c['test/loss'] for c in chosen] == [9.5, 9.6]


@pytest.mark.slow
def test_ucr_smoke_writes_the_table(tmp_path):
  _reproduce(tmp_path, '--experiment=ucr', f'--workdir={tmp_path}')
  out = results.read(tmp_path / 'results.json')
  assert len(out['rows']) == 2 * 3  # 2 sets x 3 models
  assert all(0 <= r['value'] <= 1 for r in out['rows'])
  assert (tmp_path / 'report.md').read_text().count('| ItalyPowerDemand |') == 1


def test_vae_studies_pick_by_validation_and_count_trials_to_target():
  from research.experiments.hpo_compare import trials_to_target
  from research.experiments.vae_optimizers import select_lr
  m = lambda lr, val, test, div=False: {'hparams': {'optim.lr': lr}, 'val/nelbo': val,
                                        'test/nelbo': test, 'diverged': div}
  lr, chosen = select_lr([m(1e-3, 90.0, 80.0), m(1e-3, 91.0, 81.0), m(3e-3, 89.0, 99.0),
                          m(3e-3, 89.5, 98.0), m(3e-3, float('nan'), 0.0, div=True)])
  assert lr == 3e-3 and [c['test/nelbo'] for c in chosen] == [99.0, 98.0]
  assert trials_to_target([120.0, 100.0, 95.0, 95.0], 99.0) == 3
  assert trials_to_target([120.0, 100.0], 99.0) is None


@pytest.mark.slow
def test_vae_studies_smoke(tmp_path):
  for exp, files in (('vae_optimizers', ('curves.png', 'samples.png', 'traversals.png')),
                     ('vae_tradeoff', ('tradeoff.png',)),
                     ('hpo_compare', ('best_so_far.png',))):
    _reproduce(tmp_path, f'--experiment={exp}', f'--workdir={tmp_path / exp}')
    out = results.read(tmp_path / exp / 'results.json')
    assert out['rows'] and all(np.isfinite(r['value']) for r in out['rows'])
    for f in ('report.md',) + files:
      assert (tmp_path / exp / f).stat().st_size > 0
  iwae = results.read(tmp_path / 'vae_optimizers' / 'results.json')['iwae']
  assert iwae['monotone'] and iwae['k'] == [1, 5, 50]


@pytest.mark.slow
def test_issue4_studies_smoke(tmp_path):
  for exp, n_rows in (('forecast', 2 + 2 * 3), ('text', 1 + 3)):
    _reproduce(tmp_path, f'--experiment={exp}', f'--workdir={tmp_path / exp}')
    out = results.read(tmp_path / exp / 'results.json')
    assert len(out['rows']) == n_rows and all(np.isfinite(r['value']) for r in out['rows'])
  report = (tmp_path / 'text' / 'report.md').read_text()
  assert report.count('temperature 0.5') == 3 and report.count('temperature 1.0') == 3
  from research.experiments import hybrid_ablation
  out = hybrid_ablation.run(tmp_path / 'ablation', 'smoke', datasets=['mnist1d'])
  assert len(out['rows']) == 4 * 2  # 4 models x 2 training fractions


def test_trained_gradient_profile_uses_the_best_members_trained_parameters(tmp_path):
  from research.experiments.common import train_variant, variant_config
  over = {'data.num_train': 200, 'data.num_val': 100, 'data.num_test': 50, 'train.epochs': 2,
          'train.patience': 0, 'population': 'seed=0,1 optim.lr=0.01,0.0001'}
  arg = 'task=temporal_order,cell=gru,T=20,hidden=8'
  out = train_variant('configs/synthetic.py', arg, tmp_path, **over)
  config = variant_config('configs/synthetic.py', arg, **over)
  after, chosen = bptt.trained_profiles({'GRU': (config, tmp_path, out['members'])}, batch=20)
  best = min(out['members'], key=lambda m: m['val/loss'])
  assert chosen['GRU']['member'] == best['member']
  init = bptt._carry_profile(config.copy_and_resolve_references(), 20)
  g = after['GRU']
  assert g.shape == (20,) and np.all(np.isfinite(g)) and np.all(g > 0)
  assert not np.allclose(g, init, rtol=1e-3)  # the trained parameters were used
  jac = bptt.jacobian_norms({'GRU': (config, tmp_path, out['members'])}, chosen)
  assert jac['GRU']['init'].shape == jac['GRU']['trained'].shape == (20,)
  assert not np.allclose(jac['GRU']['init'], jac['GRU']['trained'])
