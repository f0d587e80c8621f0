"""The asha_compare study: its arms' settings, the summary and targets on known sweep
summaries, and (slow) its smoke budget end to end."""
import math

import numpy as np
import pytest

from research import results
from research.experiments import asha_compare as ac
from tests.helpers import run_script


def fake_summary(best, steps, computed, wall, states=None):
  return {'best': {'value': best} if best is not None else None,
          'rows': [{'metric': 'test_nelbo', 'value': best - 4}] if best is not None else [],
          'states': states or {'COMPLETE': 4, 'PRUNED': 28, 'FAIL': 0},
          'member_steps': steps, 'computed_member_steps': computed, 'worker_wall_s': wall + 1,
          'programs': 4, 'trials': [{'wall_s': wall / 2}, {'wall_s': wall}, {'wall_s': None}],
          'best_so_far': {'trials': [1, 2], 'wall_s': [wall / 2, wall],
                          'best': [best + 1, best] if best is not None else []}}


SWEEPS = {
    'random': [fake_summary(102.0, 1000, 1000, 90.0), fake_summary(103.0, 1000, 1000, 90.0),
               fake_summary(101.0, 1000, 1000, 90.0)],
    'asha': [fake_summary(103.0, 300, 360, 80.0), fake_summary(104.0, 310, 370, 80.0),
             fake_summary(102.0, 290, 350, 80.0)],
    'optuna_asha': [fake_summary(103.5, 280, 280, 200.0), fake_summary(102.5, 300, 300, 200.0),
                    fake_summary(105.0, 320, 320, 200.0)],
}


def test_arm_settings_match_the_in_population_and_optuna_rules():
  b = ac.BUDGETS['full']
  assert ac.arm_settings('random', b) == ('', '')
  assert ac.arm_settings('asha', b) == ('asha:eta=3,min=1', '')
  assert ac.arm_settings('optuna_asha', b) == ('', 'optuna_asha:eta=3,min=1')
  assert ac.arm_settings('optuna_hyperband', b) == ('', 'optuna_hyperband:eta=3,min=1')


def test_summary_and_targets_on_known_sweeps():
  arms, targets = ac.summarize(SWEEPS)
  a = arms['asha']
  assert a['best_median'] == 103.0 and a['best_range'] == 2.0
  assert a['member_steps_total'] == 900 and a['computed_member_steps_total'] == 1080
  assert a['wall_s'] == [80.0] * 3 and a['wall_s_total'] == 240.0  # last trial's end
  assert a['complete'] == [4] * 3 and a['pruned'] == [28] * 3
  t = targets['asha vs optuna_asha']
  assert t['best_difference'] == pytest.approx(103.0 - 103.5)
  assert t['noise'] == pytest.approx(2.5) and t['same_best']  # optuna's range: 102.5 .. 105
  assert t['wall_ratio'] == pytest.approx(0.4) and t['wall_ok']
  assert t['member_steps_ratio'] == pytest.approx(0.3) and t['member_steps_ok']
  assert t['computed_member_steps_ratio'] == pytest.approx(0.36)
  assert t['optuna_asha_member_steps_ratio'] == pytest.approx(0.3)
  assert t['regret_vs_unpruned'] == pytest.approx(1.0)
  assert 'hyperband vs optuna_hyperband' not in targets
  slow = dict(SWEEPS, asha=[fake_summary(110.0, 500, 500, 150.0)] * 3)
  t = ac.summarize(slow)[1]['asha vs optuna_asha']
  assert not t['same_best'] and not t['wall_ok'] and not t['member_steps_ok']
  text = ac.targets_text(ac.summarize(slow)[1])
  assert 'wall time 0.75x (target <= 0.5: missed)' in text
  # a sweep whose trials all failed has no best: it drops out of the medians
  broken = dict(SWEEPS, asha=SWEEPS['asha'][:2] + [fake_summary(None, 0, 0, 5.0)])
  assert ac.summarize(broken)[0]['asha']['best_median'] == 103.5


