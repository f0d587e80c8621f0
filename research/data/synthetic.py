"""Synthetic long-range-dependency benchmarks for recurrent networks.

All tasks are generated with NumPy only, offline and deterministically from
``config.seed`` (default 0): train, val and test use three independent
generators spawned from ``np.random.SeedSequence(seed)``, so the splits are
different samples of the same distribution and equal seeds give equal data.
Sizes come from ``config.num_train`` / ``num_val`` / ``num_test``
(defaults 10000 / 1000 / 1000; ``num_val=0`` gives ``val=None``) and the
minimal sequence length ``T`` from ``config.seq_len`` (default 100). Every key
is read with ``config.get`` so configs may omit it.

Registered datasets (see each generator's docstring for the exact definition
and the source it follows):

* ``adding``          -- the adding problem, ``config.variant`` in
                         {'hochreiter', 'modern'} (default 'modern').
* ``copy``            -- the copy-memory problem.
* ``temporal_order``  -- temporal order, 2 relevant symbols, 4 classes.
* ``temporal_order3`` -- temporal order, 3 relevant symbols, 8 classes.
"""
from __future__ import annotations

import math
from typing import Any

import ml_collections
import numpy as np

from research import data

DEFAULT_SEQ_LEN = 100
DEFAULT_SIZES = {'num_train': 10000, 'num_val': 1000, 'num_test': 1000}
ADDING_VARIANTS = ('hochreiter', 'modern')

# Copy memory: symbols 1..8 are data, 0 is blank, 9 is the delimiter.
COPY_NUM_MEMORIZE = 10
COPY_ALPHABET = 8
COPY_BLANK, COPY_DELIMITER = 0, 9
COPY_NUM_TOKENS = 10

# Temporal order: channels 0 and 1 are the relevant symbols A and B,
# channels 2..5 the distractors c, d, e, f (Pascanu's layout).
TEMPORAL_ORDER_NUM_SYMBOLS = 6


# ----------------------------------------------------------------------------
# Shared plumbing.


def _split_rngs(seed: int) -> list[np.random.Generator]:
  """Three independent generators (train, val, test) derived from ``seed``."""
  return [np.random.default_rng(s)
          for s in np.random.SeedSequence(int(seed)).spawn(3)]


