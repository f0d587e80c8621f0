"""Times our recurrent layers against Flax's and PyTorch's, and populations against one-by-one runs.

  python scripts/benchmark.py --workdir=runs/bench                 # everything, ~10 min on 2 cores
  python scripts/benchmark.py --workdir=runs/b --cells=lstm --modes=train --population_members=8

Writes W/results.json (the shared schema; headline rows: metric ``ratio_to_torch``
for the LSTM and GRU training steps, ``population_speedup`` for K = 8) and
W/report.md. PyTorch is timed when it is importable (``pip install -e '.[torch]'``).
See research/benchmark.py for what is timed and how.
"""
import os
import sys
from pathlib import Path

from research.devices import configure_cpu_devices

if __name__ == '__main__':
  # Before JAX (and PyTorch) start: one CPU device per core for the population cases
  # (an explicit --cpu_devices or XLA_FLAGS wins), and OpenMP threads that sleep
  # instead of spinning while JAX runs (else PyTorch's idle threads steal its cores).
  for a in sys.argv:
    if a.startswith('--cpu_devices=') and a.split('=', 1)[1].isdigit():
      os.environ['RESEARCH_CPU_DEVICES'] = a.split('=', 1)[1]  # else the flag's parser says why
  configure_cpu_devices()
  if '--nopassive_omp' not in sys.argv:
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from research import benchmark as bm  # noqa: E402
from research import cli, results  # noqa: E402
from research.models.cells import LSTM_VARIANTS  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (results.json, report.md).')
_CELLS = flags.DEFINE_list('cells', ['lstm', 'gru'], f'Cells to time: {", ".join(bm.CELLS)}.')
_VARIANTS = flags.DEFINE_list('lstm_variants', ['vanilla'],
                              'Extra LSTM variants (Greff et al.) to time, ours only: '
                              f'{", ".join(LSTM_VARIANTS)}.')
_MODES = flags.DEFINE_list('modes', list(bm.MODES), 'train (fwd+bwd+Adam) and/or forward.')
_REFS = flags.DEFINE_list('references', list(bm.REFERENCES),
                          'generic (our autodiff scan), flax (nn.RNN), torch (when importable).')
_TORCH_THREADS = flags.DEFINE_list('torch_threads', ['2', '1'],
                                   'torch.set_num_threads values; the first is the headline.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size.', lower_bound=1)
_LENGTH = flags.DEFINE_integer('length', 100, 'Sequence length.', lower_bound=1)
_INPUT = flags.DEFINE_integer('input', 32, 'Input features.', lower_bound=1)
_HIDDEN = flags.DEFINE_integer('hidden', 128, 'Hidden units.', lower_bound=1)
_CLASSES = flags.DEFINE_integer('classes', 10, 'Classes of the last-step head.', lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 20, 'Interleaved rounds per case (medians over them).',
                               lower_bound=1)
_WARMUP = flags.DEFINE_integer(
    'warmup_calls', 0, 'Untimed calls of a recurrent candidate right before each timed one '
    '(steady state: its own buffers in cache, as in a training loop; 0: timed right after the '
    'other candidates).', lower_bound=0)
_MAX_SECONDS = flags.DEFINE_float('max_seconds', 120.0,
                                  'Stop a case after this long (>= 3 rounds).', lower_bound=0.0)
_MATMUL = flags.DEFINE_integer('matmul', 2048, 'Size of the reference matmul (0: skip).',
                               lower_bound=0)
_MEMBERS = flags.DEFINE_list('population_members', ['1', '2', '4', '8', '16'],
                             'Population sizes K (empty: skip populations).')
_POP_SHAPES = flags.DEFINE_list('population_shapes', ['small:32x50x8x32', 'medium:32x100x16x64'],
                                'name:BxTxDxH of the population models.')
_POP_ROUNDS = flags.DEFINE_integer('population_rounds', 10, 'Interleaved rounds per K.',
                                   lower_bound=1)
flags.DEFINE_integer('cpu_devices', 0, 'CPU devices (0: one per core). Read before JAX starts.',
                     lower_bound=0)
flags.DEFINE_bool('passive_omp', True, 'OMP_WAIT_POLICY=PASSIVE for PyTorch (read before start).')
flags.mark_flags_as_required(['workdir'])


def _validator(name, check):
  """Registers ``check(values)`` (raises ValueError) as the validator of list flag ``name``."""
  def checker(values):
    try:
      check(values)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True
  flags.register_validator(name, checker)


