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
