"""Streaming input (``data.stream``, research/stream.py): the training split stays on the
host and goes to the devices a chunk at a time, and the run computes exactly what the
device-resident run computes: the same shuffles, the same rng at every epoch's end, the
same parameters, metrics, records and results, bit for bit.

Populations of two members with dropout, input noise and augmentation (every random
stream of a step), chunks that do not divide the epoch (a shorter last chunk), a
variable-length dataset (``lengths``), a population compacted to fewer rows, a resume
from a checkpoint, and (4 forced CPU devices, a subprocess) a 2 x 2 member x data mesh.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from research import cli, configlib, stream, train
from tests.helpers import REPO, small_mnist1d

# every random stream of a training step: dropout, input noise, augmentation
NOISY = {'population': 'seed=0,1', 'model.dropout': 0.1, 'train.input_noise': 0.05,
         'train.augment': 'jitter=0.03', 'data.stream_chunk': 3}  # 7 steps: chunks 3, 3, 1


def assert_trees_equal(a, b, what):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb], what
  for (path, x), (_, y) in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, (what, jax.tree_util.keystr(path))
    np.testing.assert_array_equal(x, y, err_msg=f'{what} {jax.tree_util.keystr(path)}')


def epochs(config, n, keep=None):
  """``n`` epochs of ``config``'s trainer from its initial state; then, with ``keep``
  (row indices), one more epoch of only those rows, as after a compaction."""
  run = train.setup(config)
  state, hp = run.init_state(), run.hp
  out = []
  for _ in range(n):
    state, m = run.trainer.train_epoch(state, hp, run.train_data)
    out.append(m)
  if keep is not None:
    rows = lambda t: jax.tree.map(lambda a: a[np.asarray(keep)], t)
    state, hp = rows(jax.device_get(state)), rows(hp)
    state, m = run.trainer.train_epoch(jax.tree.map(jax.numpy.asarray, state), hp,
                                       run.train_data)
    out.append(m)
  return run, jax.device_get(state), jax.device_get(out)


def test_streamed_epochs_equal_resident_epochs_with_every_random_stream():
  resident_run, resident, r_metrics = epochs(small_mnist1d(**NOISY), 2, keep=[1])
  streamed_run, streamed, s_metrics = epochs(small_mnist1d(**NOISY, **{'data.stream': True}),
                                             2, keep=[1])
  assert streamed_run.trainer.stream and not resident_run.trainer.stream
  # the split stays in host memory; the resident one is a device array
  assert all(isinstance(v, np.ndarray) for v in streamed_run.train_data.values())
  assert all(isinstance(v, jax.Array) for v in resident_run.train_data.values())
  assert streamed_run.trainer.steps_per_epoch == 7 and streamed_run.trainer.stream_chunk == 3
  # metrics per epoch in the resident shapes: (K, steps), then (1, steps) after compaction
  assert [m['loss'].shape for m in s_metrics] == [(2, 7), (2, 7), (1, 7)]
  assert_trees_equal(r_metrics, s_metrics, 'metrics')
  assert_trees_equal(resident, streamed, 'state')  # params, optimizer state, rng, flags
  assert resident.step.tolist() == [21]


def test_streamed_variable_length_data_equals_resident():
  def config(**kw):
    c = cli.load_config(str(REPO / 'configs/synthetic.py'), 'task=adding_hs,T=12')
    c.data.num_train, c.data.num_val, c.data.num_test = 120, 40, 40
    c.model = configlib.model(dict(name='mlp', hidden=8))
    c.train.batch_size = 20
    c.train.progress = False
    return configlib.with_values(c, {'population': 'seed=0,1', 'train.input_noise': 0.05,
                                     'data.stream_chunk': 4, **kw})

  run, resident, r_metrics = epochs(config(), 2)
  assert 'lengths' in run.train_data and len(set(run.dataset.train['lengths'])) > 1
  _, streamed, s_metrics = epochs(config(**{'data.stream': True}), 2)
  assert_trees_equal(r_metrics, s_metrics, 'metrics')
  assert_trees_equal(resident, streamed, 'state')


def _records(workdir):
  recs = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  for r in recs:
    r.pop('time_s'), r.pop('perf/examples_per_s')
  return recs


def _member_results(out):
  return [{k: v for k, v in m.items()} for m in out['members']]


def test_streamed_run_equals_resident_run_and_resumes_like_it(tmp_path):
  kw = {**NOISY, 'train.epochs': 4, 'train.checkpoint_keep': 100}
  resident = train.train_and_evaluate(small_mnist1d(**kw), tmp_path / 'resident')
  streamed = train.train_and_evaluate(small_mnist1d(**kw, **{'data.stream': True}),
                                      tmp_path / 'streamed')
  assert _member_results(streamed) == _member_results(resident)  # bit-identical
  assert streamed['rows'] == resident['rows']
  assert _records(tmp_path / 'streamed') == _records(tmp_path / 'resident')
  # As if killed right after the checkpoint of epoch 2: the resumed run ends the same.
  work = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'streamed', work)
  for p in (work / 'checkpoints').iterdir():
    if p.name.isdigit() and int(p.name) > 2:
      shutil.rmtree(p)
  (work / 'results.json').unlink()
  resumed = train.train_and_evaluate(small_mnist1d(**kw, **{'data.stream': True}), work)
  assert _member_results(resumed) == _member_results(resident)
  assert _records(work) == _records(tmp_path / 'resident')


_MESH = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.helpers import small_mnist1d
    from research import train
    out = {}
    for s in (False, True):
      c = small_mnist1d(**{'population': 'seed=0,1', 'model.dropout': 0.1,
                           'train.input_noise': 0.05, 'data.stream': s,
                           'data.stream_chunk': 3, 'train.data_parallel': 2})
      run = train.setup(c)
      state = run.init_state()
      for _ in range(2):
        state, m = run.trainer.train_epoch(state, run.hp, run.train_data)
      leaves = jax.tree.leaves(jax.device_get((state, m)))
      out[s] = {'mesh': [run.layout.members, run.layout.data],
                'leaves': [np.asarray(x).tolist() for x in leaves]}
    print('RESULT ' + json.dumps({'mesh': out[True]['mesh'],
                                  'equal': out[False]['leaves'] == out[True]['leaves']}))
''')


def test_streamed_chunks_on_a_member_x_data_mesh_equal_resident(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, '-c', _MESH, str(REPO)], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT ', 1)[1])
  assert out['mesh'] == [2, 2]  # members over 2 devices, each batch over 2
  assert out['equal']


def test_chunks_and_prefetch():
  mib = 1 << 20
  assert stream.chunk_size(36, 0, 49_200) == 36  # MNIST-1D: the epoch is one chunk
  assert stream.chunk_size(36, 0, 2 * mib) == 8 and stream.chunk_size(36, 0, 3 * mib) == 5
  assert stream.chunk_size(37, 0, 1.5 * mib) == 10  # 4 chunks: 10, 10, 10, 7
  assert stream.chunk_size(36, 0, 64 * mib) == 1
  assert stream.chunk_size(36, 5) == 5 and stream.chunk_size(4, 10) == 4
  assert stream.step_bytes({'x': np.zeros((9, 40), np.float32), 'y': np.zeros(9, np.int32)},
                           3, 100) == 3 * 100 * 164
  assert stream.chunk_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
  with pytest.raises(ValueError, match='data.stream_chunk'):
    stream.chunk_size(10, -1)
  assert list(stream.prefetch(lambda i: i * i, range(5))) == [0, 1, 4, 9, 16]

  def bad(i):
    if i == 2:
      raise RuntimeError('gather failed')
    return i
  got = []
  with pytest.raises(RuntimeError, match='gather failed'):
    for v in stream.prefetch(bad, range(5)):
      got.append(v)
  assert got == [0, 1]
  # a consumer that stops early stops the thread
  gen = stream.prefetch(lambda i: i, range(1000), depth=1)
  assert next(gen) == 0
  gen.close()
  assert not any(t.name == 'stream-prefetch' for t in __import__('threading').enumerate())


def test_benchmark_case_times_both_and_checks_equality():
  from research import benchmark as bm
  case = bm.stream_case('configs/mnist1d.py:model=mlp', rounds=2, chunk=3, overrides={
      'data.num_samples': 500, 'model.hidden': 16, 'train.batch_size': 50,
      'population': 'seed=0,1'})
  assert set(case['candidates']) == {'resident', 'streamed'}
  assert case['equal'] and case['ratio'] > 0 and case['chunk'] == 3
  assert case['epochs_each'] == 3 and case['members'] == 2
  for r in case['candidates'].values():
    assert r['rounds'] == 2 and r['examples_per_s'] > 0
