"""Time-series data augmentation, in JAX, applied to each training batch.

``train.augment`` is a comma-separated list of ``name=strength``, e.g.
``'jitter=0.03,scaling=0.1,time_warp=0.2'``; the methods run in the order
given, each example drawing its own randomness. All of them keep the label,
the shape and the valid length; padded steps (beyond ``lengths``) stay zero.
Following Um et al. 2017 ("Data augmentation of wearable sensor data for
Parkinson's disease monitoring using convolutional neural networks") and
Le Guennec, Malinowski & Tavenard 2016 ("Data augmentation for time series
classification using convolutional neural networks"):

* ``jitter=s``: add N(0, s^2) noise to every value.
* ``scaling=s``: multiply each channel by one factor ~ N(1, s^2).
* ``magnitude_warp=s``: multiply each channel by a smooth curve through
  ``KNOTS`` + 2 evenly spaced knots ~ N(1, s^2) (piecewise linear between the
  knots, where Um et al. use a cubic spline).
* ``time_warp=s``: resample the series along a smooth random time path whose
  local speed is a curve through knots ~ N(1, s^2) (again piecewise linear),
  rescaled so that the path runs from the first to the last valid step.
* ``window_slice=r``: take a random window of a fraction r of the valid
  length and stretch it back to the full valid length.

For clips of frames (x of shape (B, T, H, W) or (B, T, H, W, C)):

* ``frame_shift=p``: translate every frame of a clip by the same random
  integer offset (dy, dx), each uniform in [-p, p], filling with zeros (the
  random-crop / translation augmentation of image models, applied per clip so
  the motion inside it is kept).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

SERIES_METHODS = ('jitter', 'scaling', 'magnitude_warp', 'time_warp', 'window_slice')
FRAME_METHODS = ('frame_shift',)
METHODS = SERIES_METHODS + FRAME_METHODS
KNOTS = 4


def parse(spec: str) -> list[tuple[str, float]]:
  """'jitter=0.03,scaling=0.1' -> [('jitter', 0.03), ('scaling', 0.1)]."""
  out = []
  for part in filter(None, (p.strip() for p in (spec or '').split(','))):
    name, sep, value = part.partition('=')
    name = name.strip()
    if name not in METHODS:
      raise ValueError(f'train.augment: unknown method {name!r}; known: {list(METHODS)}')
    if not sep:
      raise ValueError(f'train.augment: {name!r} needs a strength, e.g. {name}=0.1')
    try:
      v = float(value)
    except ValueError:
      raise ValueError(f'train.augment: strength of {name!r} is not a number: {value!r}') from None
    if v < 0 or (name == 'window_slice' and not 0 < v <= 1):
      raise ValueError(f'train.augment: {name}={v} is out of range '
                       f'({"(0, 1]" if name == "window_slice" else ">= 0"})')
    if name == 'frame_shift' and v != int(v):
      raise ValueError(f'train.augment: frame_shift is a whole number of pixels, got {v}')
    out.append((name, v))
  return out


def _resample(x, length, pos):
  """x (T, C) read at fractional positions pos (T,) by linear interpolation;
  steps >= length are zero."""
  T = x.shape[0]
  grid = jnp.arange(T, dtype=x.dtype)
  y = jax.vmap(lambda col: jnp.interp(pos, grid, col), in_axes=1, out_axes=1)(x)
  return jnp.where((jnp.arange(T) < length)[:, None], y, 0.0)


def _curve(rng, length, T, sigma, channels=None):
  """A smooth random curve over the valid steps: knots ~ N(1, sigma^2) at
  evenly spaced positions from 0 to length - 1, linear in between.
  Shape (T,) or (T, channels)."""
  shape = (KNOTS + 2,) if channels is None else (KNOTS + 2, channels)
  knots = 1.0 + sigma * jax.random.normal(rng, shape)
  at = jnp.linspace(0.0, 1.0, KNOTS + 2) * (length - 1)
  t = jnp.arange(T, dtype=jnp.float32)
  if channels is None:
    return jnp.interp(t, at, knots)
  return jax.vmap(lambda k: jnp.interp(t, at, k), in_axes=1, out_axes=1)(knots)


def _one(rng, x, length, methods):
  T, C = x.shape
  valid = (jnp.arange(T) < length)[:, None]
  for (name, s), key in zip(methods, jax.random.split(rng, len(methods))):
    if name == 'jitter':
      x = x + s * jax.random.normal(key, x.shape, x.dtype)
    elif name == 'scaling':
      x = x * (1.0 + s * jax.random.normal(key, (1, C), x.dtype))
    elif name == 'magnitude_warp':
      x = x * _curve(key, length, T, s, C)
    elif name == 'time_warp':
      speed = jnp.maximum(_curve(key, length, T, s), 1e-2) * valid[:, 0]
      path = jnp.concatenate([jnp.zeros(1), jnp.cumsum(speed)[:-1]])
      total = jnp.maximum(path[jnp.maximum(length - 1, 0)], 1e-6)
      x = _resample(x, length, path / total * (length - 1))
    elif name == 'window_slice':
      span = s * (length - 1)
      start = jax.random.uniform(key) * (length - 1 - span)
      t = jnp.arange(T, dtype=jnp.float32)
      x = _resample(x, length, start + t / jnp.maximum(length - 1, 1) * span)
    x = jnp.where(valid, x, 0.0)
  return x


def _shift_clip(rng, clip, p: int):
  """clip (T, H, W, ...) translated by one random (dy, dx) in [-p, p]^2, zero fill."""
  T, H, W = clip.shape[:3]
  dy, dx = jax.random.randint(rng, (2,), -p, p + 1)
  pads = ((0, 0), (p, p), (p, p)) + ((0, 0),) * (clip.ndim - 3)
  start = (0, p - dy, p - dx) + (0,) * (clip.ndim - 3)
  return jax.lax.dynamic_slice(jnp.pad(clip, pads), start, clip.shape)


def apply(rng, x, lengths, methods: list[tuple[str, float]]):
  """Augments a batch x (B, T, C) (or (B, T)) of series, or (B, T, H, W[, C])
  of clips; ``lengths`` (B,) or None."""
  if not methods:
    return x
  frames = [m for m in methods if m[0] in FRAME_METHODS]
  if x.ndim >= 4:
    if len(frames) < len(methods):
      raise ValueError(f'train.augment: inputs of shape {x.shape} are clips of frames; '
                       f'only {list(FRAME_METHODS)} apply to them')
    for (name, s), key in zip(methods, jax.random.split(rng, len(methods))):
      x = jax.vmap(_shift_clip, in_axes=(0, 0, None))(
          jax.random.split(key, x.shape[0]), x, int(s))
    return x
  if frames:
    raise ValueError(f'train.augment: {[m[0] for m in frames]} need clips of frames '
                     f'(B, T, H, W[, C]), got inputs of shape {x.shape}')
  squeeze = x.ndim == 2
  x3 = x[..., None] if squeeze else x
  B, T = x3.shape[:2]
  lengths = jnp.full((B,), T, jnp.int32) if lengths is None else lengths
  out = jax.vmap(_one, in_axes=(0, 0, 0, None))(jax.random.split(rng, B), x3, lengths, methods)
  return out[..., 0] if squeeze else out
