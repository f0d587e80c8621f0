"""Groups: the member kinds of a mixed population at their own shapes, in one program.

A mixed population (`research.structure`) runs every member in the program's
widest, mixed model: a 32-unit member padded to 64 units pays for 64, and a
member of a variant with three gates pays for the mixed cell's four. With
``train.groups`` the population's member kinds (distinct structures) are
partitioned into *groups*; each group steps in its own model, the one a
population of just its members would run (its widest widths, its variants),
and all groups are parts of one compiled program: one compilation, one
training loop, one checkpoint, no member paying for another group's shapes.

* ``'none'`` (default): one group, the padded program of `research.structure`;
* ``'kinds'``: one group per member kind (no padding at all);
* ``'cost'``: `research.structure.program_groups`'s cost model decides which
  kinds share a group (padded member-step FLOPs against the fixed and per-step
  costs of a group, which are a program's: its scan's loop, its compilation).

The population's state stays in the program's shapes, so checkpoints,
compaction, early stopping, pruning and the final results are those of the
ungrouped program. A training epoch (and an evaluation) takes each group's rows,
cuts their variables and optimizer state to the group's shapes with index maps
(`research.structure`'s, from the group's model to the program's), runs the
group's own vmapped epoch on them and writes them back: exact copies, so every
member computes what its solo run computes. A group none of whose members still
trains (early stopping, divergence, pruning) is skipped (`jax.lax.cond`): it stops
costing at once, without the recompilation compaction needs. Groups follow the rows
a compacted population keeps (`Grouped.for_rows`; one program per set of rows, as
the compaction's sizes bound).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from research import configlib, structure as structure_lib

CHOICES = ('none', 'kinds', 'cost')


def parse(value: Any) -> str:
  """``train.groups`` checked: one of `CHOICES` ('' counts as 'none')."""
  v = value or 'none'
  if v not in CHOICES:
    raise ValueError(f'train.groups={value!r}: must be one of {", ".join(CHOICES)} (none: one '
                     'padded program; kinds: each member kind at its own shapes; cost: the '
                     'cost model groups kinds)')
  return v


def partition(how: str, config: ml_collections.ConfigDict, plan: structure_lib.Plan,
              members: list[dict], dataset, devices: int) -> list[list[int]]:
  """Member indices of each group (sorted, groups in order of their first member)."""
  K = len(members)
  of_kind = [[i for i in range(K) if plan.member_kind[i] == k]
             for k in range(len(plan.own_models))]
  if how == 'kinds':
    parts = [[k] for k in range(len(of_kind))]
  else:
    keys = [k for k in plan.keys if k not in structure_lib.RULE_KEYS]
    reps = [{k: members[idx[0]][k] for k in keys if k in members[idx[0]]} for idx in of_kind]
    flops = lambda g: structure_lib.padded_flops(config, [reps[i] for i in g], dataset, keys=keys)
    parts = structure_lib.program_groups(list(range(len(of_kind))), [len(x) for x in of_kind],
                                         flops, devices=devices,
                                         steps=structure_lib.program_steps(config, dataset))
  groups = [sorted(i for k in p for i in of_kind[k]) for p in parts]
  return sorted(groups, key=lambda g: g[0])


# ---------------------------------------------------------------------------- index maps

def _flat(tree) -> dict:
  return structure_lib._flatten(tree)


def _cut(tree: dict, maps: dict) -> dict:
  """The group's leaves (each with a leading member axis) cut out of the program's."""
  flat = _flat(tree)
  out = {}
  for path, idx in maps.items():
    x = flat[path]
    for ax, ix in enumerate(idx):
      if len(ix) == x.shape[ax + 1] and np.array_equal(ix, np.arange(len(ix))):
        continue
      if np.array_equal(ix, np.arange(len(ix))):
        x = jax.lax.slice_in_dim(x, 0, len(ix), axis=ax + 1)
      else:
        x = jnp.take(x, jnp.asarray(ix), axis=ax + 1)
    out[path] = x
  return structure_lib._unflatten(out)


def _paste(tree: dict, group: dict, maps: dict) -> dict:
  """``tree`` (program shapes) with the group's leaves written back in their places."""
  flat, g = _flat(tree), _flat(group)
  out = dict(flat)
  for path, idx in maps.items():
    if all(len(ix) == n and np.array_equal(ix, np.arange(n))
           for ix, n in zip(idx, flat[path].shape[1:])):
      out[path] = g[path]  # every index map is the identity
      continue
    out[path] = flat[path].at[(slice(None),) + np.ix_(*idx)].set(g[path])
  return structure_lib._unflatten(out)


def _is_dict(x) -> bool:
  return isinstance(x, dict)


def _param_trees(tx, opt_state) -> list:
  """The parameter-shaped subtrees of an optimizer state, in optax's order."""
  out = []
  optax.tree_map_params(tx, lambda p: out.append(p) or p, opt_state, is_leaf=_is_dict)
  return out


