"""Optimizers x learning-rate schedules on the digits VAE, and the IWAE-bound check.

Adam (Kingma & Ba 2015), RMSprop (Tieleman & Hinton 2012) and SGD with
momentum 0.9 (Sutskever et al. 2013), each with five schedules (constant,
cosine, exponential, linear warm-up + cosine, reduce-on-plateau), train the
digits VAE of `configs/vae_digits.py` (Tomczak's protocol: 1000/350/447,
categorical likelihood over 17 levels). Each (optimizer, schedule) is one
population: three learning rates per optimizer x seeds. The learning rate
with the lowest mean *validation* negative ELBO is kept, and its seeds'
test negative ELBO and importance-weighted bound -L_k (Burda et al. 2016) are
reported (nats per image, lower is better).

The check of the estimator (Burda et al. 2016, Theorem 1): on the chosen Adam
model, L_1 <= L_5 <= L_50 <= L_5000 (mean over the test images; L_1 is a
one-sample ELBO). Samples, reconstructions and latent traversals of that
model are written as PNGs.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from research import results
from research.analysis import curves, generative
from research.experiments import register
from research.experiments.common import train_variant, variant_config, write_report

OPTIMIZERS = {'adam': ('Adam', (3e-4, 1e-3, 3e-3)), 'rmsprop': ('RMSprop', (1e-4, 3e-4, 1e-3)),
              'sgd': ('SGD+momentum 0.9', (1e-2, 3e-2, 1e-1))}
SCHEDULES = ('constant', 'cosine', 'exponential', 'warmup_cosine', 'plateau')
BUDGETS = {
    'full': dict(optimizers=tuple(OPTIMIZERS), schedules=SCHEDULES, lrs=3, seeds='0,1,2',
                 epochs=200, hidden=256, ks=(1, 5, 50, 5000), iwae_images=447),
    'smoke': dict(optimizers=('adam', 'sgd'), schedules=('constant', 'cosine'), lrs=1,
                  seeds='0,1', epochs=3, hidden=32, ks=(1, 5, 50), iwae_images=40),
}


def select_lr(members: list[dict]) -> tuple[float, list[dict]]:
  """The learning rate with the lowest mean validation negative ELBO over its
  non-diverged seeds, and those seeds' member records (test never looked at)."""
  by_lr: dict[float, list[dict]] = {}
  for m in members:
    if not m['diverged'] and np.isfinite(m['val/nelbo']):
      by_lr.setdefault(m['hparams']['optim.lr'], []).append(m)
  if not by_lr:
    raise RuntimeError('every member diverged')
  lr = min(by_lr, key=lambda k: np.mean([m['val/nelbo'] for m in by_lr[k]]))
  return lr, by_lr[lr]


