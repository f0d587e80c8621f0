"""``kill -9`` at the moments the population changes shape or state, then a resume:
right after PBT exploited a population that compaction had already repacked, right
after an exploit before the repack, and right after a repack without PBT. The
resumed run must end bit-identical to an uninterrupted one: results.json, the
metrics.jsonl records (but for wall times) and every array of the final checkpoint.

The runs are `scripts/train.py` subprocesses (the killed one and its resume) on one
CPU device (``RESEARCH_CPU_DEVICES=1``), like the uninterrupted reference trained
in this process.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from research.train import load_trained, train_and_evaluate
from tests.helpers import kill_when_checkpointed, run_train, small_mnist1d

POP = 'seed=0,1,2,3 optim.lr=0.3,1e-3,0.1,3e-3'
# PBT every 2 evaluations (half the explored values resampled) and patience 4: with this
# population members are exploited after epochs 2, 4 and 6, two stop at 5 and the
# program is repacked to the other two, which train to epoch 8 (checked below).
PBT = {'train.epochs': 14, 'train.patience': 4, 'train.compact': 0.75, 'population': POP,
       'population_mode': 'zip',
       'train.pbt': 'every=2,fraction=0.25,keys=optim.lr,explore=resample,resample_p=0.5'}
COMPACT = {'train.epochs': 10, 'train.patience': 1, 'train.compact': 0.75, 'population': POP,
           'population_mode': 'zip'}


def flags(overrides: dict) -> list[str]:
  """scripts/train.py flags for small_mnist1d(**overrides) (the rest are SMALL_MNIST1D's)."""
  return ['--config.train.eval_every=1'] + [f'--config.{k}={v}' for k, v in overrides.items()]


def records(workdir):
  out = []
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    r = json.loads(line)
    r.pop('time_s'), r.pop('perf/examples_per_s')
    out.append(r)
  return out


def comparable(results: dict) -> dict:
  """results.json without what differs between any two runs (times, provenance)."""
  drop = {'provenance', 'train_time_s', 'first_epoch_s'}
  return {k: v for k, v in results.items() if k not in drop}


def on_device_rows(workdir) -> dict[int, set[int]]:
  """Members with a record at each epoch (the rows the program trained)."""
  rows: dict[int, set[int]] = {}
  for r in records(workdir):
    rows.setdefault(r['epoch'], set()).add(r['member'])
  return rows


def kill_and_resume(tmp_path, overrides: dict, kill_at) -> tuple[dict, dict]:
  config = small_mnist1d(**overrides)
  ref = train_and_evaluate(config, tmp_path / 'ref')
  step = kill_at(ref, tmp_path / 'ref')
  rows = on_device_rows(tmp_path / 'ref')
  assert max(rows) >= step + 2, 'too few evaluations after the kill point to kill in time'
  env = {**os.environ, 'RESEARCH_CPU_DEVICES': '1'}
  work = tmp_path / 'killed'
  kill_when_checkpointed(work, step, *flags(overrides), env=env)
  resumed = run_train(work, *flags(overrides), env=env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  a = json.loads((tmp_path / 'ref/results.json').read_text())
  b = json.loads((work / 'results.json').read_text())
  assert comparable(a) == comparable(b)  # bit-identical numbers, same lineage and records
  assert records(work) == records(tmp_path / 'ref')
  # every array of the final state: parameters, best parameters, optimizer state, rng
  states = [load_trained(config, wd)[3] for wd in (tmp_path / 'ref', work)]
  leaves = [jax.tree_util.tree_leaves_with_path(s) for s in states]
  assert [p for p, _ in leaves[0]] == [p for p, _ in leaves[1]]
  for (path, x), (_, y) in zip(*leaves):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))
  return a, rows


def exploit_after_repack(ref, workdir) -> int:
  """The first epoch at which PBT exploited a repacked population."""
  rows = on_device_rows(workdir)
  repacked = min(e for e in rows if len(rows[e]) < 4) - 1  # repack after this evaluation
  return min(e['epoch'] for e in ref['pbt_lineage'] if e['epoch'] > repacked)


def test_kill_9_after_pbt_exploits_a_repacked_population_resumes_bit_identically(tmp_path):
  out, rows = kill_and_resume(tmp_path, PBT, exploit_after_repack)
  assert len(rows[1]) == 4 and min(len(r) for r in rows.values()) < 4  # it was repacked
  assert {e['epoch'] for e in out['pbt_lineage']} >= {2, 4, 6}
  assert {how for e in out['pbt_lineage'] for how in e['explore'].values()} == \
      {'perturb', 'resample'}


@pytest.mark.slow
def test_kill_9_after_an_exploit_before_the_repack_resumes_bit_identically(tmp_path):
  # killed after the first exploit: the resumed run repacks and exploits again itself
  kill_and_resume(tmp_path, PBT, lambda ref, wd: min(e['epoch'] for e in ref['pbt_lineage']))


@pytest.mark.slow
def test_kill_9_right_after_a_repack_resumes_bit_identically(tmp_path):
  def repack(ref, workdir):  # the evaluation after which fewer members stay on the device
    rows = on_device_rows(workdir)
    return min(e for e in rows if len(rows[e]) < 4) - 1
  _, rows = kill_and_resume(tmp_path, COMPACT, repack)
  assert min(len(r) for r in rows.values()) < 4
