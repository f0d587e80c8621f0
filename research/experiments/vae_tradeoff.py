"""The reconstruction / KL trade-off of the digits VAE: beta, KL annealing, free bits.

beta-VAE (Higgins et al. 2017) weighs the KL term by beta; as beta grows the
KL (the rate) falls and the reconstruction term (the distortion) worsens
(Alemi et al. 2018, "Fixing a Broken ELBO"), and latent units collapse to the
prior (active units, Burda et al. 2016: Var_x E_q[z_u] > 0.01). Two remedies
against posterior collapse: KL annealing (Bowman et al. 2016; here linear
over the first ``anneal_steps`` updates) and free bits (Kingma et al. 2016:
no KL pressure on a unit below lambda nats). All numeric, so every (beta,
variant, seed) is a member of one vmapped population.

Expected: KL falls and reconstruction worsens with beta; annealing and free
bits keep more units active (and more KL) at large beta.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from research import results
from research.analysis import generative
from research.experiments import register
from research.experiments.common import train_variant, variant_config, write_report
from research.models import vae

VARIANTS = {'plain': (0, 0.0), 'annealed': (None, 0.0), 'free bits': (0, 0.5)}
BUDGETS = {
    'full': dict(betas=(0.1, 0.3, 1.0, 3.0, 10.0), seeds=(0, 1, 2), epochs=150,
                 anneal_steps=750, hidden=256),
    'smoke': dict(betas=(0.1, 10.0), seeds=(0,), epochs=3, anneal_steps=20, hidden=32),
}


@register('vae_tradeoff')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  cols = {'seed': [], 'task.beta': [], 'task.anneal_steps': [], 'task.free_bits': []}
  for name, (steps, fb) in VARIANTS.items():
    for beta in b['betas']:
      for seed in b['seeds']:
        cols['seed'].append(seed)
        cols['task.beta'].append(beta)
        cols['task.anneal_steps'].append(b['anneal_steps'] if steps is None else steps)
        cols['task.free_bits'].append(fb)
  arg = f'anneal=linear,hidden={b["hidden"]},epochs={b["epochs"]},patience=0'
  over = {'population': ' '.join(f'{k}={",".join(map(str, v))}' for k, v in cols.items()),
          'population_mode': 'zip', 'train.progress': budget == 'full'}
  config = variant_config('configs/vae_digits.py', arg, **over)
  out = train_variant('configs/vae_digits.py', arg, workdir / 'population', **over)
  model, ds, members, params = generative.load_members(config, workdir / 'population')
  au = [vae.active_units(generative.posterior_means(model, p, ds.test['x'])) for p in params]

  def variant_of(m):
    h = m['hparams']
    if h['task.free_bits'] > 0:
      return 'free bits'
    return 'annealed' if h['task.anneal_steps'] > 0 else 'plain'

  table: dict[tuple[str, float], list[dict]] = {}
  for m, a in zip(out['members'], au):
    if not m['diverged']:
      table.setdefault((variant_of(m), m['hparams']['task.beta']), []).append({**m, 'au': a})
  rows = []
  for (name, beta), ms in table.items():
    label = f'{name}, beta={beta:g}'
    for key in ('test/nelbo', 'test/recon', 'test/kl'):
      rows.append(results.row(label, key.replace('/', '_'), [m[key] for m in ms]))
    rows.append(results.row(label, 'active_units', [float(m['au']) for m in ms]))
  _plot(table, b, model.latent, workdir / 'tradeoff.png')
  wall = time.time() - t0
  res = results.write(workdir / 'results.json', 'vae_tradeoff', rows, budget=budget,
                      wall_time_s=wall, train_time_s=out['train_time_s'],
                      num_members=out['num_members'], latent=model.latent,
                      members=[{**m, 'active_units': a} for m, a in zip(out['members'], au)])
  lines = ['| variant | beta | test -ELBO | recon. | KL | active units |', '|---|---|---|---|---|---|']
  for (name, beta), ms in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    mean = lambda k: np.mean([m[k] for m in ms])
    lines.append(f'| {name} | {beta:g} | {mean("test/nelbo"):.2f} | {mean("test/recon"):.2f} | '
                 f'{mean("test/kl"):.2f} | {mean("au"):.1f} / {model.latent} |')
  write_report(
      workdir, 'VAE on digits: the reconstruction / KL trade-off',
      f'Budget `{budget}`: one population of {out["num_members"]} members (beta in '
      f'{list(b["betas"])} x {{plain, linear KL annealing over {b["anneal_steps"]} updates, free '
      f'bits 0.5 nats per unit}} x seeds {list(b["seeds"])}), {b["epochs"]} epochs, Adam 1e-3, '
      'best epoch by validation negative ELBO. Test terms in nats per image, mean over seeds; '
      f'active units: Var over test images of E_q[z_u] > 0.01 (Burda et al. 2016). '
      f'Training took {out["train_time_s"]:.0f} s for the whole population.',
      ['\n'.join(lines), results.markdown_table(rows, digits=2)],
      {'trade-off': 'tradeoff.png'}, wall)
  print('\n'.join(lines))
  return res


def _plot(table, b, latent, path):
  """Rate vs distortion, KL vs beta and active units vs beta per variant (test
  terms, mean over seeds). Returns the Figure."""
  from research.analysis import curves
  fig, axes = curves.new_figure(1, 3, figsize=(13, 3.8))
  for i, name in enumerate(VARIANTS):
    betas = [beta for beta in b['betas'] if (name, beta) in table]
    if not betas:
      continue
    mean = lambda key: np.asarray([np.mean([m[key] for m in table[(name, bb)]]) for bb in betas])
    kl, recon, au = mean('test/kl'), mean('test/recon'), mean('au')
    axes[0].plot(kl, recon, 'o-', color=f'C{i}', label=name)
    for x, y, bb in zip(kl, recon, betas):
      axes[0].annotate(f'{bb:g}', (x, y), fontsize='x-small')
    axes[1].plot(betas, kl, 'o-', color=f'C{i}', label=name)
    axes[2].plot(betas, au, 'o-', color=f'C{i}', label=name)
  axes[0].set_xlabel('KL (rate, nats/image)')
  axes[0].set_ylabel('reconstruction -log p(x|z) (nats/image)')
  axes[0].set_title('rate vs distortion (point labels: beta)')
  axes[1].set_ylabel('KL (nats/image)')
  axes[1].set_title('rate vs beta')
  axes[2].set_ylabel(f'active units (of {latent})')
  axes[2].set_title('active units vs beta')
  curves.integer_ticks(axes[2].yaxis)
  for ax in axes[1:]:
    ax.set_xscale('log')
    ax.set_xlabel('beta (KL weight)')
  for ax in axes:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize='small')
  fig.suptitle('Digits VAE: test rate, distortion and active units per beta (mean over seeds)')
  return curves.save(fig, path, dpi=110)