@register('vae_optimizers')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  rows, runs, table, configs = [], {}, {}, {}
  for opt in b['optimizers']:
    label, lrs = OPTIMIZERS[opt]
    lrs = lrs[1:2] if b['lrs'] == 1 else lrs
    for sched in b['schedules']:
      arg = f'optim={opt},schedule={sched},hidden={b["hidden"]},epochs={b["epochs"]},patience=0'
      over = {'population': f'seed={b["seeds"]} optim.lr={",".join(map(str, lrs))}',
              'train.progress': budget == 'full'}
      wd = workdir / f'{opt}_{sched}'
      configs[(opt, sched)] = variant_config('configs/vae_digits.py', arg, **over)
      t = time.time()
      out = train_variant('configs/vae_digits.py', arg, wd, **over)
      lr, chosen = select_lr(out['members'])
      name = f'{label}, {sched}'
      rows.append(results.row(name, 'test_nelbo', [m['test/nelbo'] for m in chosen]))
      runs[name] = {'workdir': wd.name, 'lr': lr, 'train_time_s': out['train_time_s'],
                    'wall_s': time.time() - t, 'members': [m['member'] for m in chosen],
                    'test_nelbo': [m['test/nelbo'] for m in chosen],
                    'test_kl': [m['test/kl'] for m in chosen],
                    'best_epochs': [m['best_epoch'] for m in chosen],
                    'diverged': sum(m['diverged'] for m in out['members'])}
      table[(opt, sched)] = runs[name]
  # IWAE bounds of every chosen model would cost k x test images decoder passes each;
  # the check uses the chosen seeds of the first optimizer and schedule (Adam, constant).
  opt0, sched0 = b['optimizers'][0], b['schedules'][0]
  first = table[(opt0, sched0)]
  model, ds, members, params = generative.load_members(configs[(opt0, sched0)], workdir / f'{opt0}_{sched0}')
  x_test = ds.test['x'][:b['iwae_images']]
  bounds = []
  t_iwae = time.time()
  for i in first['members']:
    bounds.append(generative.iwae_bounds(model, params[i], x_test, b['ks'], seed=i))
  iwae_s = time.time() - t_iwae
  ks = b['ks']
  check_name = f'{OPTIMIZERS[opt0][0]}, {sched0}'
  for k in ks:
    rows.append(results.row(f'{check_name}: -L_{k}', 'test_neg_iwae', [-bd[k] for bd in bounds],
                            source='Burda et al. 2016: L_k increases with k'))
  monotone = all(bd[a] <= bd[c] for bd in bounds for a, c in zip(ks, ks[1:]))
  images = generative.image_plots(model, params[first['members'][0]], ds.test['x'], workdir)
  curves.plot_curves({n: workdir / r['workdir'] for n, r in runs.items()}, 'val/nelbo',
                     workdir / 'curves.png',
                     title='Validation negative ELBO (all learning rates and seeds; mean ± std)',
                     ylabel='validation negative ELBO (nats/image)')
  _plot_table(table, b, workdir / 'optimizers.png')
  wall = time.time() - t0
  out = results.write(workdir / 'results.json', 'vae_optimizers', rows, budget=budget,
                      wall_time_s=wall, runs=runs, iwae={'k': list(ks), 'per_seed': bounds,
                                                         'images': len(x_test),
                                                         'monotone': monotone, 'time_s': iwae_s})
  grid = ['| optimizer | ' + ' | '.join(b['schedules']) + ' |', '|---|' + '---|' * len(b['schedules'])]
  for opt in b['optimizers']:
    cells = []
    for s in b['schedules']:
      r = table[(opt, s)]
      v = np.asarray(r['test_nelbo'])
      cells.append(f'{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f} (lr {r["lr"]:g})')
    grid.append(f'| {OPTIMIZERS[opt][0]} | ' + ' | '.join(cells) + ' |')
  iw = ['| k | ' + ' | '.join(f'seed member {m}' for m in first['members']) + ' |',
        '|---|' + '---|' * len(bounds)]
  iw += [f'| {k} | ' + ' | '.join(f'{bd[k]:.3f}' for bd in bounds) + ' |' for k in ks]
  write_report(
      workdir, 'VAE on digits: optimizers x learning-rate schedules',
      f'Budget `{budget}`: {b["epochs"]} epochs (batch 64, 15 updates per epoch), seeds '
      f'{b["seeds"]}; per optimizer the learning rate with the lowest mean validation '
      'negative ELBO among its three (in parentheses). Test negative ELBO in nats per image '
      '(categorical likelihood over 17 levels; lower is better), mean ± std over seeds, of the '
      'epoch with the best validation ELBO.',
      ['\n'.join(grid),
       f'**IWAE bound** L_k (nats, mean over {len(x_test)} test images) of the chosen '
       f'{check_name} models: non-decreasing in k for every seed: **{monotone}** '
       f'({iwae_s:.0f} s).\n\n' + '\n'.join(iw),
       results.markdown_table(rows, digits=2)],
      {'validation curves': 'curves.png', 'test negative ELBO': 'optimizers.png',
       **{k: v for k, v in images.items()}}, wall)
  print('\n'.join(grid))
  return out


def _plot_table(table, b, path):
  """Test negative ELBO per optimizer and schedule: bars at the mean over seeds,
  error bars ± std. Returns the Figure."""
  fig, ax = curves.new_figure(figsize=(8, 4))
  width = 0.8 / len(b['optimizers'])
  x = np.arange(len(b['schedules']))
  for i, opt in enumerate(b['optimizers']):
    vals = [np.asarray(table[(opt, s)]['test_nelbo']) for s in b['schedules']]
    ax.bar(x + i * width, [v.mean() for v in vals], width,
           yerr=[v.std() for v in vals], label=OPTIMIZERS[opt][0], capsize=2)
  ax.set_xticks(x + width * (len(b['optimizers']) - 1) / 2)
  ax.set_xticklabels(b['schedules'])
  lo = min(np.asarray(r['test_nelbo']).min() for r in table.values())
  hi = max(np.asarray(r['test_nelbo']).max() for r in table.values())
  ax.set_ylim(lo - 0.1 * (hi - lo + 1), hi + 0.1 * (hi - lo + 1))
  ax.set_xlabel('learning-rate schedule')
  ax.set_ylabel('test negative ELBO (nats/image)')
  ax.set_title('Test negative ELBO by optimizer and schedule (mean ± std over seeds; '
               'lower is better)', fontsize='medium')
  ax.legend(fontsize='small')
  ax.grid(alpha=0.3, axis='y')
  return curves.save(fig, path, dpi=110)