_validator('cells', lambda v: bm.check_choices('cell', v, bm.CELLS))
_validator('lstm_variants', lambda v: bm.check_choices('LSTM variant', v, LSTM_VARIANTS))
_validator('modes', lambda v: bm.check_choices('mode', v, bm.MODES))
_validator('references', lambda v: bm.check_choices('reference', v, bm.REFERENCES))
_validator('torch_threads', lambda v: bm.parse_counts('--torch_threads', v))
_validator('population_members', lambda v: bm.parse_counts('--population_members', v))
_validator('population_shapes', lambda v: [bm.parse_shape(s) for s in v])
_OWN = {'workdir', 'cells', 'lstm_variants', 'modes', 'references', 'torch_threads', 'batch',
        'length', 'input', 'hidden', 'classes', 'rounds', 'warmup_calls', 'max_seconds',
        'matmul', 'population_members', 'population_shapes', 'population_rounds', 'cpu_devices',
        'passive_omp'}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging()
  jax.config.update('jax_enable_compilation_cache', False)  # compile times are measured
  workdir = Path(_WORKDIR.value)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f'--workdir={workdir} is a file; the workdir must be a directory')
  workdir.mkdir(parents=True, exist_ok=True)
  env = bm.environment()
  logging.info('environment: %s', env)
  shape = bm.Shape(_BATCH.value, _LENGTH.value, _INPUT.value, _HIDDEN.value, _CLASSES.value)
  threads = [int(t) for t in _TORCH_THREADS.value]
  refs = list(_REFS.value)
  if 'torch' in refs and not bm.torch_available():
    logging.warning('PyTorch is not importable: no torch references (pip install -e ".[torch]")')

  out = {'matmul': None, 'recurrent': [], 'population': []}
  if _MATMUL.value:
    out['matmul'] = bm.matmul_case(_MATMUL.value, min(_ROUNDS.value, 10))
    logging.info('matmul %d: %.1f GFLOP/s', _MATMUL.value, out['matmul']['gflops'])
  jobs = [(c, None) for c in _CELLS.value]
  if 'lstm' in _CELLS.value:
    jobs += [('lstm', v) for v in _VARIANTS.value if v not in ('standard', 'NP')]
  for mode in _MODES.value:
    for cell, variant in jobs:
      case = bm.recurrent_case(cell, shape, mode == 'train', _ROUNDS.value, threads, refs,
                               variant, _MAX_SECONDS.value, _WARMUP.value)
      out['recurrent'].append(case)
      logging.info('%s: %s', case['case'], {k: round(v['median_ms'], 1)
                                            for k, v in case['candidates'].items()})
  members = [int(k) for k in _MEMBERS.value]
  for spec in _POP_SHAPES.value if members else []:
    name, (B, T, D, H) = bm.parse_shape(spec)
    rows = bm.population_case(bm.Shape(B, T, D, H, _CLASSES.value), members, _POP_ROUNDS.value,
                              label=name, max_seconds=_MAX_SECONDS.value)
    out['population'] += rows
    for r in rows:
      logging.info('population %s K=%d %s: %.1f ms, speedup %.2f', name, r['members'], r['how'],
                   r['median_ms'], r['speedup'])
  env['load_avg_end'] = list(os.getloadavg())
  rows = summary_rows(out, threads[0] if threads else None)
  results.write(workdir / 'results.json', 'benchmark', rows, environment=env,
                flags={k: v for k, v in flags.FLAGS.flag_values_dict().items() if k in _OWN},
                **out)
  report = markdown(out, env, rows)
  (workdir / 'report.md').write_text(report)
  print(report)


