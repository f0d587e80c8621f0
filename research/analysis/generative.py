"""Trained VAEs read back from a run: IWAE bounds, active units, image grids.

``load_members(config, workdir)`` rebuilds the run's model and restores every
member's best (validation-selected) parameters from its newest checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from research.models import vae
from research.train import load_trained


def load_members(config, workdir: str | Path):
  """(model, dataset, members, [best params of each member])."""
  trainer, dataset, members, state = load_trained(config, workdir)
  params = [jax.tree.map(lambda a, i=i: a[i], state.best_params) for i in range(len(members))]
  return trainer.model, dataset, members, params


def iwae_bounds(model, params, x: np.ndarray, ks=(1, 5, 50, 5000), seed: int = 0,
                rows_per_chunk: int = 20000, batch: int = 100) -> dict[int, float]:
  """Mean over ``x`` of L_k for each k (Burda et al. 2016), in nats per image."""
  variables = {'params': params}
  out = {}
  for k in ks:
    b = min(batch, len(x))
    chunk = max(1, min(k, rows_per_chunk // b))
    f = jax.jit(lambda xb, key, k=k, chunk=chunk: vae.vae_bound(model, variables, xb, k, key, chunk))
    vals = []
    for i in range(0, len(x), b):
      xb = jnp.asarray(x[i:i + b])
      vals.append(np.asarray(f(xb, jax.random.PRNGKey(seed * 100003 + k * 7 + i))))
    out[k] = float(np.concatenate(vals).mean())
  return out


def posterior_means(model, params, x: np.ndarray) -> np.ndarray:
  mu, _ = model.apply({'params': params}, jnp.asarray(x), method=vae.VAE.encode)
  return np.asarray(mu)


def image_grid(path, rows: list[np.ndarray], row_names: list[str], title: str = ''):
  """Rows of (H, W, 1) images in [0, 1] as one PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  n_rows, n_cols = len(rows), max(len(r) for r in rows)
  fig, axes = plt.subplots(n_rows, n_cols, figsize=(0.9 * n_cols + 1.2, 0.95 * n_rows + 0.4),
                           squeeze=False)
  for i, (row, name) in enumerate(zip(rows, row_names)):
    for j in range(n_cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j < len(row):
        ax.imshow(np.asarray(row[j])[..., 0], cmap='gray_r', vmin=0, vmax=1)
      else:
        ax.axis('off')
    axes[i, 0].set_ylabel(name, rotation=0, ha='right', va='center', fontsize='small')
  if title:
    fig.suptitle(title, fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def image_plots(model, params, x_test: np.ndarray, workdir: Path, prefix: str = '',
                seed: int = 0) -> dict[str, str]:
  """samples.png (decoded prior draws), reconstructions.png (test images over
  their decoded posterior means) and traversals.png (the 4 latent units with
  the most variance of mu over the test set, each swept over -3..3 with the
  others at 0). Returns {caption: file name}."""
  variables = {'params': params}
  apply = lambda method, *a: np.asarray(model.apply(variables, *a, method=method))
  z = jax.random.normal(jax.random.PRNGKey(seed), (30, model.latent))
  samples = apply(vae.VAE.mean_image, apply(vae.VAE.decode, z))
  recon = apply(vae.VAE.reconstruct, jnp.asarray(x_test[:12]))
  files = {}
  name = f'{prefix}samples.png'
  image_grid(workdir / name, [samples[:10], samples[10:20], samples[20:]], ['', '', ''],
             'Samples: E[x|z], z ~ N(0, I)')
  files['samples'] = name
  name = f'{prefix}reconstructions.png'
  image_grid(workdir / name, [x_test[:12] / (model.num_levels - 1), recon],
             ['test', 'recon.'], 'Test images and E[x | z = mu(x)]')
  files['reconstructions'] = name
  mu = posterior_means(model, params, x_test)
  units = np.argsort(-mu.var(0))[:4]
  values = np.linspace(-3, 3, 9)
  rows = []
  for u in units:
    zz = np.zeros((len(values), model.latent), np.float32)
    zz[:, u] = values
    rows.append(apply(vae.VAE.mean_image, apply(vae.VAE.decode, jnp.asarray(zz))))
  name = f'{prefix}traversals.png'
  image_grid(workdir / name, rows, [f'z{u}' for u in units], 'Latent traversals, -3 .. 3')
  files['latent traversals'] = name
  return files


# ---- samples of one member (scripts/evaluate.py --sample) ----

def prior_samples(model, variables, n: int, seed: int = 0) -> np.ndarray:
  """n images E[x|z] on the [0, 1] scale, z ~ N(0, I) from ``PRNGKey(seed)``: (n, H, W, C)."""
  z = jax.random.normal(jax.random.PRNGKey(seed), (n, model.latent))
  out = model.apply(variables, z, method=vae.VAE.decode)
  return np.asarray(model.apply(variables, out, method=vae.VAE.mean_image))


def sample_grid(path, images: np.ndarray, title: str, cols: int = 10) -> None:
  """``images`` (n, H, W, C) in [0, 1] as a PNG grid of up to ``cols`` per row, titled."""
  cols = max(1, min(cols, len(images)))
  rows = [images[i:i + cols] for i in range(0, len(images), cols)]
  image_grid(path, rows, [''] * len(rows), title)


def sample_text(model, variables, prime_ids: np.ndarray, length: int, n: int, seed: int = 0,
                temperature: float = 1.0, context: int = 100) -> np.ndarray:
  """n continuations of ``prime_ids`` by ``length`` characters, (n, P + length) ids.

  `research.models.text.sample` vmapped over n keys split from ``key(seed)``: one
  compiled loop for all n."""
  from research.models.text import sample
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  prime = jnp.asarray(prime_ids, jnp.int32)
  keys = jax.random.split(jax.random.key(seed), n)
  draw = jax.vmap(lambda key: sample(model, variables, prime, length, key,
                                     temperature=temperature, context=context))
  return np.asarray(draw(keys))
