"""Reproducer: XLA:CPU processes that stop at 0% CPU in the members' initialisation.

A *child* run (the default mode) builds what the lstm_variants study trains for
one (variant, hidden size): an 8-member population of the NIAF LSTM on JSB
Chorales with the study's random-search hyperparameters, then ``--runs`` times
initialises the population, evaluates it on the test split and ``device_get``s
the result. ``--init=vmap`` initialises with ``jax.jit(jax.vmap(init_member))``
(the members' orthogonal initialisers become batched LAPACK QR calls);
``--init=map`` uses ``Trainer.init`` as the lab does now (``lax.map``: one
member after another).

``--model=jax_only`` drops the lab: ``jax.jit(jax.vmap(f))`` over ``--members``
PRNG keys of ``f = jax.nn.initializers.orthogonal()`` for an (H, 4H) matrix,
either as one (H, 4H) call (``--shape=single``) or as 4 independent (H, H)
blocks, as the lab's cells build their recurrent matrices (``--shape=stacked``).

A *driver* (``--processes=P``) starts P children one after another with the
same settings, calls a child hung when its CPU time (utime + stime in
/proc/<pid>/stat, all threads) grows by at most ``--idle_ticks`` ticks in
``--window_s`` seconds (the waiting main thread of a hung jaxlib 0.10.0 process
still used about 4 ticks in 15 s), or timed out after ``--timeout_s``; it kills such a
child (after ``gdb -batch -ex 'thread apply all bt'`` with ``--gdb``) and prints
a table.

  # old path, one CPU device, 30 processes of 5 runs each
  nice -n 10 python scripts/lapack_hang.py --processes=30 --devices=1 --init=vmap
  # the lab's path
  nice -n 10 python scripts/lapack_hang.py --processes=50 --devices=1 --init=map
  # jax alone
  nice -n 10 python scripts/lapack_hang.py --processes=30 --devices=1 --model=jax_only \
      --shape=stacked --runs=20

``--devices`` sets the number of XLA CPU devices: 0 = the lab's default (one per
usable core, research/devices.py), 1 = one device (as RESEARCH_CPU_DEVICES=1).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = '/work/shared/data/JSB_Chorales.mat'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--init', choices=('vmap', 'map'), default='vmap')
  p.add_argument('--runs', type=int, default=5, help='init+evaluate+device_get per process')
  p.add_argument('--model', choices=('lab', 'jax_only'), default='lab')
  p.add_argument('--devices', type=int, default=0,
                 help='XLA CPU devices: 0 = the lab default (one per usable core)')
  p.add_argument('--xla_flags', default='', help='appended to XLA_FLAGS, e.g. '
                 '--xla_cpu_multi_thread_eigen=false')
  p.add_argument('--async_dispatch', choices=('default', 'off'), default='default',
                 help="off: jax.config.update('jax_cpu_enable_async_dispatch', False)")
  # the population (lab model)
  p.add_argument('--cell', default='lstm', choices=('lstm', 'gru', 'elman'))
  p.add_argument('--variant', default='NIAF')
  p.add_argument('--hidden', type=int, default=32)
  p.add_argument('--members', type=int, default=8)
  p.add_argument('--data', default=os.environ.get('JSB_PATH', DEFAULT_DATA),
                 help='JSB_Chorales.mat (or a file in its format)')
  p.add_argument('--shape', choices=('single', 'stacked'), default='stacked',
                 help='jax_only: one (H, 4H) orthogonal matrix or 4 (H, H) blocks')
  p.add_argument('--timing', action='store_true',
                 help='also time lower/compile of the init separately (child)')
  # driver
  p.add_argument('--processes', type=int, default=0, help='driver: children to run (0: child)')
  p.add_argument('--window_s', type=float, default=15.0,
                 help='driver: at most --idle_ticks CPU ticks in this long = hung')
  p.add_argument('--idle_ticks', type=int, default=10,
                 help='driver: CPU ticks (1/100 s) a hung child may still use per window '
                      '(a waiter that polls with a timeout wakes now and then)')
  p.add_argument('--timeout_s', type=float, default=300.0, help='driver: wall limit per child')
  p.add_argument('--gdb', action='store_true', help='driver: native stacks of hung children')
  p.add_argument('--stack_dir', default='/tmp/lapack_hang_stacks')
  p.add_argument('--json_out', default='', help='driver: append the summary (JSON) here')
  p.add_argument('--label', default='', help='driver: setting name in the table')
  return p.parse_args(argv)


CHILD_KEYS = ('init', 'runs', 'model', 'devices', 'xla_flags', 'async_dispatch', 'cell',
              'variant', 'hidden', 'members', 'data', 'shape', 'timing')


def setting_name(a) -> str:
  if a.label:
    return a.label
  parts = [a.model if a.model == 'jax_only' else f'{a.cell}/{a.variant} h{a.hidden}',
           f'K={a.members}', f'init={a.init}',
           'devices=default' if a.devices == 0 else f'devices={a.devices}']
  if a.model == 'jax_only':
    parts.append(f'shape={a.shape}')
  if a.xla_flags:
    parts.append(a.xla_flags)
  if a.async_dispatch == 'off':
    parts.append('async dispatch off')
  return ' '.join(parts)


# ---------------------------------------------------------------- child


def emit(**record) -> None:
  print(json.dumps(record), flush=True)


def child(a) -> None:
  flags = os.environ.get('XLA_FLAGS', '')
  if a.xla_flags:
    os.environ['XLA_FLAGS'] = f'{flags} {a.xla_flags}'.strip()
  sys.path.insert(0, str(REPO))
  from research.devices import configure_cpu_devices
  configure_cpu_devices(a.devices or None)  # None: the lab's default; 1: leaves one device

  import jax
  import jax.numpy as jnp
  import numpy as np
  if a.async_dispatch == 'off':
    jax.config.update('jax_cpu_enable_async_dispatch', False)
  emit(event='start', pid=os.getpid(), jax=jax.__version__,
       jaxlib=__import__('jaxlib').__version__, devices=len(jax.devices()),
       xla_flags=os.environ.get('XLA_FLAGS', ''),
       async_dispatch=jax.config.read('jax_cpu_enable_async_dispatch'))

  if a.model == 'jax_only':
    H, G = a.hidden, 4
    ortho = jax.nn.initializers.orthogonal()

    def one(key):
      if a.shape == 'single':
        return ortho(key, (H, G * H), jnp.float32)
      return jnp.concatenate([ortho(k, (H, H), jnp.float32) for k in jax.random.split(key, G)],
                             axis=1)

    init = jax.jit(jax.vmap(one)) if a.init == 'vmap' else jax.jit(lambda k: jax.lax.map(one, k))
    keys = jax.random.split(jax.random.PRNGKey(0), a.members)
    for i in range(a.runs):
      emit(event='run_start', i=i)
      t0 = time.perf_counter()
      out = jax.device_get(init(keys))
      emit(event='run_done', i=i, init_s=time.perf_counter() - t0, checksum=float(np.sum(out)))
    emit(event='done')
    return

  from research import population
  from research.data import load_dataset
  from research.experiments import lstm_variants
  from research.experiments.common import variant_config
  from research.tasks import make_task
  from research.train import Trainer, batch_split, member_sharding

  # One (variant, hidden) population of the lstm_variants study (full budget): the
  # random-search hyperparameters and member seeds it draws for this variant and size.
  v_index = lstm_variants.VARIANTS.index(a.variant) if a.variant in lstm_variants.VARIANTS else 0
  sizes = lstm_variants.BUDGETS['full']['hidden']
  h_index = sizes.index(a.hidden) if a.hidden in sizes else 0
  trials = lstm_variants.sample_trials(a.members, seed=100 * h_index + v_index)
  arg = f'cell={a.cell},hidden={a.hidden}' + (f',variant={a.variant}' if a.cell == 'lstm' else '')
  config = variant_config('configs/music.py', arg, **{
      'data.path': a.data, 'optim.name': 'sgd', 'population_mode': 'zip',
      'population': lstm_variants._population(trials, 1000 * h_index + 100 * v_index),
      'train.progress': False})
  task = make_task(config.task)
  members = population.expand(config, task.hparam_keys)
  dataset = load_dataset(config.data)
  trainer = Trainer(config, dataset, members, task)
  shard, replicated = member_sharding(len(members))
  put = (lambda x: jax.device_put(x, shard)) if shard else jnp.asarray
  put_shared = (lambda x: jax.device_put(x, replicated)) if replicated else jnp.asarray
  hp = jax.tree.map(put, population.stack(members))
  test = jax.tree.map(put_shared, batch_split(dataset.test, int(config.train.eval_batch_size)))
  def make_init():
    if a.init == 'vmap':
      return jax.jit(jax.vmap(trainer.init_member))  # the old path
    return jax.jit(lambda hp: jax.lax.map(trainer.init_member, hp))  # as Trainer.init

  init = make_init() if a.init == 'vmap' else trainer.init
  emit(event='built', members=len(members), sharded=shard is not None)

  for i in range(a.runs):
    emit(event='run_start', i=i)
    t0 = time.perf_counter()
    state = init(hp)
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    if shard is not None:  # as train_and_evaluate
      state = jax.device_put(state, shard)
    out = jax.device_get(trainer.evaluate(state.params, state.model_state, hp, test))
    emit(event='run_done', i=i, init_s=t1 - t0, eval_s=time.perf_counter() - t1,
         test_loss=[float(x) for x in np.asarray(out['loss'])])

  if a.timing:  # a fresh trace and compile of the same init, then executions of it
    fresh = make_init()
    t0 = time.perf_counter()
    lowered = fresh.lower(hp)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    execs = []
    for _ in range(10):
      t = time.perf_counter()
      jax.block_until_ready(compiled(hp))
      execs.append(time.perf_counter() - t)
    emit(event='timing', lower_s=t1 - t0, compile_s=t2 - t1, exec_s=execs)
  emit(event='done')


# ---------------------------------------------------------------- driver


def cpu_ticks(pid: int) -> int | None:
  try:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
  except (FileNotFoundError, ProcessLookupError):
    return None
  return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def native_stacks(pid: int, path: Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    r = subprocess.run(['gdb', '-p', str(pid), '-batch', '-ex', 'info threads',
                        '-ex', 'thread apply all bt'], capture_output=True, text=True,
                       timeout=180)
    path.write_text(r.stdout + '\n--- stderr ---\n' + r.stderr)
  except (OSError, subprocess.TimeoutExpired) as e:
    path.write_text(f'gdb failed: {e}\n')


def run_child(a, index: int, log_dir: Path) -> dict:
  cmd = [sys.executable, str(Path(__file__).resolve())]
  for k in CHILD_KEYS:
    v = getattr(a, k)
    if isinstance(v, bool):
      cmd += [f'--{k}'] if v else []
    else:
      cmd.append(f'--{k}={v}')
  out_path, err_path = log_dir / f'child{index}.out', log_dir / f'child{index}.err'
  with out_path.open('w') as out, err_path.open('w') as err:
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO)
    t_start = time.time()
    history = collections.deque()  # (time, CPU ticks) over the last window
    status = None
    while status is None:
      time.sleep(0.5)
      if proc.poll() is not None:
        status = 'ok' if proc.returncode == 0 else f'exit {proc.returncode}'
        break
      ticks = cpu_ticks(proc.pid)
      now = time.time()
      if ticks is not None:
        history.append((now, ticks))
        while len(history) > 1 and now - history[1][0] >= a.window_s:
          history.popleft()
        t0, ticks0 = history[0]
        if now - t0 >= a.window_s and ticks - ticks0 <= a.idle_ticks:
          status = 'hung'
      if status is None and now - t_start >= a.timeout_s:
        status = 'timeout'
    stack_file = None
    if status in ('hung', 'timeout'):
      if a.gdb:
        stack_file = Path(a.stack_dir) / f'{int(t_start)}-{proc.pid}-{status}.txt'
        native_stacks(proc.pid, stack_file)
      proc.kill()
      proc.wait()
  records = []
  for line in out_path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  done = [r for r in records if r.get('event') == 'run_done']
  started = [r for r in records if r.get('event') == 'run_start']
  info = next((r for r in records if r.get('event') == 'start'), {})
  timing = next((r for r in records if r.get('event') == 'timing'), None)
  result = {'status': status, 'pid': proc.pid, 'wall_s': time.time() - t_start,
            'runs_done': len(done), 'runs_started': len(started),
            'init_s': [r['init_s'] for r in done], 'info': info, 'timing': timing,
            'stack_file': str(stack_file) if stack_file else None}
  if status not in ('ok', 'hung', 'timeout'):
    result['stderr_tail'] = err_path.read_text()[-2000:]
  return result


def driver(a) -> dict:
  log_dir = Path(a.stack_dir) / 'logs' / f'{int(time.time())}-{os.getpid()}'
  log_dir.mkdir(parents=True, exist_ok=True)
  name = setting_name(a)
  results = []
  for i in range(a.processes):
    r = run_child(a, i, log_dir)
    results.append(r)
    extra = f' (hung in run {r["runs_started"] - 1})' if r['status'] == 'hung' else ''
    print(f'[{name}] process {i + 1}/{a.processes}: {r["status"]}{extra}, '
          f'{r["runs_done"]} runs, {r["wall_s"]:.1f} s', flush=True)
  info = next((r['info'] for r in results if r['info']), {})
  firsts = [r['init_s'][0] for r in results if r['init_s']]
  later = [t for r in results for t in r['init_s'][1:]]
  summary = {
      'setting': name, 'jax': info.get('jax'), 'jaxlib': info.get('jaxlib'),
      'devices': info.get('devices'), 'async_dispatch': info.get('async_dispatch'),
      'xla_flags': info.get('xla_flags'), 'processes': len(results),
      'runs_done': sum(r['runs_done'] for r in results),
      'hung': sum(r['status'] == 'hung' for r in results),
      'timeout': sum(r['status'] == 'timeout' for r in results),
      'errors': sum(r['status'] not in ('ok', 'hung', 'timeout') for r in results),
      'hung_in_run': [r['runs_started'] - 1 for r in results if r['status'] == 'hung'],
      'first_init_s_median': statistics.median(firsts) if firsts else None,
      'init_s_median': statistics.median(later) if later else None,
      'timing': [r['timing'] for r in results if r['timing']],
      'stack_files': [r['stack_file'] for r in results if r['stack_file']],
      'error_tails': [r['stderr_tail'] for r in results if 'stderr_tail' in r][:2],
      'log_dir': str(log_dir), 'window_s': a.window_s, 'idle_ticks': a.idle_ticks,
      'timeout_s': a.timeout_s,
      'runs_per_process': a.runs}
  print()
  print('| setting | jax | processes | runs (init+eval+get) | hung processes | timeouts | errors |')
  print('|---|---|---|---|---|---|---|')
  print(f'| {name} | {summary["jax"]} | {summary["processes"]} | {summary["runs_done"]} | '
        f'{summary["hung"]} | {summary["timeout"]} | {summary["errors"]} |')
  if summary['init_s_median'] is not None:
    print(f'init: first call (trace+compile+run) median {summary["first_init_s_median"]:.3f} s, '
          f'later calls median {summary["init_s_median"] * 1e3:.1f} ms')
  for t in summary['timing']:
    print(f'timing: lower {t["lower_s"]:.3f} s, compile {t["compile_s"]:.3f} s, '
          f'execute median {statistics.median(t["exec_s"]) * 1e3:.2f} ms')
  for tail in summary['error_tails']:
    print('--- child stderr ---\n' + tail)
  if a.json_out:
    with open(a.json_out, 'a') as f:
      f.write(json.dumps(summary) + '\n')
  return summary


def main(argv=None) -> int:
  a = parse_args(argv)
  if a.processes > 0:
    s = driver(a)
    return 0 if s['errors'] == 0 else 1
  child(a)
  return 0


if __name__ == '__main__':
  sys.exit(main())
