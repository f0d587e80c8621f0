"""A sweep worker with a stand-in trainer, for tests/test_sweep.py (run as a script too).

The stand-in keeps the sweep machinery real (Optuna storage, locks, batching,
recovery) and replaces training by a known function of the hyperparameters:
val/nelbo = 100 + (log10 lr + 3)^2 + (beta - 1)^2 (+ 1 for sgd), a member with
lr > ``DIVERGE_LR`` diverges (NaN), each member reports ``STEPS`` steps. Every
call appends its population to ``calls.jsonl`` in the sweep workdir, and sleeps
``SLEEP`` seconds.
"""
import json
import math
import sys
import time
from pathlib import Path

from research import cli, population
from research.sweep import runner
from research.sweep.space import Choice, Float

DIVERGE_LR = 1.0
SLEEP = 0.0
STEPS = 10  # the steps every member reports

SPACE = {
    'optim.lr': Float(1e-4, 1e-2, log=True, grid=(1e-4, 1e-3, 1e-2)),
    'task.beta': Float(0.5, 2.0),
    'optim.name': Choice(('adam', 'sgd')),
    'optim.momentum': Float(0.0, 0.99, when={'optim.name': 'sgd'}, grid=(0.5, 0.9)),
}


def objective(m, name):
  return 100 + (math.log10(m['optim.lr']) + 3) ** 2 + (m['task.beta'] - 1) ** 2 + (name == 'sgd')


def fake_train(config, run_dir):
  members = population.expand(config, ('task.beta', 'task.free_bits', 'task.anneal_steps'))
  names = [m.get('optim.name', config.optim.name) for m in members]
  with open(Path(run_dir).parents[1] / 'calls.jsonl', 'a') as f:
    f.write(json.dumps({'run': Path(run_dir).name, 'names': names,
                        'batch_size': config.train.batch_size,
                        'population': config.population, 'members': members}) + '\n')
  time.sleep(SLEEP)
  out = []
  for i, (m, name) in enumerate(zip(members, names)):
    bad = m['optim.lr'] > DIVERGE_LR
    v = float('nan') if bad else objective(m, name)
    out.append({'member': i, 'hparams': m, 'diverged': bad, 'val/nelbo': v, 'test/nelbo': v + 1,
                'steps': STEPS})
  return {'members': out}


def base_config():
  c = cli.load_config('configs/vae_digits.py', 'quick')
  c.lock()
  return c


def sweep(workdir, method, trials, batch=4, space=None, **kw):
  return runner.run_sweep(base_config(), space or SPACE, method, trials, workdir, batch=batch,
                          train_fn=fake_train, **kw)


if __name__ == '__main__':  # workdir method trials batch sleep [storage heartbeat_s [start_at]]
  SLEEP = float(sys.argv[5])
  extra = dict(storage=sys.argv[6], heartbeat_s=int(sys.argv[7])) if len(sys.argv) > 6 else {}
  if len(sys.argv) > 8:  # start the sweep at this time.time() (workers started together)
    time.sleep(max(0.0, float(sys.argv[8]) - time.time()))
  sweep(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), **extra)
