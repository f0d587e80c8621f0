"""Population-based training inside the program (Jaderberg et al. 2017, "Population
Based Training of Neural Networks": truncation selection, perturbation).

``train.pbt = 'every=E,fraction=F,keys=optim.lr+optim.momentum'`` (``''``: off).
Every E evaluations, the live members are ranked by the validation selection
metric; each of the worst ``max(1, floor(F n))`` copies the parameters, model
state and optimizer state of one of the best ``max(1, floor(F n))`` (exploit;
chosen at random) and multiplies each of ``keys`` of that member by 0.8 or 1.2
(explore; chosen at random). A member keeps its own index, random stream and
best-so-far record. The draws come from a generator seeded by the run's seed
and the epoch, so a resumed run makes the same decisions.

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


@dataclasses.dataclass
class PBT:
  every: int = 2
  fraction: float = 0.25
  keys: tuple[str, ...] = ('optim.lr',)

  def decide(self, values: np.ndarray, live: np.ndarray, maximize: bool, seed: int,
             epoch: int) -> list[tuple[int, int, dict[str, float]]]:
    """(member, donor, {key: factor}) for each member that exploits; ``values`` (K,)
    the current metric (non-finite = worst), ``live`` (K,)."""
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
      out.append((int(b), donor, {k: float(rng.choice(FACTORS)) for k in self.keys}))
    return out


def parse(spec: str) -> PBT | None:
  """'' -> None; 'every=2,fraction=0.25,keys=optim.lr+optim.momentum' -> PBT."""
  spec = (spec or '').strip()
  if not spec:
    return None
  p = PBT()
  for item in filter(None, spec.split(',')):
    k, sep, v = item.partition('=')
    if not sep or k not in ('every', 'fraction', 'keys'):
      raise ValueError(f'train.pbt={spec!r}: expected every=E,fraction=F,keys=a+b, got {item!r}')
    try:
      if k == 'every':
        p.every = int(v)
      elif k == 'fraction':
        p.fraction = float(v)
      else:
        p.keys = tuple(filter(None, v.split('+')))
    except ValueError:
      raise ValueError(f'train.pbt={spec!r}: {k}={v!r} is not a number') from None
  bad = [k for k in p.keys if k not in KEYS]
  if bad or not p.keys:
    raise ValueError(f'train.pbt={spec!r}: keys {bad or "(none)"} cannot be explored; '
                     f'allowed: {"+".join(KEYS)}')
  if p.every < 1 or not 0 < p.fraction <= 0.5:
    raise ValueError(f'train.pbt={spec!r}: needs every >= 1 and 0 < fraction <= 0.5')
  return p
