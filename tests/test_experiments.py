"""The studies' analysis code on known inputs, and (slow) their smoke budgets end to end."""
import json

import numpy as np
import pytest
from scipy import stats

from research import results
from research.analysis import curves
from research.experiments import bptt, lstm_variants
from tests.helpers import run_script


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


def test_epochs_to_target_counts_epochs_when_evaluating_every_few_epochs():
  """A curve evaluated at epochs 10, 20, 30 reaches the target at epoch 30, not at
  its third evaluation."""
  trials = [dict(t, val_epochs=[10, 20, 30]) for t in fake_trials(n=50)]
  a = lstm_variants.analyse(trials, ('vanilla', 'NFG', 'CIFG'), importance=False)
  assert a['variants']['vanilla']['epochs_to_target'] == 30


def _jsb_file(tmp_path):
  from tests.test_music import write_mat
  path = tmp_path / 'jsb.mat'
  if not path.exists():
    write_mat(path, lengths=((20,) * 16, (20,) * 4, (20,) * 4))
  return path


def _population_members(population):
  """The members of a zip population string: one dict of key -> value string each."""
  cols = {k: v.split(',') for k, v in (p.split('=') for p in population.split())}
  n = len(cols['seed'])
  assert all(len(v) == n for v in cols.values())
  return [{k: v[i] for k, v in cols.items()} for i in range(n)]


def _planned_lstm_runs(tmp_path, monkeypatch, budget, eval_epochs=(1, 2), programs=None):
  """lstm_variants.run's training calls, with training replaced (every member writes
  val/loss at ``eval_epochs``) and the run stopped before the analysis: the calls and
  the trials handed to `analyse`. ``programs``: the grouping to use instead of the
  cost model's."""
  calls, seen = [], {}

  class Stop(Exception):
    pass

  def fake_train(config_file, arg, workdir, **over):
    calls.append((arg, over))
    members = _population_members(over['population'])
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / 'metrics.jsonl', 'w') as f:
      for e in eval_epochs:
        for i in range(len(members)):
          f.write(json.dumps({'epoch': e, 'step': 10 * e, 'member': i,
                              'val/loss': 10.0 - e}) + '\n')
    return {'members': [{'member': i, 'hparams': {k: float(m[k]) for k in lstm_variants.HPARAMS},
                         'diverged': False, 'val/loss': 9.0, 'test/loss': 9.0, 'best_epoch': 1}
                        for i, m in enumerate(members)]}

  def stop(trials, variants, **kw):
    seen['trials'] = trials
    raise Stop

  monkeypatch.setattr(lstm_variants, 'train_variant', fake_train)
  monkeypatch.setattr(lstm_variants, 'analyse', stop)
  if programs is not None:
    monkeypatch.setattr(lstm_variants, 'plan_programs', lambda b, data_path=None, max_programs=0: programs)
  with pytest.raises(Stop):
    lstm_variants.run(tmp_path / budget, budget, data_path=str(_jsb_file(tmp_path)))
  return calls, seen['trials']


