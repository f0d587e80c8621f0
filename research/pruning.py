"""Pruning inside the population: decisions over the member axis at each evaluation.

``train.prune`` names a rule; after every evaluation the training loop asks it
which live members to stop (they become inactive, like early-stopped members,
and leave the program at the next compaction, `research.train._Members`).
The rules see each member's validation selection metric at every evaluation
so far (`History`); a stopped member keeps its best parameters and results.

* ``median[:warmup=W]``: the median stopping rule of Google Vizier (Golovin et
  al. 2017, "Google Vizier: A Service for Black-Box Optimization", section
  3.2.1), with the other members in place of completed trials: at an evaluation
  ``e >= W`` (counted from 0), stop a member whose best value up to ``e`` is
  strictly worse than the median of the other members' *running averages* up to
  ``e`` (the mean of each one's values at evaluations 0..e). Only members
  evaluated at ``e`` count as others (members stopped earlier have no value
  there).
* ``median:rule=optuna[,warmup=W]``: the rule as Optuna's ``MedianPruner``
  states it: the same, but against the median of the other members' values *at*
  ``e``. (Before the Vizier rule existed, ``median`` meant this one.)
* ``asha[:eta=3,min=1]``: successive halving (Jamieson & Talwalkar 2016; the
  promotion rule of Li et al. 2020's ASHA as Optuna implements it). Rungs are
  at evaluations ``min * eta**k - 1`` (0-based); at a rung a live member goes on
  only if its value is among the best ``max(1, n // eta)`` of the ``n``
  members that reached the rung (ties kept). All members reach a rung
  together, so this is the synchronous algorithm.

* ``hyperband[:eta=3,min=1,brackets=B]``: Hyperband (Li et al. 2018) as brackets
  of successive halving: member ``i`` belongs to bracket ``i % B`` (default B:
  as many as fit in the run's evaluations), whose first rung is at ``min *
  eta**b`` evaluations, so later brackets let their members train longer
  before the first cut; each bracket halves among its own members.

Directions follow the task (``select_mode``); a non-finite value is worst.
`Pruner.record` says what results.json keeps about a stopped member (its
``pruned`` entry: epoch, rule, evaluation, rung, bracket, value).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

KINDS = ('median', 'asha', 'hyperband')
MEDIAN_RULES = ('vizier', 'optuna')


@dataclasses.dataclass
class Pruner:
  kind: str
  warmup: int = 1
  eta: int = 3
  min: int = 1
  brackets: int = 0  # hyperband; 0: as many as the evaluations allow
  rule: str = 'vizier'  # median: 'vizier' (running averages) or 'optuna' (values at e)

  @property
  def name(self) -> str:
    """The rule's name in results.json: 'median' (Vizier's), 'median_optuna', 'asha',
    'hyperband'."""
    return 'median_optuna' if self.kind == 'median' and self.rule == 'optuna' else self.kind

  def rungs(self, upto: int) -> list[int]:
    out, k = [], 0
    while self.min * self.eta ** k - 1 <= upto:
      out.append(self.min * self.eta ** k - 1)
      k += 1
    return out

  def decide(self, values: np.ndarray, live: np.ndarray, maximize: bool) -> np.ndarray:
    """``values`` (evaluations so far, K): each member's metric at each evaluation, NaN
    where it was not evaluated (stopped); ``live`` (K,). Returns the members to stop."""
    e = values.shape[0] - 1
    sign = -1.0 if maximize else 1.0
    v = sign * np.where(np.isfinite(values), values, np.inf)  # lower is better; NaN -> worst
    v = np.where(np.isnan(values), np.nan, v)
    stop = np.zeros(live.shape, bool)
    if self.kind == 'median':
      if e < self.warmup:
        return stop
      reached = ~np.isnan(v[e])  # the members evaluated at e
      for i in np.flatnonzero(live):
        others = reached.copy()
        others[i] = False
        if not others.any():
          continue
        if self.rule == 'optuna':  # the others' values at e
          ref = v[e, others]
        else:  # Vizier: the others' running averages over evaluations 0..e
          ref = np.nanmean(v[:e + 1, others], axis=0)
        stop[i] = np.nanmin(v[:e + 1, i]) > np.median(ref)  # strictly worse
      return stop
    if self.kind == 'hyperband':
      n = self.brackets or 1
      for b in range(n):
        group = np.arange(live.size) % n == b
        sub = Pruner('asha', eta=self.eta, min=self.min * self.eta ** b)
        stop |= group & sub.decide(np.where(group, values, np.nan), live & group, maximize)
      return stop
    if e not in self.rungs(e):
      return stop
    at = v[e]
    reached = np.flatnonzero(~np.isnan(at))
    keep_n = max(1, len(reached) // self.eta)
    cut = np.sort(at[reached])[keep_n - 1]
    return live & ~np.isnan(at) & (at > cut)


  def record(self, values: np.ndarray, member: int) -> dict:
    """What results.json says about ``member``, stopped by this rule at the last
    evaluation of ``values`` (as in `decide`): the rule, the 0-based evaluation, the
    rung (ASHA / Hyperband: the k-th rung of the member's bracket, from 0; None for
    the median rule), the bracket (Hyperband) and the member's value there."""
    e = values.shape[0] - 1
    value = float(values[e, member])
    out = {'rule': self.name, 'evaluation': e, 'rung': None,
           'value': value if math.isfinite(value) else None}
    if self.kind == 'asha':
      out['rung'] = self.rungs(e).index(e)
    elif self.kind == 'hyperband':
      b = member % (self.brackets or 1)
      out['bracket'] = b
      out['rung'] = Pruner('asha', eta=self.eta, min=self.min * self.eta ** b).rungs(e).index(e)
    return out