def test_run_gives_every_arm_the_same_trials_and_its_pruner(tmp_path, monkeypatch):
  calls = []

  def fake_sweep(config, space, method, trials, workdir, batch=1, seed=0, trial_pruner='',
                 **kw):
    calls.append(dict(arm=workdir.name, prune=config.train.prune, trial_pruner=trial_pruner,
                      method=method, trials=trials, seed=seed, config_seed=config.seed,
                      epochs=config.train.epochs, eval_every=config.train.eval_every,
                      batch=batch, space=sorted(space)))
    arm = workdir.name.rsplit('_seed', 1)[0]
    return SWEEPS.get(arm, SWEEPS['asha'])[seed]

  monkeypatch.setattr(ac.runner, 'run_sweep', fake_sweep)
  out = ac.run(tmp_path, 'full')
  b = ac.BUDGETS['full']
  assert len(calls) == len(b['arms']) * len(b['seeds'])
  for c in calls:
    arm = c['arm'].rsplit('_seed', 1)[0]
    assert (c['prune'], c['trial_pruner']) == ac.arm_settings(arm, b)
    assert c['method'] == 'random' and c['trials'] == 32 and c['seed'] == c['config_seed']
    assert (c['epochs'], c['eval_every'], c['batch']) == (30, 5, 32)
    assert 'optim.lr' in c['space'] and 'model.latent' in c['space']
  assert set(out['arms']) == set(b['arms']) and 'asha vs optuna_asha' in out['targets']
  report = (tmp_path / 'report.md').read_text()
  assert '| ASHA inside the population | 103.00 (102.00 .. 104.00) |' in report
  assert '300 (360), 310 (370), 290 (350)' in report and 'wall time 0.40x' in report
  assert (tmp_path / 'cost.png').stat().st_size > 0
  assert (tmp_path / 'best_so_far.png').stat().st_size > 0
  names = {(r['name'], r['metric']) for r in out['rows']}
  assert ('asha vs optuna_asha', 'wall_ratio') in names
  # a workdir holds one batch size: the same resumes, another is refused untouched
  calls.clear()
  ac.run(tmp_path, 'full')
  assert {c['batch'] for c in calls} == {32}
  before = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises(ValueError, match=r'batches of 32 asked trials \(--population_size=32\), '
                                       r'not 8'):
    ac.run(tmp_path, 'full', population_size=8)
  assert sorted(p.name for p in tmp_path.iterdir()) == before
  # --population_size batches the in-population arms differently, nothing else
  calls.clear()
  out8 = ac.run(tmp_path / 'by8', 'full', population_size=8)
  assert out8['settings']['batch'] == 8 and {c['batch'] for c in calls} == {8}
  assert ac.run(tmp_path / 'by64', 'full', population_size=64)['settings']['batch'] == 32
  with pytest.raises(ValueError, match='at least 1'):
    ac.run(tmp_path / 'by0', 'full', population_size=0)
  old = tmp_path / 'old'  # sweeps from before the batch size was recorded
  (old / 'asha_seed0').mkdir(parents=True)
  with pytest.raises(ValueError, match='batch size is not recorded'):
    ac.run(old, 'full')
  with pytest.raises(ValueError, match='unknown arm'):
    ac.run(tmp_path / 'x', 'smoke', arms=('asha', 'asha_x'))


@pytest.mark.slow
def test_asha_compare_smoke(tmp_path):
  p = run_script('reproduce.py', '--experiment=asha_compare', f'--workdir={tmp_path}',
                 '--budget=smoke', timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  out = results.read(tmp_path / 'results.json')
  arms = out['arms']
  assert set(arms) == set(ac.BUDGETS['smoke']['arms'])
  for a in arms.values():
    assert all(math.isfinite(v) for v in a['best']) and a['member_steps_total']
  assert sum(arms['asha']['pruned']) > 0 and sum(arms['optuna_asha']['pruned']) > 0
  assert arms['random']['pruned'] == [0]
  # the same 4 planned trials in every arm; pruning only removes member-steps
  assert arms['asha']['member_steps_total'] < arms['random']['member_steps_total']
  assert arms['optuna_asha']['computed_member_steps'] == arms['optuna_asha']['member_steps']
  assert np.isfinite(out['targets']['asha vs optuna_asha']['wall_ratio'])
  for f in ('report.md', 'best_so_far.png', 'cost.png'):
    assert (tmp_path / f).stat().st_size > 0