def test_lstm_variants_draws_and_seeds_of_a_variant_do_not_depend_on_the_budget(
    tmp_path, monkeypatch):
  """A variant's sampled trials and its members' seeds come from the same index (its
  place in VARIANTS): the same in every budget, so the smoke budget's CIFG draws its
  trials and seeds as the full budget's CIFG does. The full budget's numbers are those
  it always had (1000 * size index + 100 * variant index), whichever program a
  (variant, hidden) kind trains in."""
  for budget in ('smoke', 'full'):
    b = lstm_variants.BUDGETS[budget]
    kinds = [(v, h) for h in b['hidden'] for v in b['variants']]
    # full: both sizes of a variant share a program, as a mixed one would
    programs = None if budget == 'smoke' else [[k for k in kinds if k[0] == v]
                                               for v in b['variants']]
    calls, trials = _planned_lstm_runs(tmp_path, monkeypatch, budget, programs=programs)
    got = {}
    for arg, over in calls:
      assert over['population_mode'] == 'zip' and over['optim.name'] == 'sgd'
      assert over['train.epochs'] == b['epochs'] and over['train.patience'] == b['patience']
      for m in _population_members(over['population']):
        kind = (m['model.rnn.cell_options.variant'], int(m['model.rnn.hidden']))
        got.setdefault(kind, []).append(m)
      assert f'hidden={max(int(m["model.rnn.hidden"]) for m in _population_members(over["population"]))}' in arg
    assert sorted(got) == sorted(kinds)
    for (v, hidden), members in got.items():
      h, k = b['hidden'].index(hidden), lstm_variants.VARIANTS.index(v)
      assert [int(m['seed']) for m in members] == [1000 * h + 100 * k + i
                                                   for i in range(b['trials'])], (budget, v)
      drawn = lstm_variants.sample_trials(b['trials'], seed=100 * h + k)
      assert [m['optim.lr'] for m in members] == [f'{t["optim.lr"]:.6g}' for t in drawn]
      assert [m['train.input_noise'] for m in members] == \
          [f'{t["train.input_noise"]:.6g}' for t in drawn]
    # each trial knows its kind, its program and its place there
    assert len(trials) == len(kinds) * b['trials']
    for t in trials:
      arg, over = calls[t['program']]
      m = _population_members(over['population'])[t['member']]
      assert (m['model.rnn.cell_options.variant'], int(m['model.rnn.hidden'])) == \
          (t['variant'], t['hidden'])


def test_lstm_variants_smoke_plans(tmp_path):
  """Default: one program of every kind (trained with train.groups=kinds). A cap: the
  cost model's padded programs, every kind in exactly one, fewer programs than kinds,
  vanilla and NOAF (the same parameters: merging them pads nothing) in one. (On this
  test's short sequences the padding of NIG and CIFG to four gates costs less than a
  program, so on CPU all four kinds share one; `program_groups`' own tests check the
  trade-off.) A cap of at least the number of kinds: each kind alone."""
  b = lstm_variants.BUDGETS['smoke']
  data = str(_jsb_file(tmp_path))
  kinds = [(v, h) for h in b['hidden'] for v in b['variants']]
  assert lstm_variants.plan_programs(b, data) == [kinds]
  programs = lstm_variants.plan_programs(b, data, max_programs=3)
  assert sorted(k for p in programs for k in p) == sorted(kinds)
  assert len(programs) < len(kinds)
  assert any({('vanilla', 16), ('NOAF', 16)} <= set(p) for p in programs)
  assert lstm_variants.plan_programs(b, data, max_programs=len(kinds)) == [[k] for k in kinds]


def test_lstm_variants_curves_keep_the_evaluated_epochs(tmp_path, monkeypatch):
  """Evaluations every 5 epochs: each trial's validation curve carries epochs 5, 10, 15."""
  _, trials = _planned_lstm_runs(tmp_path, monkeypatch, 'smoke', eval_epochs=(5, 10, 15))
  assert trials and all(t['val_epochs'] == [5, 10, 15] for t in trials)
  assert all(t['val_curve'] == [5.0, 0.0, -5.0] for t in trials)


def test_lstm_variants_curve_dirs_hold_each_variants_members(tmp_path):
  """The per-variant curves are the records of that variant's trials, from whichever
  program trained them."""
  for k, n in ((0, 4), (1, 2)):
    d = tmp_path / f'program_{k}'
    d.mkdir()
    (d / 'metrics.jsonl').write_text(''.join(
        json.dumps({'epoch': 1, 'step': 5, 'member': i, 'val/loss': 10.0 * k + i}) + '\n'
        for i in range(n)))
  configs = {k: (None, tmp_path / f'program_{k}') for k in (0, 1)}
  trials = [{'variant': v, 'hidden': 16, 'program': p, 'member': i}
            for v, p, i in (('vanilla', 0, 0), ('vanilla', 0, 1), ('NOAF', 0, 2),
                            ('NOAF', 0, 3), ('NIG', 1, 0), ('NIG', 1, 1))]
  dirs = lstm_variants._variant_curve_dirs(tmp_path, trials, configs, 16)
  assert list(dirs) == ['vanilla', 'NOAF', 'NIG']
  vals = {v: [r['val/loss'] for r in curves.read_metrics(d)] for v, d in dirs.items()}
  assert vals == {'vanilla': [0.0, 1.0], 'NOAF': [2.0, 3.0], 'NIG': [10.0, 11.0]}