def parse(spec: str, evaluations: int = 0) -> Pruner | None:
  """'' -> None; 'median', 'median:warmup=2', 'median:rule=optuna,warmup=2', 'asha',
  'asha:eta=2,min=2', 'hyperband:eta=3' -> a Pruner. ``evaluations``: the run's number of evaluations
  (Hyperband's default bracket count: every bracket gets at least its first rung).
  Anything else is a ValueError naming what is allowed."""
  spec = (spec or '').strip()
  if not spec:
    return None
  kind, _, args = spec.partition(':')
  if kind not in KINDS:
    raise ValueError(f'train.prune={spec!r}: unknown pruner {kind!r}; allowed: '
                     "'' (none), 'median[:warmup=W,rule=vizier|optuna]', "
                     "'asha[:eta=E,min=M]', 'hyperband[:eta=E,min=M,brackets=B]'")
  allowed = {'median': ('warmup', 'rule'), 'asha': ('eta', 'min'),
             'hyperband': ('eta', 'min', 'brackets')}[kind]
  values = {}
  for item in filter(None, args.split(',')):
    k, sep, v = item.partition('=')
    if not sep or k not in allowed:
      raise ValueError(f'train.prune={spec!r}: {kind} takes {", ".join(allowed)} '
                       f'(e.g. {kind}:{allowed[0]}=2), got {item!r}')
    if k == 'rule':
      if v not in MEDIAN_RULES:
        raise ValueError(f'train.prune={spec!r}: rule must be one of {", ".join(MEDIAN_RULES)} '
                         f'(vizier: Golovin et al. 2017; optuna: MedianPruner), got {v!r}')
      values[k] = v
      continue
    try:
      values[k] = int(v)
    except ValueError:
      raise ValueError(f'train.prune={spec!r}: {k} must be an integer, got {v!r}') from None
  p = Pruner(kind, **values)
  if p.eta < 2 or p.min < 1 or p.warmup < 0 or p.brackets < 0:
    raise ValueError(f'train.prune={spec!r}: needs eta >= 2, min >= 1, warmup >= 0, brackets >= 0')
  if kind == 'hyperband' and not p.brackets:
    p.brackets = 1
    while p.min * p.eta ** p.brackets <= max(evaluations, 1):
      p.brackets += 1
  return p


def history_from_records(records: list[dict], K: int, metric: str) -> list[np.ndarray]:
  """Rebuilds the per-evaluation values from metrics.jsonl records (a resumed run)."""
  by_epoch: dict[int, np.ndarray] = {}
  for r in records:
    row = by_epoch.setdefault(r['epoch'], np.full(K, np.nan))
    value = r.get(metric)
    # A member competes at an evaluation if it was training then (pruned at it included).
    competes = (r['active'] and not r['diverged']) or r.get('pruned', False)
    row[r['member']] = math.nan if value is None or not competes else value
  return [by_epoch[e] for e in sorted(by_epoch)]