def summary_rows(out, headline_threads):
  rows = []
  src = 'scripts/benchmark.py (median of interleaved rounds)'
  if out['matmul']:
    m = out['matmul']
    rows.append(_row(m['case'], 'gflops', m['gflops'], m['rounds'], src))
  for case in out['recurrent']:
    c = case['candidates']
    ours = c['ours']
    n = ours['rounds']
    for k, v in c.items():
      rows.append(_row(f'{case["case"]}: {k}', 'step_ms', v['median_ms'], v['rounds'], src))
    rows.append(_row(f'{case["case"]}: ours', 'compile_s', ours['compile_s'], 1, src))
    if f'torch {headline_threads}T' in c:
      rows.append(_row(f'{case["case"]} (ours / torch {headline_threads} threads)',
                       'ratio_to_torch', ours['median_ms'] / c[f'torch {headline_threads}T'][
                           'median_ms'], n, src + ('; target <= 0.6 (issue 6)' if case['train'] else '')))
    if 'flax' in c:
      rows.append(_row(f'{case["case"]} (ours / flax)', 'ratio_to_flax',
                       ours['median_ms'] / c['flax']['median_ms'], n, src))
    if 'ours generic' in c:
      rows.append(_row(f'{case["case"]} (ours / ours generic)', 'ratio_to_generic',
                       ours['median_ms'] / c['ours generic']['median_ms'], n, src))
  for r in out['population']:
    if r['how'] == 'one-by-one':
      continue
    rows.append(_row(f'{r["case"]} K={r["members"]} ({r["how"]} vs one-by-one)',
                     'population_speedup', r['speedup'], r['rounds'],
                     src + ('; target >= 3 at K=8 (issue 6)' if r['members'] == 8 else '')))
  return rows


def _row(name, metric, value, n, source):
  return {'name': name, 'metric': metric, 'value': float(value), 'std': None, 'n': int(n),
          'published': None, 'source': source}


def markdown(out, env, rows) -> str:
  load = ', '.join(f'{v:.1f}' for v in env['load_avg'])
  lines = [f'Machine: {env["cpu_count"]} cores ({env["processor"] or env["machine"]}), '
           f'load average at start {load}, at end '
           f'{", ".join(f"{v:.1f}" for v in env["load_avg_end"])}; jax {env["jax"]}, '
           f'flax {env["flax"]}, torch {env.get("torch", "not installed")}; '
           f'{len(env["devices"])} JAX device(s).', '']
  if out['matmul']:
    m = out['matmul']
    lines += [f'{m["case"]} (jitted, float32): {m["median_ms"]:.1f} ms, {m["gflops"]:.0f} GFLOP/s.',
              '']
  if out['recurrent']:
    s = out['recurrent'][0]['shape']
    lines += [f'Recurrent classifier, batch {s["batch"]}, length {s["length"]}, input '
              f'{s["input"]}, hidden {s["hidden"]}, last-step {s["classes"]}-class head, Adam. '
              'Times: median (min) per step in ms; CPU = process CPU time per step; '
              'ratio = median / the reference\'s median.', '',
              '| case | candidate | median ms | min ms | CPU ms | GFLOP/s | vs torch | vs flax '
              '| compile s |', '|---|---|---|---|---|---|---|---|---|']
    for case in out['recurrent']:
      c = case['candidates']
      torch_ref = next((v for k, v in c.items() if k.startswith('torch')), None)
      for k, v in c.items():
        vt = f'{v["median_ms"] / torch_ref["median_ms"]:.2f}' if torch_ref else ''
        vf = f'{v["median_ms"] / c["flax"]["median_ms"]:.2f}' if 'flax' in c else ''
        comp = '' if v['compile_s'] is None else f'{v["compile_s"]:.2f}'
        lines.append(f'| {case["case"]} | {k} | {v["median_ms"]:.1f} | {v["min_ms"]:.1f} | '
                     f'{v["cpu_ms"]:.1f} | {v["gflops"]:.1f} | {vt} | {vf} | {comp} |')
    lines.append('')
    lines.append('"vs torch" uses the first torch candidate listed for the case.')
    lines.append('')
  if out['population']:
    lines += ['Populations (each member its own parameters, Adam state and batch; '
              'speedup = one-by-one time / this time):', '',
              '| model | K | how | median ms | member-steps/s | speedup | compile s |',
              '|---|---|---|---|---|---|---|']
    for r in out['population']:
      s = r['shape']
      lines.append(f'| {r["case"].split()[-1]} (B{s["batch"]} T{s["length"]} D{s["input"]} '
                   f'H{s["hidden"]}) | {r["members"]} | {r["how"]} | {r["median_ms"]:.1f} | '
                   f'{r["member_steps_per_s"]:.0f} | {r["speedup"]:.2f} | '
                   f'{r["compile_s"]:.2f} |')
    lines.append('')
  head = [r for r in rows if r['metric'] in ('ratio_to_torch', 'population_speedup')]
  if head:
    lines += ['Headline rows (results.json):', '', results.markdown_table(head), '']
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