def test_adding_table_when_every_member_of_a_variant_diverges(tmp_path, monkeypatch):
  """No mean over an empty list (a NaN and a RuntimeWarning): the row has n = 0 and the
  table says that every member diverged."""
  import warnings

  def fake_train(config_file, arg, workdir, **over):
    diverged = 'variant=NIG' in arg
    return {'members': [{'member': i, 'diverged': diverged,
                         'test/mse': float('nan') if diverged else 0.01 * (i + 1),
                         'test/within_tol': 0.0 if diverged else 1.0} for i in range(2)]}

  monkeypatch.setattr(lstm_variants, 'train_variant', fake_train)
  spec = dict(T=20, num_train=100, epochs=1, seeds='0,1')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    out = lstm_variants._adding_runs(tmp_path, spec)
  assert out['rows']['adding T=20 LSTM NIG'] == []
  line = next(l for l in out['table'].splitlines() if l.startswith('| NIG |'))
  assert 'nan' not in line and 'diverged' in line
  assert '0.0150 ± 0.0071' in out['table']  # vanilla: mean ± sample std of 0.01, 0.02


def test_tanh_rnn_gradient_decays_faster_below_radius_one():
  prof = bptt.gradient_profiles(T=30, radii=(0.5, 1.5), batch=20)
  assert set(prof) == {'LSTM', 'GRU', 'tanh RNN, radius 0.5', 'tanh RNN, radius 1.5'}
  decay = {k: g[-1] / g[0] for k, g in prof.items()}  # last step vs first: the longest lag
  assert decay['tanh RNN, radius 0.5'] > 1e4  # vanished over 29 steps
  assert decay['tanh RNN, radius 0.5'] > 100 * decay['tanh RNN, radius 1.5']
  assert all(np.all(np.isfinite(g)) and g.shape == (30,) for g in prof.values())


def _reproduce(tmp_path, *args):
  proc = run_script('reproduce.py', *args, '--budget=smoke', timeout=900)
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
  # lstm_variants: 4 (variant, hidden) kinds in fewer programs (on these short sequences,
  # one), vanilla and NOAF mixed in one of them
  n = out['num_programs']
  assert out['num_kinds'] == 4 and n < 4 and n == len(out['programs'])
  assert any({'vanilla', 'NOAF'} <= {k['variant'] for k in p['kinds']} for p in out['programs'])
  assert sum(p['members'] for p in out['programs']) == len(out['trials']) == 16
  assert all((tmp_path / 'lstm_variants' / p['workdir'] / 'results.json').exists()
             for p in out['programs'])
  assert f'trained as {n} program(s)' in (tmp_path / 'lstm_variants' / 'report.md').read_text()
  gates = out['analysis']['gates']  # lstm_variants: each variant's best trial
  assert set(gates) == {'vanilla', 'NIG', 'NOAF', 'CIFG'}
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