def _sizes(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  sizes = tuple(int(config.get(k, v)) for k, v in DEFAULT_SIZES.items())
  if sizes[0] < 1 or sizes[2] < 1 or sizes[1] < 0:
    raise ValueError(
        f'{config.name}: need num_train >= 1, num_val >= 0, num_test >= 1; '
        f'got {sizes}')
  return sizes


def _build(config: ml_collections.ConfigDict, generate,
           info: dict[str, Any]) -> data.Dataset:
  """Calls ``generate(rng, n)`` once per split with that split's generator."""
  n_train, n_val, n_test = _sizes(config)
  rng_train, rng_val, rng_test = _split_rngs(config.get('seed', 0))
  train = generate(rng_train, n_train)
  val = generate(rng_val, n_val) if n_val > 0 else None
  test = generate(rng_test, n_test)
  info = dict(info, input_shape=tuple(train['x'].shape[1:]))
  return data.Dataset(name=config.name, train=train, val=val, test=test,
                      info=info)


def _one_hot(tokens: np.ndarray, depth: int) -> np.ndarray:
  return np.eye(depth, dtype=np.float32)[tokens]


def _seq_len(config: ml_collections.ConfigDict, minimum: int) -> int:
  T = int(config.get('seq_len', DEFAULT_SEQ_LEN))
  if T < minimum:
    raise ValueError(f'{config.name}: seq_len must be >= {minimum}, got {T}')
  return T


# ----------------------------------------------------------------------------
# Adding problem.


def adding_hochreiter(rng: np.random.Generator, n: int, T: int) -> data.Split:
  """Adding problem as in Hochreiter & Schmidhuber (1997), Experiment 4.

  Source: "Long Short-Term Memory", Neural Computation 9(8), Section 5.4
  (Experiment 4: Adding Problem), followed to the letter:

  * Each step is a pair (value, marker); values are U[-1, 1].
  * The length is a random integer in [T, T + T//10] (inclusive), drawn per
    example; ``x`` is right-padded with zeros (both channels) to
    ``T + T//10`` and ``lengths`` holds the true lengths.
  * Exactly two pairs are marked (marker 1.0): first one of the first ten
    pairs (indices 0..9, value X1), then one of the first ``T//2 - 1`` pairs
    that are still unmarked (value X2) -- i.e. an index ``k`` uniform in
    ``[0, T//2 - 1)`` over the unmarked pairs, which is position ``k`` if
    ``k < p1`` else ``k + 1``; so ``p2 <= T//2 - 1``.
  * All other markers are 0 except the first and the last valid pair, whose
    markers are -1. A marked first pair keeps marker +1 (it is "marked").
  * "X1 is set to zero in the rare case where the first pair of the sequence
    got marked": we zero the value of the first pair whenever it is marked
    (by either draw; the second draw can hit it too, with probability
    0.9 / (T//2 - 1)), in ``x`` as well, so the target is always
    recomputable from ``x``.
  * Target: ``0.5 + (X1 + X2) / 4`` (the sum scaled to [0, 1]).

  Pascanu et al.'s ``addition.py`` (pascanur/trainingRNNs) is a *different*
  variant (U[0,1] values, one length per batch, target (X1+X2)/2); it is not
  what this function generates.

  Baseline: the target's mean is exactly 0.5 (values are symmetric), so
  predicting 0.5 always has MSE ``Var(y) = (E[X1'^2] + E[X2'^2]) / 16`` with
  ``E[X^2] = 1/3`` for U[-1, 1] and the zeroed cases removed:
  ``P(p1 = 0) = 1/10``, ``P(p2 = 0) = (9/10) / (T//2 - 1)``, giving
  ``Var(y) = (1.9 - 0.9 / (T//2 - 1)) / 48`` (0.03920 for T = 100; without
  the zeroing it would be 1/24).
  """
  max_len = T + T // 10
  rows = np.arange(n)
  lengths = rng.integers(T, max_len + 1, size=n)
  values = rng.uniform(-1.0, 1.0, size=(n, max_len))
  p1 = rng.integers(0, 10, size=n)
  k = rng.integers(0, T // 2 - 1, size=n)
  p2 = np.where(k < p1, k, k + 1)

  valid = np.arange(max_len)[None, :] < lengths[:, None]
  markers = np.zeros((n, max_len))
  markers[:, 0] = -1.0
  markers[rows, lengths - 1] = -1.0
  markers[rows, p1] = 1.0
  markers[rows, p2] = 1.0
  values[:, 0] = np.where(markers[:, 0] == 1.0, 0.0, values[:, 0])
  values = np.where(valid, values, 0.0)

  x = np.stack([values, markers], axis=-1).astype(np.float32)
  # Recomputed from the float32 inputs so y is exactly what x determines.
  y = 0.5 + (x[rows, p1, 0].astype(np.float64)
             + x[rows, p2, 0].astype(np.float64)) / 4.0
  return {'x': x, 'y': y.astype(np.float32),
          'lengths': lengths.astype(np.int32)}


def adding_modern(rng: np.random.Generator, n: int, T: int) -> data.Split:
  """Adding problem in the form of Le, Jaitly & Hinton (2015) and Arjovsky,
  Shah & Bengio (2016, "Unitary Evolution Recurrent Neural Networks").

  Source: ``generate_data`` in ``adding_problem.py`` of amarshah/complex_RNN
  (the uRNN authors' code): channel 0 holds values U(0, 1), channel 1 is a
  marker that is 1 at exactly two steps, one uniform in the first half
  ``[0, T//2)`` and one uniform in the second half ``[T//2, T)``; the target
  is the sum of the two marked values. The length is fixed at T
  (``lengths`` are all T). (The uRNN code draws the second index as
  ``T//2 + randint(T//2)``, which is the same range for even T; for odd T we
  allow the last step too.)

  Baseline: the target is the sum of two independent U(0, 1) values, mean 1
  and variance ``2 * 1/12 = 1/6``, so always predicting 1 has MSE 1/6.
  """
  half = T // 2
  rows = np.arange(n)
  values = rng.uniform(0.0, 1.0, size=(n, T))
  p1 = rng.integers(0, half, size=n)
  p2 = rng.integers(half, T, size=n)
  markers = np.zeros((n, T))
  markers[rows, p1] = 1.0
  markers[rows, p2] = 1.0
  x = np.stack([values, markers], axis=-1).astype(np.float32)
  y = x[rows, p1, 0].astype(np.float64) + x[rows, p2, 0].astype(np.float64)
  return {'x': x, 'y': y.astype(np.float32),
          'lengths': np.full(n, T, dtype=np.int32)}


def adding_baseline_mse(variant: str, T: int) -> float:
  """MSE of always predicting the mean target (derivations in the generators)."""
  if variant == 'modern':
    return 1.0 / 6.0
  if variant == 'hochreiter':
    return (1.9 - 0.9 / (T // 2 - 1)) / 48.0
  raise ValueError(f'Unknown adding variant {variant!r}; known: {ADDING_VARIANTS}')


@data.register('adding')
def load_adding(config: ml_collections.ConfigDict) -> data.Dataset:
  """The adding problem; ``config.variant`` is 'hochreiter' or 'modern'.

  Splits hold ``x`` float32 (N, T_max, 2) with channel 0 the value and
  channel 1 the marker, ``y`` float32 (N,), ``lengths`` int32 (N,);
  ``T_max = T + T//10`` for 'hochreiter' (zero right-padding) and T for
  'modern'. ``info['baseline_mse']`` is the analytic MSE of predicting the
  mean target, ``info['baseline_mse_empirical']`` the same on the test split
  (mean squared deviation of the test targets from the analytic mean).
  """
  variant = config.get('variant', 'modern')
  if variant not in ADDING_VARIANTS:
    raise ValueError(
        f'Unknown adding variant {variant!r}; known: {ADDING_VARIANTS}')
  if variant == 'hochreiter':
    # The last valid step (>= T-1) must lie past both marks (<= 9, <= T//2-1).
    T = _seq_len(config, 11)
    gen, mean = adding_hochreiter, 0.5
  else:
    T = _seq_len(config, 2)
    gen, mean = adding_modern, 1.0
  ds = _build(config, lambda rng, n: gen(rng, n, T), {
      'task': 'regress', 'num_outputs': 1, 'seq_len': T, 'variant': variant,
      'target_mean': mean, 'baseline_mse': adding_baseline_mse(variant, T)})
  y = ds.test['y'].astype(np.float64)
  ds.info['baseline_mse_empirical'] = float(np.mean((y - mean) ** 2))
  return ds


# ----------------------------------------------------------------------------
# Copy memory.


def copy_memory(rng: np.random.Generator, n: int, T: int) -> data.Split:
  """Copy-memory problem of Arjovsky, Shah & Bengio (2016), Section 4.1.

  Source: ``generate_data`` in ``memory_problem.py`` of amarshah/complex_RNN
  (the uRNN authors' code; the same layout as the widely copied
  ``copying_data`` of the EUNN/RUM code). With K = 10 and tokens 1..8 data,
  0 blank, 9 delimiter, the input of length T + 20 is::

      x = [s_1 .. s_10] + [0] * (T - 1) + [9] + [0] * 10

  so the delimiter sits at index T + 9 (the network reads it, then has 10
  more steps), and the target is::

      y = [0] * (T + 10) + [s_1 .. s_10]

  ``x`` is stored one-hot float32 (N, T + 20, 10) and ``y`` int32 tokens
  (N, T + 20) in 0..8 (9 classes). The memoryless baseline predicts blank
  for T + 10 steps and a uniform guess over the 8 symbols for the last 10,
  with cross-entropy ``10 * ln(8) / (T + 20)`` per step.
  """
  K = COPY_NUM_MEMORIZE
  seq = rng.integers(1, COPY_ALPHABET + 1, size=(n, K))
  blanks = np.full((n, T - 1), COPY_BLANK)
  delim = np.full((n, 1), COPY_DELIMITER)
  tail = np.full((n, K), COPY_BLANK)
  tokens = np.concatenate([seq, blanks, delim, tail], axis=1)
  y = np.concatenate([np.full((n, T + K), COPY_BLANK), seq], axis=1)
  return {'x': _one_hot(tokens, COPY_NUM_TOKENS), 'y': y.astype(np.int32)}


@data.register('copy')
def load_copy(config: ml_collections.ConfigDict) -> data.Dataset:
  """Copy memory with ``config.seq_len`` = T (delay); see `copy_memory`."""
  T = _seq_len(config, 1)
  K = COPY_NUM_MEMORIZE
  return _build(config, lambda rng, n: copy_memory(rng, n, T), {
      'task': 'sequence_classify', 'num_classes': COPY_ALPHABET + 1,
      'seq_len': T + 2 * K, 'T': T,
      'baseline_ce': K * math.log(COPY_ALPHABET) / (T + 2 * K)})


# ----------------------------------------------------------------------------
# Temporal order.


def temporal_order_positions(T: int, num_relevant: int) -> tuple[tuple[int, int], ...]:
  """Half-open ranges ``[lo, hi)`` of the relevant-symbol positions.

  Exactly those of pascanur/trainingRNNs: ``tempOrder.py`` draws
  ``p0 = int(.1 T) + randint(int(.1 T))`` and
  ``p1 = int(.5 T) + randint(int(.1 T))``; ``tempOrder3bit.py`` draws from
  offsets ``int(.1 T)``, ``int(.3 T)``, ``int(.6 T)`` with the same width
  ``int(.1 T)``. (Integer arithmetic ``T // 10`` etc. equals Pascanu's
  ``int(T * .1)`` for every T checked, up to 200000.)
  """
  w = T // 10
  starts = {2: (T // 10, T // 2), 3: (T // 10, 3 * T // 10, 6 * T // 10)}
  return tuple((s, s + w) for s in starts[num_relevant])


def temporal_order(rng: np.random.Generator, n: int, T: int,
                   num_relevant: int) -> data.Split:
  """Temporal order task (Hochreiter & Schmidhuber 1997, Experiments 6a/6b)
  as generated by Pascanu, Mikolov & Bengio (2013, "On the difficulty of
  training recurrent neural networks").

  Source: ``TempOrderTask.generate`` (``tempOrder.py``) and
  ``TempOrder3bitTask.generate`` (``tempOrder3bit.py``) in
  pascanur/trainingRNNs, followed exactly: 6 one-hot symbols, channels 0/1
  the relevant symbols A/B, channels 2..5 the distractors; every step is a
  uniform distractor except the 2 (or 3) relevant positions, each uniform in
  its range from `temporal_order_positions` and carrying A or B (``v_i`` in
  {0, 1}, uniform). The class is ``v0 + 2 v1`` (+ ``4 v2``), i.e. 4 (8)
  classes, to be predicted at the end of the sequence. Unlike Hochreiter's
  original there are no start/end symbols and the length is fixed at T.
  """
  rows = np.arange(n)
  tokens = rng.integers(2, TEMPORAL_ORDER_NUM_SYMBOLS, size=(n, T))
  label = np.zeros(n, dtype=np.int64)
  for i, (lo, hi) in enumerate(temporal_order_positions(T, num_relevant)):
    p = rng.integers(lo, hi, size=n)
    v = rng.integers(0, 2, size=n)
    tokens[rows, p] = v
    label += v << i
  return {'x': _one_hot(tokens, TEMPORAL_ORDER_NUM_SYMBOLS),
          'y': label.astype(np.int32)}


def _load_temporal_order(config: ml_collections.ConfigDict,
                         num_relevant: int) -> data.Dataset:
  # int(.1 T) must be >= 1 (Pascanu's randint(int(.1 T)) needs it).
  T = _seq_len(config, 10)
  return _build(
      config, lambda rng, n: temporal_order(rng, n, T, num_relevant), {
          'task': 'classify', 'num_classes': 2 ** num_relevant, 'seq_len': T,
          'positions': temporal_order_positions(T, num_relevant)})


@data.register('temporal_order')
def load_temporal_order(config: ml_collections.ConfigDict) -> data.Dataset:
  """Temporal order with 2 relevant symbols (4 classes); see `temporal_order`."""
  return _load_temporal_order(config, 2)


@data.register('temporal_order3')
def load_temporal_order3(config: ml_collections.ConfigDict) -> data.Dataset:
  """Temporal order with 3 relevant symbols (8 classes); see `temporal_order`."""
  return _load_temporal_order(config, 3)
