"""Times our recurrent layers against Flax's and PyTorch's, populations against one-by-one
runs, and populations of mixed structure as one program against one program per structure.

  python scripts/benchmark.py --workdir=runs/bench                 # layers, ~10 min on 2 cores
  python scripts/benchmark.py --workdir=runs/b --cells=lstm --modes=train --population_members=8
  python scripts/benchmark.py --workdir=runs/p --benchmark=calibrate,programs
  python scripts/benchmark.py --workdir=runs/s --benchmark=stream --matmul=0
  python scripts/benchmark.py --workdir=runs/d --benchmark=data_parallel --matmul=0

``--benchmark`` picks what runs: ``layers`` (the default: the matmul, the recurrent
layers and the vmapped populations), ``programs`` (a population of LSTM variants x
hidden sizes x seeds trained as one program, as one program per structure and as the
cost model groups it; member-steps per second, compile times, a check that every
member's losses agree) and ``calibrate`` (fits `research.structure.COST` for this
backend and prints the line to paste; with ``programs`` in the same run, the cost
model's grouping under the fitted constants is timed as well), ``stream`` (the
MNIST-1D CNN's training epoch with the split on the device against the same epoch
streamed from host memory, ``data.stream``; headline ``stream_ratio``, streamed /
resident examples per second), ``data_parallel`` (one member's training epoch with its
batch on one device against its batch split over every device, the mesh's data axis;
headline ``data_parallel_ratio``).

Writes W/results.json (the shared schema; headline rows: metric ``ratio_to_torch``
for the LSTM and GRU training steps, ``population_speedup`` for K = 8,
``mixed_vs_separate`` for the programs) and W/report.md. PyTorch is timed when it is
importable (``pip install -e '.[torch]'``). See research/benchmark.py for what is timed
and how.
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

BENCHMARKS = ('layers', 'programs', 'calibrate', 'stream', 'data_parallel')

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
_BENCHMARK = flags.DEFINE_list('benchmark', ['layers'],
                               f'What to run: {", ".join(BENCHMARKS)} (see the module docstring).')
_PROG_DATA = flags.DEFINE_enum('programs_data', 'copy', list(bm.PROGRAM_DATA),
                               'programs/calibrate task: copy (synthetic copy memory, 10 inputs) '
                               'or music (JSB Chorales, 88 inputs; needs --programs_music_path).')
_PROG_MUSIC = flags.DEFINE_string('programs_music_path', '../shared/data/JSB_Chorales.mat',
                                  'The JSB Chorales .mat file for --programs_data=music.')
_PROG_VARIANTS = flags.DEFINE_list('programs_variants', list(bm.PROGRAM_VARIANTS),
                                   'LSTM variants of the mixed population.')
_PROG_HIDDEN = flags.DEFINE_list('programs_hidden', ['16', '32'],
                                 'Hidden sizes of the mixed population (x every variant).')
_PROG_SEEDS = flags.DEFINE_integer('programs_seeds', 2, 'Seeds per (variant, hidden) kind.',
                                   lower_bound=1)
_PROG_BATCH = flags.DEFINE_integer('programs_batch', 8, 'programs/calibrate batch size.',
                                   lower_bound=1)
_PROG_LENGTH = flags.DEFINE_integer('programs_length', 100,
                                    'programs/calibrate sequence length (copy: >= 21).',
                                    lower_bound=21)
_PROG_STEPS = flags.DEFINE_integer('programs_steps', 10,
                                   'Training steps per epoch (copy; music: its training split).',
                                   lower_bound=1)
_PROG_ROUNDS = flags.DEFINE_integer('programs_rounds', 5,
                                    'Interleaved rounds (one epoch of every candidate each) for '
                                    'programs and calibrate.', lower_bound=1)
_PROG_WARMUP = flags.DEFINE_integer('programs_warmup', 0,
                                    'Untimed epochs of a candidate right before each timed one.',
                                    lower_bound=0)
_PROG_RTOL = flags.DEFINE_float('programs_rtol', 1e-4,
                                'Relative tolerance of the per-member loss check.', lower_bound=0)
_PROG_FITTED = flags.DEFINE_list(
    'programs_fitted_cost', [], 'step_overhead_s,flops_per_s from an earlier calibration: '
    'programs also times the cost model\'s grouping under them (a calibration in the same run '
    'wins).')
_PROG_CANDIDATES = flags.DEFINE_list(
    'programs_candidates', list(bm.PROGRAM_CANDIDATES),
    'Candidates besides separate (one program per kind): mixed (one program), cost (the cost '
    'model\'s grouping under research.structure.COST), fitted (its grouping under the '
    'calibrated or --programs_fitted_cost constants), grouped (one program whose groups of '
    'kinds each step at their own shapes: train.groups=cost), kinds (one program, every kind '
    'at its own shapes: train.groups=kinds).')
_CAL_HIDDEN = flags.DEFINE_list('calibrate_hidden', ['16', '32', '64'],
                                'Widths of the calibration.')
_CAL_MEMBERS = flags.DEFINE_list('calibrate_members', ['1', '2', '4', '8', '16'],
                                 'Member counts K of the calibration (per width).')
_STREAM_CONFIG = flags.DEFINE_string('stream_config', bm.STREAM_CONFIG,
                                     'stream: the config (path[:arg]) trained both ways.')
_STREAM_ROUNDS = flags.DEFINE_integer('stream_rounds', 10,
                                      'stream: interleaved rounds (one epoch of each).',
                                      lower_bound=1)
_DP_CONFIG = flags.DEFINE_string('data_parallel_config', bm.DATA_PARALLEL_CONFIG,
                                 'data_parallel: the config (path[:arg]), one member.')
_DP_BATCH = flags.DEFINE_integer('data_parallel_batch', 256,
                                 'data_parallel: train.batch_size (0: the config\'s).',
                                 lower_bound=0)
_STREAM_CHUNK = flags.DEFINE_integer('stream_chunk', 0,
                                     'stream: data.stream_chunk (0: automatic).', lower_bound=0)
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


def _check_benchmarks(values):
  if not values:
    raise ValueError(f'--benchmark needs at least one of {", ".join(BENCHMARKS)}')
  bm.check_choices('benchmark', values, BENCHMARKS)


def fitted_cost(values):
  """``[step_overhead_s, flops_per_s]`` strings -> the COST dict (None if empty)."""
  if not values:
    return None
  try:
    overhead, rate = (float(v) for v in values)
  except ValueError:
    overhead = rate = -1.0
  if overhead < 0 or not rate > 0:
    raise ValueError(f'--programs_fitted_cost={",".join(values)} is not '
                     'step_overhead_s,flops_per_s (>= 0 and > 0), e.g. 2e-4,4e9')
  return {'step_overhead_s': overhead, 'flops_per_s': rate}


_validator('benchmark', _check_benchmarks)
_validator('programs_variants', lambda v: bm.check_choices('LSTM variant', v, LSTM_VARIANTS))
_validator('programs_hidden', lambda v: bm.parse_counts('--programs_hidden', v))
_validator('programs_fitted_cost', lambda v: fitted_cost(v))
_validator('programs_candidates',
           lambda v: bm.check_choices('programs candidate', v, bm.PROGRAM_CANDIDATES))
_validator('calibrate_hidden', lambda v: bm.parse_counts('--calibrate_hidden', v))
_validator('calibrate_members', lambda v: bm.parse_counts('--calibrate_members', v))
_OWN = {'workdir', 'cells', 'lstm_variants', 'modes', 'references', 'torch_threads', 'batch',
        'length', 'input', 'hidden', 'classes', 'rounds', 'warmup_calls', 'max_seconds',
        'matmul', 'population_members', 'population_shapes', 'population_rounds', 'cpu_devices',
        'passive_omp', 'benchmark', 'programs_data', 'programs_music_path', 'programs_variants',
        'programs_hidden', 'programs_seeds', 'programs_batch', 'programs_length',
        'programs_steps', 'programs_rounds', 'programs_warmup', 'programs_rtol',
        'programs_fitted_cost', 'programs_candidates', 'calibrate_hidden', 'calibrate_members',
        'stream_config', 'stream_rounds', 'stream_chunk', 'data_parallel_config',
        'data_parallel_batch'}


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
  if 'layers' in _BENCHMARK.value and 'torch' in refs and not bm.torch_available():
    logging.warning('PyTorch is not importable: no torch references (pip install -e ".[torch]")')

  out = {'matmul': None, 'recurrent': [], 'population': [], 'programs': None,
         'calibration': None, 'stream': None, 'data_parallel': None}
  which = set(_BENCHMARK.value)
  if _MATMUL.value:
    out['matmul'] = bm.matmul_case(_MATMUL.value, min(_ROUNDS.value, 10))
    logging.info('matmul %d: %.1f GFLOP/s', _MATMUL.value, out['matmul']['gflops'])
  if which & {'programs', 'calibrate'}:
    run_programs(out, which)
  if 'layers' in which:
    run_layers(out, shape, threads, refs)
  if 'stream' in which:
    out['stream'] = s = bm.stream_case(_STREAM_CONFIG.value, _STREAM_ROUNDS.value,
                                       _STREAM_CHUNK.value, _MAX_SECONDS.value)
    logging.info('stream: %.0f examples/s streamed, %.0f resident, ratio %.3f, equal %s',
                 s['candidates']['streamed']['examples_per_s'],
                 s['candidates']['resident']['examples_per_s'], s['ratio'], s['equal'])
  if 'data_parallel' in which:
    over = {'train.batch_size': _DP_BATCH.value} if _DP_BATCH.value else {}
    out['data_parallel'] = d = bm.data_parallel_case(_DP_CONFIG.value, _STREAM_ROUNDS.value,
                                                     _MAX_SECONDS.value, over)
    logging.info('data_parallel: ratio %.3f over %d devices, params max rel diff %.1e',
                 d['ratio'], d['devices'], d['max_rel_diff'])
  env['load_avg_end'] = list(os.getloadavg())
  rows = summary_rows(out, threads[0] if threads else None)
  results.write(workdir / 'results.json', 'benchmark', rows, environment=env,
                flags={k: v for k, v in flags.FLAGS.flag_values_dict().items() if k in _OWN},
                **out)
  report = markdown(out, env, rows)
  (workdir / 'report.md').write_text(report)
  print(report)


def run_programs(out, which):
  """The calibrate and programs cases (calibration first: programs then also times
  the cost model's grouping under the fitted constants)."""
  shape = bm.ProgramShape(_PROG_BATCH.value, _PROG_LENGTH.value, _PROG_STEPS.value,
                          _PROG_DATA.value, _PROG_MUSIC.value)
  fitted = fitted_cost(_PROG_FITTED.value)
  if 'calibrate' in which:
    cal = bm.calibrate_case(shape, [int(h) for h in _CAL_HIDDEN.value],
                            [int(k) for k in _CAL_MEMBERS.value], _PROG_ROUNDS.value,
                            _MAX_SECONDS.value, _PROG_WARMUP.value)
    out['calibration'] = cal
    fitted = cal['constants']
    logging.info('calibration (R^2 %.3f): %s', cal['r2'], cal['paste'])
  if 'programs' in which:
    kinds = bm.product_kinds(_PROG_VARIANTS.value, [int(h) for h in _PROG_HIDDEN.value])
    case = bm.programs_case(shape, kinds, _PROG_SEEDS.value, _PROG_ROUNDS.value,
                            _MAX_SECONDS.value, _PROG_WARMUP.value, fitted, _PROG_RTOL.value,
                            tuple(_PROG_CANDIDATES.value))
    out['programs'] = case
    for name, r in case['candidates'].items():
      logging.info('programs %s: %d program(s), %.1f ms/epoch, %.0f member-steps/s, %.2fx '
                   'separate, compile %.1f s, loss max rel diff %.1e (first epoch), %.1e '
                   '(last)', name, r['programs'], r['median_ms'], r['member_steps_per_s'],
                   r['speed_vs_separate'], r['compile_s'], r['loss_max_rel_diff'],
                   r['loss_last_max_rel_diff'])


def run_layers(out, shape, threads, refs):
  """The recurrent-layer and population cases."""
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
  p = out['programs']
  if p:
    src = ('scripts/benchmark.py --benchmark=programs (median epoch time of interleaved '
           f'rounds; {p["members"]} members, {p["kinds"]} kinds x {p["seeds"]} seeds)')
    for name, r in p['candidates'].items():
      rows.append(_row(f'programs: {name}', 'member_steps_per_s', r['member_steps_per_s'],
                       r['rounds'], src))
      rows.append(_row(f'programs: {name}', 'compile_s', r['compile_s'], 1, src))
      rows.append(_row(f'programs: {name} (first-epoch loss vs separate)',
                       'loss_max_rel_diff', r['loss_max_rel_diff'], p['members'], src))
      rows.append(_row(f'programs: {name} (last-epoch loss vs separate)',
                       'loss_max_rel_diff', r['loss_last_max_rel_diff'], p['members'], src))
      if name != 'separate':
        rows.append(_row(f'programs: {name} vs separate', 'mixed_vs_separate',
                         r['speed_vs_separate'], r['rounds'], src))
  s = out['stream']
  if s:
    rows += _epoch_case_rows(
        s, 'stream', f'{s["members"]} members', '(streamed / resident)', 'stream_ratio',
        '; target >= 0.8')
  d = out['data_parallel']
  if d:
    rows += _epoch_case_rows(
        d, 'data_parallel', f'one member, batch {d["batch_size"]}',
        f'(batch over {d["devices"]} devices / one device)', 'data_parallel_ratio')
  c = out['calibration']
  if c:
    src = 'scripts/benchmark.py --benchmark=calibrate (least squares over the programs)'
    for k in ('step_overhead_s', 'flops_per_s'):
      rows.append(_row(f'calibrate {c["backend"]}', k, c[k], len(c['points']), src))
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
  if out['calibration']:
    lines += calibration_markdown(out['calibration'])
  if out['programs']:
    lines += programs_markdown(out['programs'])
  if out['stream']:
    lines += stream_markdown(out['stream'])
  if out['data_parallel']:
    lines += data_parallel_markdown(out['data_parallel'])
  head = [r for r in rows if r['metric'] in ('ratio_to_torch', 'population_speedup',
                                             'mixed_vs_separate', 'stream_ratio',
                                             'data_parallel_ratio')]
  if head:
    lines += ['Headline rows (results.json):', '', results.markdown_table(head), '']
  return '\n'.join(lines)



def programs_markdown(p) -> list[str]:
  s = p['shape']
  data = (f'copy task (batch {s["batch"]}, length {s["length"]}, {p["steps_per_epoch"]} steps '
          'per epoch)' if s['data'] == 'copy' else
          f'JSB Chorales (batch {s["batch"]}, {p["steps_per_epoch"]} steps per epoch)')
  lines = [f'Programs: {p["members"]} members ({p["kinds"]} kinds: '
           f'{" x ".join(p["kind_keys"])} = {", ".join(p["kind_names"])}; x {p["seeds"]} seeds) '
           f'on the {data}, {p["devices"]} device(s); median of {p["rounds"]} interleaved '
           'epochs per candidate (every member one epoch; first epoch after compilation '
           'untimed); speed = separate\'s time / this time; predicted: the cost model '
           f'(COST {p["cost"]}'
           + (f'; fitted {p["fitted_cost"]}' if p['fitted_cost'] else '') + ').', '',
           '| candidate | programs | ms / epoch | member-steps/s | speed vs separate | '
           'compile s | setup s | predicted ms | loss diff, first epoch | last epoch |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for name, r in p['candidates'].items():
    pred = f'{r["predicted_ms"]:.0f}'
    if 'predicted_fitted_ms' in r:
      pred += f' (fitted {r["predicted_fitted_ms"]:.0f})'
    same = f' (= {r["same_as"]})' if 'same_as' in r else ''
    lines.append(f'| {name}{same} | {r["programs"]} | {r["median_ms"]:.1f} | '
                 f'{r["member_steps_per_s"]:.0f} | {r["speed_vs_separate"]:.2f} | '
                 f'{r["compile_s"]:.1f} | {r["setup_s"]:.1f} | {pred} | '
                 f'{r["loss_max_rel_diff"]:.1e} | {r["loss_last_max_rel_diff"]:.1e} |')
  lines.append('')
  for name, r in p['candidates'].items():
    if 'same_as' not in r and name != 'separate' and r['programs'] > 1:
      lines.append(f'{name} groups: ' + '; '.join('[' + ' '.join(g) + ']' for g in r['groups']))
  worst = {n: r['loss_last_worst_member'] for n, r in p['candidates'].items()
           if n != 'separate' and 'same_as' not in r}
  lines += ['', 'Loss diff: the largest relative difference of a member\'s training loss from '
            'its loss in the separate programs, over every step of the first epoch (after '
            'compilation) and of the last epoch\'s mean (rounding differences grow with '
            'training; largest last-epoch difference: '
            + ', '.join(f'{n}: member {w}' for n, w in worst.items()) + '). '
            f'First epoch equal within rtol {p["rtol"]:g}: '
            f'{"yes" if p["losses_match"] else "NO"}.', '']
  return lines


def stream_markdown(s) -> list[str]:
  m = s['mesh']
  lines = [f'Streaming input: {s["config"]}, {s["members"]} members, {s["steps_per_epoch"]} '
           f'steps of {s["batch_size"]} per epoch ({s["train_examples"]} training examples), '
           f'chunks of {s["chunk"]} steps, a {m["member"]} x {m["data"]} (member x data) '
           f'mesh; median of {s["candidates"]["resident"]["rounds"]} interleaved epochs each '
           '(first epoch, with compilation, untimed).', '',
           '| input | ms / epoch | min ms | CPU ms | examples/s | first epoch s |',
           '|---|---|---|---|---|---|']
  for name, r in s['candidates'].items():
    lines.append(f'| {name} | {r["median_ms"]:.1f} | {r["min_ms"]:.1f} | {r["cpu_ms"]:.1f} | '
                 f'{r["examples_per_s"]:.0f} | {r["first_epoch_s"]:.2f} |')
  lines += ['', f'Streamed / resident examples per second: **{s["ratio"]:.3f}** (target >= 0.8). '
            f'Final states after {s["epochs_each"]} epochs each bit-identical: '
            f'{"yes" if s["equal"] else "NO"}.', '']
  return lines


def _epoch_case_rows(case, benchmark: str, what: str, ratio_label: str, ratio_metric: str,
                     note: str = '') -> list[dict]:
  """Rows of an `research.benchmark.epoch_case` result: examples/s of each arm and the
  headline ratio (last arm / first)."""
  src = (f'scripts/benchmark.py --benchmark={benchmark} (median epoch time of interleaved '
         f'rounds; {case["config"]}, {what})')
  rows = [_row(f'{case["case"]}: {name}', 'examples_per_s', r['examples_per_s'], r['rounds'],
               src) for name, r in case['candidates'].items()]
  last = list(case['candidates'].values())[-1]
  rows.append(_row(f'{case["case"]} {ratio_label}', ratio_metric, case['ratio'], last['rounds'],
                   src + note))
  return rows


def data_parallel_markdown(d) -> list[str]:
  lines = [f'Data parallel: {d["config"]}, one member, {d["steps_per_epoch"]} steps of '
           f'{d["batch_size"]} per epoch; median of {d["candidates"]["one_device"]["rounds"]} '
           'interleaved epochs each (first epoch, with compilation, untimed).', '',
           '| batch on | mesh (member x data) | ms / epoch | CPU ms | examples/s | first epoch s |',
           '|---|---|---|---|---|---|']
  for name, r in d['candidates'].items():
    m = r['mesh']
    lines.append(f'| {name} | {m["member"]} x {m["data"]} | {r["median_ms"]:.1f} | '
                 f'{r["cpu_ms"]:.1f} | {r["examples_per_s"]:.0f} | {r["first_epoch_s"]:.2f} |')
  lines += ['', f'Split / one device examples per second: **{d["ratio"]:.3f}**; parameters '
            f'after {d["epochs_each"]} epochs each agree to a relative {d["max_rel_diff"]:.1e} '
            '(the batch sums run in another order).', '']
  return lines


def calibration_markdown(c) -> list[str]:
  lines = [f'Cost-model calibration ({c["backend"]}, {c["devices"]} device(s)): seconds per '
           'step = step_overhead_s + members per device x flops / flops_per_s, least '
           f'squares of the relative residuals over {len(c["points"])} programs '
           f'(R^2 {c["r2"]:.3f}, largest relative residual {c["max_rel_residual"]:.2f}).', '',
           '| program | devices | members / device | MFLOP / member-step | ms / step | fitted '
           'ms / step | compile s |', '|---|---|---|---|---|---|---|']
  for pt in c['points']:
    lines.append(f'| {pt["program"]} | {pt["devices"]} | {pt["members_per_device"]:g} | '
                 f'{pt["flops"] / 1e6:.1f} | {1e3 * pt["step_s"]:.2f} | '
                 f'{1e3 * pt["fitted_step_s"]:.2f} | {pt["compile_s"]:.1f} |')
  if c.get('per_width'):
    lines += ['', 'Per width alone: ' + '; '.join(
        f'hidden {h}: step_overhead_s {f["step_overhead_s"]:.3g}, flops_per_s '
        f'{f["flops_per_s"]:.3g} (R^2 {f["r2"]:.3f})' for h, f in c['per_width'].items()) + '.']
  m = c.get('with_member_overhead')
  if m:
    lines += ['', 'With a fixed cost per member-step as a third term (not in the cost model): '
              f'step_overhead_s {m["step_overhead_s"]:.3g}, member_step_s '
              f'{m["member_step_s"]:.3g}, flops_per_s {m["flops_per_s"]:.3g} (largest relative '
              f'residual {m["max_rel_residual"]:.2f}).']
  lines += ['', f'Fitted: step_overhead_s = {c["step_overhead_s"]:.3g}, flops_per_s = '
            f'{c["flops_per_s"]:.3g}. For `research.structure.COST`:', '', '```python',
            c['paste'], '```', '']
  return lines


if __name__ == '__main__':
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
