"""Variational autoencoders: encoders, decoders, likelihoods, ELBO terms, IWAE bound.

A VAE (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"; Rezende,
Mohamed & Wierstra 2014) with a standard normal prior p(z) = N(0, I), a
diagonal Gaussian posterior q(z|x) = N(mu(x), diag exp(logvar(x))) sampled by
reparameterisation z = mu + exp(logvar / 2) * eps, and a decoder p(x|z) that
is one of

* ``categorical``: one softmax over ``num_levels`` grey levels per pixel
  (Tomczak's digits protocol: sklearn's 8x8 digits have 17 levels, 0..16);
* ``bernoulli``: one logit per pixel on the binarised image
  (level >= (num_levels - 1) / 2 is 1);
* ``gaussian``: a mean per pixel on x / (num_levels - 1) in [0, 1], with a
  fixed std ``sigma`` or a learned per-pixel std (``gaussian_variance='learned'``,
  a parameter independent of z). A density, so its nats are not comparable
  with the two discrete likelihoods.

``model.apply(variables, x, train=...)`` returns per-example pieces of the
ELBO, ``{'log_px': (B,), 'kl': (B, L), 'mu', 'logvar', 'z'}``, where ``log_px``
is the one-sample estimate log p(x|z) and ``kl`` the closed-form
KL(q(z|x) || p(z)) per latent unit; the ``elbo`` task (`research.tasks`)
weighs them (beta, annealing, free bits). The noise comes from the ``sample``
rng stream; without one (evaluation) a fixed key is used, so every evaluation
of a split draws the same eps (common random numbers: validation ELBOs of
different epochs differ by the model only).

``importance_weighted_bound`` is L_k of Burda, Grosse & Salakhutdinov 2016
("Importance Weighted Autoencoders"), computed in chunks of samples with a
running logsumexp, so k = 5000 fits in memory; L_1 is the ELBO with a
sampled KL, and E[L_k] increases with k towards log p(x).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import register

LIKELIHOODS = ('categorical', 'bernoulli', 'gaussian')
NETWORKS = ('mlp', 'conv')
LOG_2PI = math.log(2 * math.pi)


# ---- closed forms (tested against NumPy / SciPy in float64) ----

def gaussian_kl(mu, logvar):
  """KL(N(mu, exp(logvar)) || N(0, 1)) per dimension: (mu^2 + s^2 - 1 - log s^2) / 2."""
  return 0.5 * (mu ** 2 + jnp.exp(logvar) - 1.0 - logvar)


def log_normal(x, mu, logvar):
  """Elementwise log N(x; mu, exp(logvar))."""
  return -0.5 * (LOG_2PI + logvar + (x - mu) ** 2 * jnp.exp(-logvar))


def bernoulli_log_prob(logits, x):
  """Elementwise log Bernoulli(x; sigmoid(logits)) for x in {0, 1}."""
  return x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)


def categorical_log_prob(logits, k):
  """log softmax(logits)[k] over the last axis; k integer, shape logits.shape[:-1]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, k[..., None].astype(jnp.int32), axis=-1)[..., 0]


def active_units(mu: np.ndarray, threshold: float = 0.01) -> int:
  """Burda et al. 2016: unit u is active if Var_x(E_q[z_u | x]) > threshold.
  ``mu`` is (N, L), the posterior means over a split."""
  return int(np.sum(np.var(np.asarray(mu, np.float64), axis=0) > threshold))


# ---- networks ----

def _act(x):
  return nn.leaky_relu(x, 0.01)


class MLPEncoder(nn.Module):
  hidden: Sequence[int]
  latent: int

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)
    for w in self.hidden:
      h = _act(nn.Dense(w)(h))
    out = nn.Dense(2 * self.latent)(h)
    return out[:, :self.latent], out[:, self.latent:]


class ConvEncoder(nn.Module):
  """3x3 convolutions, the second and later with stride 2, then dense layers."""
  channels: Sequence[int]
  hidden: Sequence[int]
  latent: int

  @nn.compact
  def __call__(self, x):
    h = x
    for i, c in enumerate(self.channels):
      h = _act(nn.Conv(c, (3, 3), strides=(1, 1) if i == 0 else (2, 2), padding='SAME')(h))
    h = h.reshape(h.shape[0], -1)
    for w in self.hidden:
      h = _act(nn.Dense(w)(h))
    out = nn.Dense(2 * self.latent)(h)
    return out[:, :self.latent], out[:, self.latent:]


class MLPDecoder(nn.Module):
  hidden: Sequence[int]
  out_shape: tuple[int, ...]  # (H, W, C, per-pixel outputs)

  @nn.compact
  def __call__(self, z):
    h = z
    for w in reversed(tuple(self.hidden)):
      h = _act(nn.Dense(w)(h))
    return nn.Dense(int(np.prod(self.out_shape)))(h).reshape((z.shape[0],) + self.out_shape)