def test_hpo_compare_reports_programs_member_steps_and_wall_time(tmp_path, monkeypatch):
  """Programs per sweep come from the sweep summary's ``programs`` (a sweep from before
  programs were counted: its populations), member-steps from ``member_steps``; both, and
  the sweeps' total wall time, reach results.json and the report."""
  from research.experiments import hpo_compare
  calls = []

  def fake_sweep(config, space, method, trials, workdir, batch=1, seed=0, **kw):
    calls.append(method)
    best = [100.0 - i for i in range(trials)]
    out = {'best_so_far': {'trials': list(range(1, trials + 1)),
                           'wall_s': [10.0 * (i + 1) for i in range(trials)], 'best': best},
           'rows': [{'metric': 'test_nelbo', 'value': 99.0}], 'best': {'number': 0},
           'states': {'FAIL': 0}, 'worker_wall_s': 30.0, 'importance': {'fanova': {'lr': 1.0}},
           'populations': [{'run': 'a'}, {'run': 'b'}]}
    if method != 'grid':  # grid: a summary without programs
      out.update(programs=1, member_steps=120)
    return out

  monkeypatch.setattr(hpo_compare.runner, 'run_sweep', fake_sweep)
  out = hpo_compare.run(tmp_path, 'smoke')
  m = out['methods']
  assert m['grid']['programs'] == [2] and m['grid']['member_steps'] == [None]
  assert m['random']['programs'] == [1] and m['bayes']['member_steps'] == [120]
  assert out['totals'] == {'programs': 4, 'member_steps': None, 'sweeps': 3,
                           'sweeps_wall_s': 90.0}
  report = (tmp_path / 'report.md').read_text()
  assert 'The 3 sweeps trained 4 programs in 90 s of wall time' in report
  assert 'those sharing' not in report and '| programs | member-steps |' in report
  assert hpo_compare.sweep_programs({'programs': 3, 'populations': []}) == 3


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


def test_pbt_study_sizes_asha_for_the_same_member_evaluations():
  from research.experiments import pbt as pbt_study
  # by hand: 62 members, rungs after 1, 3, 9 of 20 evaluations keep 20, 6, 2
  assert pbt_study.asha_planned_evaluations(62, 20, 3, 1) == 62 * 1 + 20 * 2 + 6 * 6 + 2 * 11
  assert pbt_study.asha_members(8, 20, 3, 1) == 62  # 160 = 8 members x 20 evaluations
  assert pbt_study.asha_planned_evaluations(5, 4, 2, 1) == 5 + 2 * 1 + 1 * 2  # rungs 1, 2


def test_pbt_study_smoke_compares_pbt_random_search_and_asha(tmp_path):
  from research.experiments import pbt as pbt_study
  out = pbt_study.run(tmp_path / 'pbt', budget='smoke')
  assert {r['name'] for r in out['rows']} == {'random search', 'PBT', 'ASHA'}
  read = lambda arm: results.read(tmp_path / 'pbt' / f'{arm}_seed0' / 'results.json')
  plain, pbt, asha = read('random'), read('pbt'), read('asha')
  # the same members (seeds, initial learning rates) in random search and PBT, and as
  # ASHA's first members; PBT moved some of them
  assert [m['hparams'] for m in plain['members']] == [m['hparams'] for m in pbt['members']]
  assert [m['hparams'] for m in asha['members']][:4] == [m['hparams'] for m in plain['members']]
  assert any(m['pbt'] for m in pbt['members'])
  # ASHA trained the member-steps its plan says (rungs keep n // eta), the others all
  b = pbt_study.BUDGETS['smoke']
  n = len(asha['members'])
  assert n == pbt_study.asha_members(4, b['epochs'] // b['eval_every'], b['eta'], b['min'])
  per_eval = asha['steps_per_epoch'] * b['eval_every']
  assert sum(m['steps'] for m in asha['members']) == per_eval * \
      pbt_study.asha_planned_evaluations(n, b['epochs'] // b['eval_every'], b['eta'], b['min'])
  assert sum(m['steps'] for m in plain['members']) == 4 * b['epochs'] * plain['steps_per_epoch']
  assert sum(m['pruned'] is not None for m in asha['members']) >= n - 2
  report = (tmp_path / 'pbt' / 'report.md').read_text()
  assert 'PBT every' in report and '(pbt.png)' in report
  assert (tmp_path / 'pbt' / 'pbt.png').stat().st_size > 10_000
  assert pbt['pbt_lineage'] and all(m['hparams_trajectory'] for m in pbt['members'])