@dataclasses.dataclass
class _Group:
  ids: np.ndarray  # member indices (sorted)
  trainer: Any  # the group's Trainer: its model, its masks
  maps: dict  # collection -> {path: per-axis indices in the program's shapes}
  variant: np.ndarray | None  # member index -> the group's variant index (its mixed cell)
  structure: Any  # the group's `structure` collection (abstract), or None


def _group(make_trainer: Callable, top, config, dataset, members, task, plan, layout,
           ids: list[int], abstract_init) -> _Group:
  mine = [members[i] for i in ids]
  model_keys = [k for k in plan.keys if k not in structure_lib.RULE_KEYS]
  shared = [k for k in model_keys if len({repr(m[k]) for m in mine}) == 1]
  gconfig = structure_lib.member_config(config, mine[0], shared)
  gplan = structure_lib.make_plan(gconfig, mine, task.hparam_keys, abstract_init)
  sub = make_trainer(gconfig, dataset, mine, task, gplan, layout)
  # one optimizer for the whole program: the same rules, state layout and schedules
  for name in ('tx', 'multiplier', 'input_noise', 'augment', 'maximize', 'patience'):
    setattr(sub, name, getattr(top, name))
  gmodel = gplan.model_config if gplan is not None and gplan.mixes_model else gconfig.model
  _, gvars = abstract_init(gmodel)
  own = {c: t for c, t in gvars.items() if c != structure_lib.STRUCTURE}
  try:
    variant = configlib.get_path(gmodel, structure_lib.VARIANT_KEY.split('.', 1)[1])
  except KeyError:
    variant = None
  widths = [k for k in model_keys if k != structure_lib.VARIANT_KEY]
  flat_maps = structure_lib._index_maps(gmodel, {structure_lib.VARIANT_KEY: variant}, widths,
                                        plan.model_config, own, plan._super, abstract_init)
  maps: dict[str, dict] = {}
  for (col, path), idx in flat_maps.items():
    maps.setdefault(col, {})[path] = idx
  groups_variant, struct = None, gvars.get(structure_lib.STRUCTURE)
  if struct is not None:
    groups_variant = np.zeros(len(members), np.int32)
    groups_variant[np.asarray(ids)] = gplan.member_variant
  return _Group(np.asarray(ids), sub, maps, groups_variant, struct)


class Grouped:
  """A Trainer whose epochs and evaluations run each group of members in its own
  model, inside one program. Everything else (init, `update_best`, the program's
  model and shapes) is the top-level Trainer's."""

  def __init__(self, make_trainer: Callable, config, dataset, members, task, plan, layout,
               parts: list[list[int]], abstract_init):
    self.top = make_trainer(config, dataset, members, task, plan, layout)
    if self.top.stream:
      raise ValueError('train.groups with data.stream=True is not supported: set '
                       'train.groups=none or data.stream=False')
    self.layout = layout
    self.groups = [_group(make_trainer, self.top, config, dataset, members, task, plan, layout,
                          ids, abstract_init) for ids in parts]
    self.member_group = np.zeros(len(members), np.int32)
    for g, grp in enumerate(self.groups):
      self.member_group[grp.ids] = g
    self._views: dict[tuple, _Rows] = {}
    full = self.for_rows(np.arange(len(members)))
    self.train_epoch, self.evaluate = full.train_epoch, full.evaluate

  def __getattr__(self, name):
    if name == 'top':  # (not yet set: no recursion)
      raise AttributeError(name)
    return getattr(self.top, name)

  def describe(self) -> list[dict]:
    """Per group: its members and model (for logs and results.json)."""
    return [{'members': len(g.ids), 'kinds': sorted({int(self.top.plan.member_kind[i])
                                                      for i in g.ids})}
            for g in self.groups]

  def for_rows(self, index) -> '_Rows':
    """The jitted epoch and evaluation of a population whose rows hold members ``index``."""
    key = tuple(int(i) for i in index)
    if key not in self._views:
      self._views[key] = _Rows(self, np.asarray(key))
    return self._views[key]

  # ---- cutting a group's rows to its shapes and back

  def _to_group(self, grp: _Group, ids: np.ndarray, params, model_state):
    p = _cut(params, grp.maps['params'])
    ms = {c: _cut(t, grp.maps[c]) for c, t in model_state.items() if c in grp.maps}
    if grp.structure is not None:
      v = jnp.asarray(grp.variant[ids])
      ms[structure_lib.STRUCTURE] = jax.tree.map(lambda _: v, grp.structure)
    return p, ms

  def _hp(self, grp: _Group, hp: dict) -> dict:
    hp = dict(hp)
    mask = hp.pop('_mask', None)
    if grp.trainer.masked and mask is not None:
      hp['_mask'] = _cut(mask, grp.maps['params'])
    return hp

  def _state_to_group(self, grp: _Group, ids, state):
    params, ms = self._to_group(grp, ids, state.params, state.model_state)
    opt = optax.tree_map_params(self.top.tx, lambda t: _cut(t, grp.maps['params']),
                                state.opt_state, is_leaf=_is_dict)
    return state.replace(params=params, model_state=ms, opt_state=opt, best_params=None,
                         best_model_state=None)

  def _state_from_group(self, grp: _Group, new, old):
    params = _paste(old.params, new.params, grp.maps['params'])
    ms = {c: (_paste(t, new.model_state[c], grp.maps[c]) if c in grp.maps else t)
          for c, t in old.model_state.items()}
    olds = iter(_param_trees(self.top.tx, old.opt_state))
    opt = optax.tree_map_params(self.top.tx,
                                lambda t: _paste(next(olds), t, grp.maps['params']),
                                new.opt_state, is_leaf=_is_dict)
    return new.replace(params=params, model_state=ms, opt_state=opt,
                       best_params=old.best_params, best_model_state=old.best_model_state)


