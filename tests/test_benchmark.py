"""The benchmark's plumbing (tiny shapes; no timing assertions) and the CPU-device set-up."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from research import benchmark as bm
from research import results
from tests.helpers import run_script

REPO = Path(__file__).resolve().parents[1]
TINY = bm.Shape(batch=4, length=5, input=3, hidden=4, classes=3)


def test_recurrent_case_reports_every_candidate():
  case = bm.recurrent_case('lstm', TINY, train=True, rounds=2, torch_threads=[1],
                           references=['generic'])
  assert set(case['candidates']) == {'ours', 'ours generic'}
  for c in case['candidates'].values():
    assert c['rounds'] == 2 and c['median_ms'] > 0 and c['gflops'] > 0
    assert c['compile_s'] > 0 and c['first_step_s'] >= c['compile_s']
  assert case['flops'] == TINY.flops('lstm', train=True) == 3 * TINY.flops('lstm', train=False)


def test_population_case_compares_with_one_by_one():
  rows = bm.population_case(TINY, [2], rounds=2)
  hows = {r['how'] for r in rows}
  assert {'vmapped', 'one-by-one'} <= hows
  base = next(r for r in rows if r['how'] == 'one-by-one')
  assert base['speedup'] == pytest.approx(1.0)


def test_configure_cpu_devices_one_per_core():
  code = ('from research.devices import configure_cpu_devices, usable_cores; '
          'n = configure_cpu_devices(); import jax; '
          'print(n, usable_cores(), jax.device_count())')
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'RESEARCH_CPU_DEVICES')}
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=120, check=True).stdout.split()
  n, cores, devices = out
  assert int(devices) == int(cores)
  assert n == ('None' if int(cores) == 1 else cores)
  # An explicit count in XLA_FLAGS wins.
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=3'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=120, check=True).stdout.split()
  assert out[0] == 'None' and out[2] == '3'


@pytest.mark.slow
def test_benchmark_script_writes_results(tmp_path):
  run_script('benchmark.py', f'--workdir={tmp_path}', '--cells=lstm,gru', '--batch=4',
             '--length=5', '--input=3', '--hidden=4', '--rounds=2', '--matmul=64',
             '--modes=train', '--lstm_variants=', '--population_members=2',
             '--population_shapes=small:4x5x3x4', '--population_rounds=2',
             timeout=900).check_returncode()
  out = results.read(tmp_path / 'results.json')
  metrics = {r['metric'] for r in out['rows']}
  assert 'population_speedup' in metrics and 'step_ms' in metrics
  if bm.torch_available():
    assert {r['name'].split()[0] for r in out['rows'] if r['metric'] == 'ratio_to_torch'} == {
        'lstm', 'gru'}
  assert out['environment']['load_avg'] and (tmp_path / 'report.md').exists()
  json.dumps(out)


PROGRAM_TINY = bm.ProgramShape(batch=2, length=21, steps=2)
PROGRAM_KINDS = [{bm.VARIANT_KEY: 'vanilla', bm.HIDDEN_KEY: 4},
                 {bm.VARIANT_KEY: 'NIG', bm.HIDDEN_KEY: 8}]


def test_programs_case_mixed_equals_separate():
  # Two kinds (variant and width both differ): one mixed program, one program per kind.
  case = bm.programs_case(PROGRAM_TINY, PROGRAM_KINDS, seeds=1, rounds=2,
                          fitted={'step_overhead_s': 1.0, 'flops_per_s': 1e9})
  c = case['candidates']
  assert set(c) == {'separate', 'mixed', 'cost model', 'cost model (fitted)', 'grouped', 'kinds'}
  assert c['grouped']['programs'] == 1 and 'same_as' not in c['grouped']
  # kinds: one program in which each kind steps at its own shapes
  assert c['kinds']['programs'] == 1 and 'same_as' not in c['kinds']
  assert c['kinds']['program_rows'][0]['inner_groups'] == [['vanilla,4'], ['NIG,8']]
  assert case['members'] == 2 and case['kinds'] == 2 and case['steps_per_epoch'] == 2
  assert c['separate']['programs'] == 2 and c['mixed']['programs'] == 1
  assert c['separate']['groups'] == [['vanilla,4'], ['NIG,8']]
  # A huge fixed cost per step: the cost model merges everything, as `mixed` did.
  assert c['cost model (fitted)']['same_as'] == 'mixed'
  for r in c.values():
    assert r['median_ms'] > 0 and r['member_steps_per_s'] > 0 and r['compile_s'] > 0
    assert r['rounds'] == 2 and r['predicted_ms'] > 0
    assert r['losses_match'] and r['loss_max_rel_diff'] <= case['rtol']
    assert r['loss_last_max_rel_diff'] >= 0 and r['loss_last_worst_member'] in ('0,vanilla,4',
                                                                               '0,NIG,8')
  assert c['separate']['speed_vs_separate'] == pytest.approx(1.0)
  assert c['separate']['loss_max_abs_diff'] == 0.0
  assert case['losses_match']
  assert [p['members'] for p in c['separate']['program_rows']] == [1, 1]


def test_fit_cost_recovers_the_constants():
  points = [{'members_per_device': k, 'flops': f, 'step_s': 3e-4 + k * f / 2e9}
            for k in (1, 2, 4) for f in (1e6, 4e6)]
  fit = bm.fit_cost(points)
  assert fit['step_overhead_s'] == pytest.approx(3e-4)
  assert fit['flops_per_s'] == pytest.approx(2e9)
  assert fit['r2'] == pytest.approx(1.0) and not fit['negative_overhead']
  assert fit['paste'] == "'cpu': dict(step_overhead_s=3.0e-04, flops_per_s=2.0e+09),"
  m = fit['with_member_overhead']
  assert m['member_step_s'] == pytest.approx(0.0, abs=1e-9)
  assert m['flops_per_s'] == pytest.approx(2e9) and m['max_rel_residual'] < 1e-6
  with pytest.raises(ValueError, match='at least two'):
    bm.fit_cost(points[:1])


@pytest.mark.slow
def test_benchmark_script_programs_and_calibrate(tmp_path):
  run_script('benchmark.py', f'--workdir={tmp_path}', '--benchmark=calibrate,programs',
             '--matmul=0', '--programs_variants=vanilla,NIG', '--programs_hidden=4',
             '--programs_seeds=2', '--programs_batch=2', '--programs_length=21',
             '--programs_steps=2', '--programs_rounds=2', '--calibrate_hidden=4',
             '--calibrate_members=1,4', timeout=900).check_returncode()
  out = results.read(tmp_path / 'results.json')
  metrics = {r['metric'] for r in out['rows']}
  assert {'member_steps_per_s', 'mixed_vs_separate', 'step_overhead_s', 'flops_per_s'} <= metrics
  assert out['programs']['losses_match'] and out['calibration']['paste'].startswith("'cpu'")
  assert 'cost model (fitted)' in out['programs']['candidates']
  assert 'For `research.structure.COST`' in (tmp_path / 'report.md').read_text()
