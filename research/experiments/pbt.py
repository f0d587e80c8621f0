"""Population-based training against random search and ASHA at equal compute (digits VAE).

Jaderberg et al. 2017 ("Population Based Training of Neural Networks") train a
population whose worst members periodically copy the weights of better ones
(exploit) and perturb their hyperparameters (explore), and report models at
least as good as random search or hand tuning at the same compute, with
learning-rate schedules no fixed setting has. Here three arms search Adam's
learning rate for the digits VAE (`configs/vae_digits.py`; 30 epochs: past
about 30 the VAE overfits its 1000 training images and every arm's best is its
early-stopping point, within 30 the rate and how it changes decide how far a
member gets), each as one compiled population per sweep seed, at (close to)
equal member-steps:

* ``random``: K members with seeds and learning rates drawn log-uniformly,
  trained the full budget (random search);
* ``pbt``: the same K members with ``train.pbt`` (the worst quarter copies the
  best quarter every ``every`` evaluations, the rate times 0.8 or 1.2);
* ``asha``: N > K members from the same draws (the first K are the random
  arm's) with ``train.prune=asha`` (successive halving at rungs; compaction
  drops the pruned), N chosen so that ASHA's planned member-steps are those
  of K members trained the full budget (`asha_members`).

Reported per arm: the best validation negative ELBO of its best member, that
member's test value (selected on validation), the member-steps each member
trained (summed) and the rows x steps the program computed, and wall time;
``pbt.png`` (seed 0) shows PBT's learning rate per member, the copies, and the
validation curves.
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
    'full': dict(members=8, seeds=(0, 1, 2), epochs=30, eval_every=2, every=2, eta=3, min=1),
    'smoke': dict(members=4, seeds=(0,), epochs=4, eval_every=1, every=1, eta=2, min=1),
}
LR_RANGE = (1e-4, 1e-2)  # configs/vae_digits.py's 'small' space
ARMS = {'random': 'random search', 'pbt': 'PBT', 'asha': 'ASHA'}


def asha_planned_evaluations(n: int, evaluations: int, eta: int, min_: int) -> int:
  """Member-evaluations synchronous successive halving trains with ``n`` members over
  ``evaluations`` evaluations (rungs after ``min * eta**k`` evaluations keep the best
  ``max(1, n // eta)``; `research.pruning`), assuming no ties."""
  total, done, k = 0, 0, 0
  while min_ * eta ** k < evaluations:
    rung = min_ * eta ** k
    total += n * (rung - done)
    done, n, k = rung, max(1, n // eta), k + 1
  return total + n * (evaluations - done)


def asha_members(members: int, evaluations: int, eta: int, min_: int) -> int:
  """The ASHA population whose planned member-evaluations come closest to
  ``members`` trained for all ``evaluations`` (ties: the smaller)."""
  target = members * evaluations
  return min(range(members, 50 * members + 1),
             key=lambda n: (abs(asha_planned_evaluations(n, evaluations, eta, min_) - target), n))


def draw_population(n: int, seed: int) -> str:
  """Seeds and log-uniform learning rates of ``n`` members for sweep seed ``seed``
  (zip population); the first k of n draws are the draws of k."""
  rng = np.random.default_rng(1000 + seed)
  lrs = 10 ** rng.uniform(np.log10(LR_RANGE[0]), np.log10(LR_RANGE[1]), n)
  return (f'seed={",".join(str(100 * seed + i) for i in range(n))} '
          f'optim.lr={",".join(f"{x:.6g}" for x in lrs)}')


def arm_overrides(arm: str, b: dict) -> tuple[int, dict]:
  """(members, train overrides) of an arm under budget ``b``."""
  if arm == 'pbt':
    return b['members'], {'train.pbt': f'every={b["every"]},fraction=0.25,keys=optim.lr'}
  if arm == 'asha':
    n = asha_members(b['members'], b['epochs'] // b['eval_every'], b['eta'], b['min'])
    return n, {'train.prune': f'asha:eta={b["eta"]},min={b["min"]}'}
  return b['members'], {}


@register('pbt')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  found = {a: {k: [] for k in ('val', 'test', 'final_lr', 'member_steps', 'computed_member_steps',
                               'wall_s', 'members')} for a in ARMS}
  dirs: dict[str, Path] = {}
  for seed in b['seeds']:
    for arm in ARMS:
      n, extra = arm_overrides(arm, b)
      wd = workdir / f'{arm}_seed{seed}'
      dirs.setdefault(ARMS[arm], wd)
      t = time.time()
      out = train_variant(
          'configs/vae_digits.py', f'epochs={b["epochs"]},patience=0', wd,
          population=draw_population(n, seed), population_mode='zip',
          **{'train.eval_every': b['eval_every'], 'train.progress': False, **extra})
      ok = [m for m in out['members'] if not m['diverged']]
      best = min(ok, key=lambda m: m['val/nelbo'])
      f = found[arm]
      f['val'].append(best['val/nelbo'])
      f['test'].append(best['test/nelbo'])
      f['final_lr'].append((best.get('final_hparams') or best['hparams'])['optim.lr'])
      f['member_steps'].append(int(sum(m['steps'] for m in out['members'])))
      f['computed_member_steps'].append(int((out.get('member_steps') or {}).get('computed', 0)))
      f['wall_s'].append(float(out.get('train_time_s') or time.time() - t))
      f['members'].append(n)
  wall = time.time() - t0
  base = sum(found['random']['member_steps'])
  rows = []
  for arm, label in ARMS.items():
    f = found[arm]
    rows.append(results.row(label, 'best_val_nelbo', f['val']))
    rows.append(results.row(label, 'test_nelbo_of_best', f['test'], None,
                            SOURCE if arm == 'pbt' else None))
    rows.append(results.row(label, 'member_steps_ratio', [sum(f['member_steps']) / base]))
  curves.plot_curves(dirs, 'val/nelbo', workdir / 'curves.png',
                     title='Digits VAE validation -ELBO, sweep seed 0 (mean ± std over members)')
  images = {'validation curves': 'curves.png'}
  if (dirs['PBT'] / 'pbt.png').exists():  # train.py draws it
    shutil.copyfile(dirs['PBT'] / 'pbt.png', workdir / 'pbt.png')
    images['PBT, sweep seed 0: learning rate per member, copies and validation -ELBO'] = 'pbt.png'
  out = results.write(workdir / 'results.json', 'pbt', rows, budget=budget, wall_time_s=wall,
                      settings=dict(b, seeds=list(b['seeds']), lr_range=list(LR_RANGE)),
                      arms={ARMS[a]: d for a, d in found.items()})
  table = arms_table(found)
  write_report(
      workdir, 'Population-based training vs random search and ASHA at equal compute '
               '(digits VAE)',
      f'Budget `{budget}`: per sweep seed ({list(b["seeds"])}), Adam\'s learning rate drawn '
      f'log-uniformly in {LR_RANGE} (with the member\'s seed), {b["epochs"]} epochs, evaluated '
      f'every {b["eval_every"]}. Random search and PBT train the same {b["members"]} members; '
      f'PBT every {b["every"]} evaluations (worst quarter copies the best quarter, lr x 0.8 '
      f'or 1.2). ASHA (eta={b["eta"]}, min={b["min"]} evaluation) trains '
      f'{found["asha"]["members"][0]} members, the first {b["members"]} the same draws, sized '
      'for the same planned member-steps. Negative ELBO in nats per image: the best member by '
      'validation value, and its test value.',
      [table, results.markdown_table(rows, digits=2)], images, wall)
  print(table)
  return out


def arms_table(found: dict) -> str:
  lines = ['| arm | members | best val -ELBO | test -ELBO of best | member-steps (computed) | '
           'learning rate of the best member at the end | wall (s) |',
           '|---|---|---|---|---|---|---|']
  ms = lambda v: f'{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}' if len(v) > 1 else f'{v[0]:.2f}'
  for arm, label in ARMS.items():
    f = found[arm]
    steps = ', '.join(f'{a} ({c})' for a, c in zip(f['member_steps'], f['computed_member_steps']))
    lines.append(f'| {label} | {f["members"][0]} | {ms(f["val"])} | {ms(f["test"])} | {steps} | '
                 f'{", ".join(f"{x:.2g}" for x in f["final_lr"])} | '
                 f'{", ".join(f"{w:.0f}" for w in f["wall_s"])} |')
  return '\n'.join(lines)