class ConvDecoder(nn.Module):
  """Dense layers, a (H/2^s, W/2^s) feature map, stride-2 transposed convolutions
  back to (H, W), and a 3x3 convolution to the per-pixel outputs."""
  channels: Sequence[int]
  hidden: Sequence[int]
  out_shape: tuple[int, ...]

  @nn.compact
  def __call__(self, z):
    H, W, C, P = self.out_shape
    chans = tuple(reversed(tuple(self.channels)))
    s = 2 ** (len(chans) - 1)
    h = z
    for w in reversed(tuple(self.hidden)):
      h = _act(nn.Dense(w)(h))
    h = _act(nn.Dense((H // s) * (W // s) * chans[0])(h)).reshape(-1, H // s, W // s, chans[0])
    for c in chans[1:]:
      h = _act(nn.ConvTranspose(c, (3, 3), strides=(2, 2), padding='SAME')(h))
    out = nn.Conv(C * P, (3, 3), padding='SAME')(h)
    return out.reshape((z.shape[0],) + self.out_shape)


def _widths(name: str, value: Any, what: str, example: str) -> tuple[int, ...]:
  """``value`` as a tuple of positive ints; a ValueError naming ``name`` otherwise.

  A bare integer is refused rather than read as one layer: ``hidden=256`` is
  ambiguous (one layer of 256, or 256 per layer?); write ``(256,)`` or ``(256, 256)``.
  """
  ok = isinstance(value, (tuple, list)) and all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
  if not ok:
    raise ValueError(f'VAE: {name} must be a tuple of positive {what}, e.g. {example} '
                     f'(or ({example[1:].split(",")[0]},) for one), got {value!r}')
  return tuple(int(v) for v in value)


@register('vae')
class VAE(nn.Module):
  """Encoder -> Gaussian posterior -> reparameterised sample -> decoder -> likelihood.

  ``hidden`` are the dense widths of the encoder (the decoder mirrors them);
  ``channels`` the conv channels when ``encoder``/``decoder`` is ``conv``.
  Inputs are images (B, H, W, C) of grey levels 0..num_levels-1 (floats).
  """
  latent: int = 16
  hidden: Sequence[int] = (256, 256)
  channels: Sequence[int] = (32, 64)
  encoder: str = 'mlp'
  decoder: str = 'mlp'
  likelihood: str = 'categorical'
  num_levels: int = 17
  gaussian_variance: str = 'fixed'  # or 'learned'
  sigma: float = 0.1  # the fixed (or initial learned) std of the Gaussian likelihood
  image_shape: Sequence[int] = (8, 8, 1)
  member_widths = ('latent', 'hidden', 'channels')  # may differ between members

  def setup(self):
    for name, value, known in (('encoder', self.encoder, NETWORKS),
                               ('decoder', self.decoder, NETWORKS),
                               ('likelihood', self.likelihood, LIKELIHOODS),
                               ('gaussian_variance', self.gaussian_variance, ('fixed', 'learned'))):
      if value not in known:
        raise ValueError(f'VAE: unknown {name} {value!r}; known: {list(known)}')
    shape = tuple(int(s) for s in self.image_shape)
    if len(shape) != 3:
      raise ValueError(f'VAE: image_shape must be (H, W, C), got {shape}')
    per_pixel = self.num_levels if self.likelihood == 'categorical' else 1
    hidden = _widths('hidden', self.hidden, 'layer widths', '(256, 256)')
    channels = _widths('channels', self.channels, 'conv channels', '(32, 64)')
    if self.decoder == 'conv':
      s = 2 ** (len(channels) - 1)
      if shape[0] % s or shape[1] % s:
        raise ValueError(f'VAE: a conv decoder with {len(channels)} channel stages needs H and '
                         f'W divisible by {s}, got image_shape {shape}')
    self.enc = (MLPEncoder(hidden, self.latent) if self.encoder == 'mlp'
                else ConvEncoder(channels, hidden, self.latent))
    out_shape = shape + (per_pixel,)
    self.dec = (MLPDecoder(hidden, out_shape) if self.decoder == 'mlp'
                else ConvDecoder(channels, hidden, out_shape))
    if self.likelihood == 'gaussian' and self.gaussian_variance == 'learned':
      self.log_sigma = self.param('log_sigma', nn.initializers.constant(math.log(self.sigma)),
                                  shape)

  # ---- data as each likelihood sees it ----

  def target(self, x):
    """The modelled data: levels (categorical), {0, 1} (bernoulli) or [0, 1] (gaussian)."""
    top = self.num_levels - 1
    if self.likelihood == 'categorical':
      return jnp.round(x)
    if self.likelihood == 'bernoulli':
      return (x >= top / 2).astype(jnp.float32)
    return x / top

  def _encoder_input(self, x):
    t = self.target(x)
    return t / (self.num_levels - 1) if self.likelihood == 'categorical' else t

  # ---- the pieces, callable with model.apply(..., method=...) ----

  def encode(self, x):
    """(mu, logvar) of q(z|x), each (B, latent)."""
    shape = tuple(int(s) for s in self.image_shape)
    if tuple(x.shape[1:]) != shape:
      raise ValueError(f'VAE: inputs of shape {tuple(x.shape[1:])} do not match '
                       f'model.image_shape {shape}')
    return self.enc(self._encoder_input(x))

  def decode(self, z):
    """Per-pixel decoder outputs (B, H, W, C, P)."""
    return self.dec(z)

  def log_likelihood(self, out, x):
    """log p(x|z) summed over pixels, (B,), from decoder outputs ``out``."""
    t = self.target(x)
    if self.likelihood == 'categorical':
      lp = categorical_log_prob(out, t)
    elif self.likelihood == 'bernoulli':
      lp = bernoulli_log_prob(out[..., 0], t)
    else:
      log_sigma = (self.log_sigma if self.gaussian_variance == 'learned'
                   else jnp.full(t.shape[1:], math.log(self.sigma)))
      lp = log_normal(t, out[..., 0], 2.0 * log_sigma)
    return lp.reshape(lp.shape[0], -1).sum(-1)

  def log_px_given_z(self, z, x):
    return self.log_likelihood(self.decode(z), x)

  def mean_image(self, out):
    """E[x|z] on the [0, 1] scale, (B, H, W, C)."""
    if self.likelihood == 'categorical':
      levels = jnp.arange(self.num_levels) / (self.num_levels - 1)
      return jnp.sum(jax.nn.softmax(out, -1) * levels, -1)
    if self.likelihood == 'bernoulli':
      return jax.nn.sigmoid(out[..., 0])
    return jnp.clip(out[..., 0], 0.0, 1.0)

  def reconstruct(self, x):
    """E[x|z = mu(x)] (the posterior mean decoded), (B, H, W, C) in [0, 1]."""
    mu, _ = self.encode(x)
    return self.mean_image(self.decode(mu))

  def __call__(self, x, train: bool = False):
    mu, logvar = self.encode(x)
    key = self.make_rng('sample') if self.has_rng('sample') else jax.random.PRNGKey(0)
    # eps is drawn latent-major, so unit u gets the same draw at every latent size
    # (threefry's values follow the flat index): a member embedded in a wider
    # population (research.structure) samples what its solo run samples.
    eps = jax.random.normal(key, mu.shape[::-1], mu.dtype).T
    z = mu + jnp.exp(0.5 * logvar) * eps
    return {'log_px': self.log_px_given_z(z, x), 'kl': gaussian_kl(mu, logvar),
            'mu': mu, 'logvar': logvar, 'z': z}


# ---- the importance-weighted bound ----

def importance_weighted_bound(encode: Callable[[Any], tuple[Any, Any]],
                              log_lik: Callable[[Any, Any], Any], x, k: int, rng,
                              chunk: int = 100):
  """Per-example L_k = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x)
  (Burda et al. 2016, Eq. 8), with p(z) = N(0, I).

  ``encode(x) -> (mu, logvar)`` (B, L); ``log_lik(z, x_rep) -> (N,)`` for
  N = n * B rows (z (N, L), x repeated sample-major). Samples are drawn in
  chunks of ``chunk`` (the last chunk's extra samples are masked), each chunk
  folded into a running logsumexp, so memory grows with ``chunk``, not ``k``.
  Jit-compatible (k and chunk static).
  """
  if k < 1:
    raise ValueError(f'importance_weighted_bound: k must be >= 1, got {k}')
  mu, logvar = encode(x)
  B, L = mu.shape
  c = max(1, min(int(chunk), int(k)))
  n_chunks = -(-int(k) // c)
  std = jnp.exp(0.5 * logvar)
  x_rep = jnp.broadcast_to(x[None], (c,) + x.shape).reshape((c * B,) + x.shape[1:])

  def body(acc, inputs):
    i, key = inputs
    eps = jax.random.normal(key, (c, B, L), mu.dtype)
    z = mu[None] + std[None] * eps
    log_pz = jnp.sum(log_normal(z, 0.0, jnp.zeros_like(z)), -1)
    log_qz = jnp.sum(log_normal(z, mu[None], logvar[None]), -1)
    log_px = log_lik(z.reshape(c * B, L), x_rep).reshape(c, B)
    log_w = log_px + log_pz - log_qz
    valid = (i * c + jnp.arange(c)) < k
    log_w = jnp.where(valid[:, None], log_w, -jnp.inf)
    return jnp.logaddexp(acc, jax.scipy.special.logsumexp(log_w, axis=0)), None

  keys = jax.random.split(rng, n_chunks)
  acc, _ = jax.lax.scan(body, jnp.full((B,), -jnp.inf, mu.dtype), (jnp.arange(n_chunks), keys))
  return acc - jnp.log(jnp.asarray(k, mu.dtype))


def vae_bound(model: VAE, variables, x, k: int, rng, chunk: int = 100):
  """``importance_weighted_bound`` of a VAE's parameters on a batch x."""
  return importance_weighted_bound(
      lambda v: model.apply(variables, v, method=VAE.encode),
      lambda z, xr: model.apply(variables, z, xr, method=VAE.log_px_given_z),
      x, k, rng, chunk)
