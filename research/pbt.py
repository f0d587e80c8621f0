"""Population-based training inside the program (Jaderberg et al. 2017, "Population
Based Training of Neural Networks": truncation selection, perturbation).

``train.pbt = 'every=E,fraction=F,keys=optim.lr+optim.momentum[,explore=X,resample_p=P]'``
(``''``: off). Every E evaluations, the live members are ranked by the validation
selection metric; each of the worst ``max(1, floor(F n))`` copies the parameters,
model state and optimizer state of one of the best ``max(1, floor(F n))``
(exploit; chosen at random) and explores each of ``keys``:

* ``explore=perturb`` (the default): the donor's value times 0.8 or 1.2 (chosen
  at random);
* ``explore=resample``: with probability ``resample_p`` (default 0.25) a value
  drawn anew from the population's initial range of that key (the members'
  smallest to largest value at the start; log-uniform when the smallest is
  positive, as for learning rates; uniform otherwise), else perturbed as above
  (Jaderberg et al.'s "resample" explore, with the initial range as the prior).

A member keeps its own index, random stream and best-so-far record. The draws
come from a generator seeded by the run's seed and the epoch, so a resumed run
makes the same decisions.

Keys: the optimizer's numeric settings and the input noise (not the task's loss
weights, which would change what the validation metric means). The members
must share one structure: a copied state has the donor's shapes.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from research import optim

KEYS = optim.HPARAM_KEYS + ('train.input_noise',)
FACTORS = (0.8, 1.2)
EXPLORE = ('perturb', 'resample')


@dataclasses.dataclass
class PBT:
  every: int = 2
  fraction: float = 0.25
  keys: tuple[str, ...] = ('optim.lr',)
  explore: str = 'perturb'
  resample_p: float = 0.25

  def decide(self, values: np.ndarray, live: np.ndarray, maximize: bool, seed: int,
             epoch: int, ranges: dict[str, tuple[float, float]] | None = None
             ) -> list[tuple[int, int, dict[str, tuple[str, float]]]]:
    """(member, donor, {key: ('perturb', factor) | ('resample', value)}) for each
    member that exploits; ``values`` (K,) the current metric (non-finite = worst),
    ``live`` (K,); ``ranges``: each key's (smallest, largest) initial value in the
    population (needed by ``explore=resample``)."""
    idx = np.flatnonzero(live)
    if idx.size < 2:
      return []
    v = np.where(np.isfinite(values[idx]), values[idx], -np.inf if maximize else np.inf)
    order = idx[np.argsort(-v if maximize else v, kind='stable')]  # best first
    q = max(1, math.floor(self.fraction * idx.size))
    q = min(q, idx.size // 2)
    top, bottom = order[:q], order[-q:]
    rng = np.random.default_rng([int(seed), int(epoch)])
    out = []
    for b in bottom:
      donor = int(rng.choice(top))
      changes = {}
      for k in self.keys:
        if self.explore == 'resample' and rng.random() < self.resample_p:
          changes[k] = ('resample', resample(rng, *ranges[k]))
        else:
          changes[k] = ('perturb', float(rng.choice(FACTORS)))
      out.append((int(b), donor, changes))
    return out


def resample(rng: np.random.Generator, lo: float, hi: float) -> float:
  """A value from [lo, hi]: log-uniform when lo > 0, uniform otherwise."""
  if lo > 0:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  return float(rng.uniform(lo, hi))


def parse(spec: str) -> PBT | None:
  """'' -> None; 'every=2,fraction=0.25,keys=optim.lr+optim.momentum',
  'every=2,explore=resample,resample_p=0.25' -> PBT."""
  spec = (spec or '').strip()
  if not spec:
    return None
  p = PBT()
  given = set()
  for item in filter(None, spec.split(',')):
    k, sep, v = item.partition('=')
    if not sep or k not in ('every', 'fraction', 'keys', 'explore', 'resample_p'):
      raise ValueError(f'train.pbt={spec!r}: expected every=E,fraction=F,keys=a+b'
                       f'[,explore=perturb|resample,resample_p=P], got {item!r}')
    given.add(k)
    if k == 'explore':
      if v not in EXPLORE:
        raise ValueError(f'train.pbt={spec!r}: explore must be perturb or resample, got {v!r}')
      p.explore = v
      continue
    try:
      if k == 'every':
        p.every = int(v)
      elif k == 'fraction':
        p.fraction = float(v)
      elif k == 'resample_p':
        p.resample_p = float(v)
      else:
        p.keys = tuple(filter(None, v.split('+')))
    except ValueError:
      raise ValueError(f'train.pbt={spec!r}: {k}={v!r} is not a number') from None
  if 'resample_p' in given and p.explore != 'resample':
    raise ValueError(f'train.pbt={spec!r}: resample_p needs explore=resample')
  if not 0 <= p.resample_p <= 1:
    raise ValueError(f'train.pbt={spec!r}: needs 0 <= resample_p <= 1')
  bad = [k for k in p.keys if k not in KEYS]
  if bad or not p.keys:
    raise ValueError(f'train.pbt={spec!r}: keys {bad or "(none)"} cannot be explored; '
                     f'allowed: {"+".join(KEYS)}')
  if p.every < 1 or not 0 < p.fraction <= 0.5:
    raise ValueError(f'train.pbt={spec!r}: needs every >= 1 and 0 < fraction <= 0.5')
  return p
