"""Population-based training against the same population without it (MNIST-1D, MLP).

Jaderberg et al. 2017 ("Population Based Training of Neural Networks") train a
population whose worst members periodically copy the weights of better ones
(exploit) and perturb their hyperparameters (explore), and report models at
least as good as random search or hand tuning at the same compute, with
schedules no fixed setting has. Here the control is exact: the same members
(seeds and initial learning rates drawn log-uniformly) train once as a plain
population, which is random search over the learning rate, and once with PBT
(`research/pbt.py`: truncation selection of the worst and best quarter every
``every`` evaluations, the learning rate scaled by 0.8 or 1.2), both as one
compiled program, for several populations. Reported: the validation accuracy of
each arm's best member, the test accuracy of that member (selected on
validation), and the learning rates PBT ends with; ``pbt.png`` (population 0)
shows every member's learning rate per epoch, the copies, and its validation
accuracy.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from research import results
from research.analysis import curves
from research.experiments import register
from research.experiments.common import train_variant, write_report

SOURCE = 'Jaderberg et al. 2017: PBT at least matches random search at equal compute'
BUDGETS = {
    'full': dict(members=8, populations=3, epochs=60, every=5),
    'smoke': dict(members=4, populations=1, epochs=4, every=1),
}
LR_RANGE = (1e-4, 3e-1)


def draw_population(members: int, index: int) -> str:
  """Seeds and log-uniform learning rates of population ``index`` (zip population)."""
  rng = np.random.default_rng(1000 + index)
  lrs = 10 ** rng.uniform(np.log10(LR_RANGE[0]), np.log10(LR_RANGE[1]), members)
  seeds = range(100 * index, 100 * index + members)
  return (f'seed={",".join(map(str, seeds))} '
          f'optim.lr={",".join(f"{x:.6g}" for x in lrs)}')


@register('pbt')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  arms = {'random search': '', 'PBT': f'every={b["every"]},fraction=0.25,keys=optim.lr'}
  found: dict[str, dict[str, list]] = {a: {'val': [], 'test': [], 'final_lr': []} for a in arms}
  dirs: dict[str, Path] = {}
  for p in range(b['populations']):
    for arm, spec in arms.items():
      wd = workdir / f'{"pbt" if spec else "plain"}_{p}'
      dirs.setdefault(arm, wd)
      out = train_variant(
          'configs/mnist1d.py', 'model=mlp', wd, population=draw_population(b['members'], p),
          population_mode='zip', **{'train.epochs': b['epochs'], 'train.eval_every': 1,
                                    'train.patience': 0, 'train.pbt': spec,
                                    'train.progress': False})
      ok = [m for m in out['members'] if not m['diverged']]
      best = max(ok, key=lambda m: m['val/accuracy'])
      found[arm]['val'].append(best['val/accuracy'])
      found[arm]['test'].append(best['test/accuracy'])
      found[arm]['final_lr'].append(
          (best.get('final_hparams') or best['hparams'])['optim.lr'])
  wall = time.time() - t0
  rows = []
  for arm in arms:
    rows.append(results.row(arm, 'best_val_accuracy', found[arm]['val']))
    rows.append(results.row(arm, 'test_accuracy_of_best', found[arm]['test'], None,
                            SOURCE if arm == 'PBT' else None))
  curves.plot_curves(dirs, 'val/accuracy', workdir / 'curves.png',
                     title='MNIST-1D validation accuracy, population 0 (mean ± std over members)',
                     scale=100)
  # population 0's schedules, copies and validation curves (train.py draws pbt.png)
  images = {'validation curves': 'curves.png'}
  if (dirs['PBT'] / 'pbt.png').exists():
    shutil.copyfile(dirs['PBT'] / 'pbt.png', workdir / 'pbt.png')
    images['PBT, population 0: learning rate per member, copies and validation accuracy'] = \
        'pbt.png'
  out = results.write(workdir / 'results.json', 'pbt', rows, budget=budget, wall_time_s=wall,
                      arms={a: {k: [float(x) for x in v] for k, v in d.items()}
                            for a, d in found.items()})
  table = results.markdown_table(rows, scale=100, digits=1)
  lr_line = ', '.join(f'{x:.3g}' for x in found['PBT']['final_lr'])
  write_report(
      workdir, 'Population-based training vs the same population without it (MNIST-1D MLP)',
      f'Budget `{budget}`: {b["populations"]} populations of {b["members"]} members (seeds and '
      f'learning rates log-uniform in {LR_RANGE}), Adam, {b["epochs"]} epochs; PBT every '
      f'{b["every"]} evaluations (worst quarter copies the best quarter, lr x 0.8 or 1.2). '
      'Accuracies in %: the best member by validation accuracy, and its test accuracy.',
      [table, f'Learning rate of PBT\'s best member at the end, per population: {lr_line}.'],
      images, wall)
  print(table)
  return out