def _rows_take(tree, pos: np.ndarray):
  if len(pos) and np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos))):
    return jax.tree.map(lambda x: jax.lax.slice_in_dim(x, int(pos[0]), int(pos[0]) + len(pos)),
                        tree)
  return jax.tree.map(lambda x: jnp.take(x, jnp.asarray(pos), axis=0), tree)


class _Rows:
  """One set of rows: which rows each group holds, and the jitted functions."""

  def __init__(self, owner: Grouped, index: np.ndarray):
    self.owner = owner
    g_of_row = owner.member_group[index]
    self.parts = [(grp, np.flatnonzero(g_of_row == g), index[g_of_row == g])
                  for g, grp in enumerate(owner.groups) if (g_of_row == g).any()]
    order = np.concatenate([pos for _, pos, _ in self.parts])
    self.inverse = None if np.array_equal(order, np.arange(len(index))) else np.argsort(order)
    self.train_epoch = jax.jit(self._train_epoch, donate_argnums=0)
    self.evaluate = jax.jit(self._evaluate)

  def _constrain(self, tree, n: int):
    lay = self.owner.layout
    if lay.mesh is None or n % lay.members:
      return tree
    return jax.lax.with_sharding_constraint(tree, lay.member)

  def _join(self, outs: list):
    tree = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)
    if self.inverse is not None:
      tree = jax.tree.map(lambda x: jnp.take(x, jnp.asarray(self.inverse), axis=0), tree)
    return tree

  def rows_computed(self, live: np.ndarray) -> int:
    """How many rows an epoch computes when ``live`` (per row) says which still
    train: a group none of whose members trains is skipped."""
    return sum(len(pos) for _, pos, _ in self.parts if live[pos].any())

  def rows_kept(self, live: np.ndarray, shards: int) -> np.ndarray:
    """The rows a compaction keeps (sorted), group by group: a group's live rows and
    as few of its stopped ones as make their count a multiple of ``shards`` (each
    group's epoch is sharded on its own); a group none of whose rows trains leaves."""
    keep = [pos[self.owner.top.rows_kept(live[pos], shards)]
            for _, pos, _ in self.parts if live[pos].any()]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)

  def _train_epoch(self, state, hp, data):
    o = self.owner
    states, metrics = [], []
    for grp, pos, ids in self.parts:
      old = self._constrain(_rows_take(state, pos), len(pos))
      h = self._constrain(o._hp(grp, _rows_take(hp, pos)), len(pos))
      step = o.layout.vmap(grp.trainer._train_epoch, in_axes=(0, 0, None))

      def run(old, h, grp=grp, ids=ids, step=step):
        new, m = step(o._state_to_group(grp, ids, old), h, data)
        return o._state_from_group(grp, new, old), m

      def skip(old, h, run=run):
        # every member stopped: its state stays as it is (as when compaction has
        # taken it off the devices) and its steps report nothing (ok False)
        _, shapes = jax.eval_shape(run, old, h)
        return old, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype)
                                 if s.dtype == jnp.bool_ else jnp.full(s.shape, jnp.nan, s.dtype),
                                 shapes)

      new, m = jax.lax.cond(jnp.any(old.active & ~old.diverged), run, skip, old, h)
      states.append(new)
      metrics.append(m)
    n = sum(len(pos) for _, pos, _ in self.parts)
    return self._constrain(self._join(states), n), self._join(metrics)

  def _evaluate(self, params, model_state, hp, data):
    o = self.owner
    outs = []
    for grp, pos, ids in self.parts:
      p, ms = o._to_group(grp, ids, _rows_take(params, pos), _rows_take(model_state, pos))
      h = o._hp(grp, _rows_take(hp, pos))
      ev = o.layout.vmap(grp.trainer._evaluate, in_axes=(0, 0, 0, None))
      outs.append(ev(p, ms, h, data))
    return self._join(outs)
