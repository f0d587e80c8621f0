"""Structure as member data: members of different shapes in one program.

A population may vary, besides numeric hyperparameters, the model's structure
where it can be made exact (`mixable_keys`):

* the LSTM variant (``model.rnn.cell_options.variant``): the program runs one
  *mixed* cell (`research.models.cells.LSTMCell` with a tuple of variants)
  that has every gate, the peepholes and full gate recurrence of any member;
  each member's gates, activations and coupling follow its own variant (an
  index in the ``structure`` collection), and the parameters its variant lacks
  are zero, get no gradient and never change;
* widths the model class lists in ``member_widths`` (recurrent hidden size,
  MLP widths, conv channels, VAE latent and hidden sizes): a narrow member is
  embedded in the widest shape;
* the optimizer's rule (``optim.name``, ``optim.nesterov``,
  ``optim.schedule``): `research.optim` runs each member's own rule.

**Embedding.** Each member's variables are drawn by its *own* model (the
model of its solo run, same seed), so it starts exactly where its solo run
starts, and placed in the program's shapes by index maps (`Plan.embed`); the
rest is zero. `Plan.masks` (1 where a member has a parameter) zero the padded
gradients and updates, so padded entries stay zero with zero optimizer state.
Zero-padded units compute zero (or feed only zero weights), so every member's
outputs, losses and gradients are those of its solo run, to float rounding.
`Plan.extract` cuts a member's own variables back out.

The index maps come from shapes alone: for each width, the model's abstract
parameter shapes at the member's width ``w`` and at ``w + 1`` give, per axis,
the number ``a`` of blocks of that width (an axis of size ``a * w``: gate
blocks, both directions, a flattened sequence), and block ``j``'s unit ``u``
goes to ``j * W + u`` in the widest width ``W``. LSTM gate blocks move to the
mixed cell's gate order (z, i, f, o). A shape this cannot explain (an axis
that mixes a width with fixed units, or two widths) is refused, as are
settings under which zero padding is not exact: dropout (its masks are drawn
per width), layer norm over a varied width, free bits over a varied latent.

**Cost.** `program_groups` decides which members share a program: a program
costs a fixed overhead plus, per step, its largest member's padded cost times
the members per device (`COST`, measured by ``scripts/benchmark.py
--benchmark=programs``).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import configlib, optim

STRUCTURE = 'structure'  # the variable collection that holds each member's structural indices
VARIANT_KEY = 'model.rnn.cell_options.variant'
RULE_KEYS = ('optim.name', 'optim.nesterov', 'optim.schedule')
_CELL = re.compile(r'^layer\d+_(fwd|bwd)$')
_SUPER_GATES = ('z', 'i', 'f', 'o')


def _model_class(config: ml_collections.ConfigDict):
  from research.models import MODELS
  return MODELS[config.model.name]


def width_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``model.<field>`` for each width the model class declares (``member_widths``)."""
  cls = _model_class(config)
  out = []
  for w in getattr(cls, 'member_widths', ()):
    try:
      configlib.get_path(config, f'model.{w}')
    except KeyError:
      continue
    out.append(f'model.{w}')
  return tuple(out)


def mixable_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The structural keys that may vary inside one population of ``config``."""
  keys = list(RULE_KEYS) + list(width_keys(config))
  try:
    cell = configlib.get_path(config, 'model.rnn.cell')
    configlib.get_path(config, VARIANT_KEY)
  except KeyError:
    cell = None
  if cell == 'lstm':
    keys.append(VARIANT_KEY)
  return tuple(keys)


def structural_varied(members: list[dict[str, Any]], task_keys: tuple[str, ...]) -> list[str]:
  from research import population
  numeric = set(population.member_keys(task_keys))
  return [k for k in population.varied_keys(members) if k not in numeric]


# ---------------------------------------------------------------------------- configs

def member_config(config: ml_collections.ConfigDict, member: dict[str, Any],
                  keys: Sequence[str]) -> ml_collections.ConfigDict:
  """``config`` with the member's structural values: the config of its solo run."""
  c = ml_collections.ConfigDict(config.to_dict())
  for k in keys:
    if k in member:
      configlib.set_path(c, k, member[k])
  return c


def _widest(values: list[Any]) -> Any:
  if isinstance(values[0], tuple):
    if len({len(v) for v in values}) > 1:
      raise ValueError(f'widths {values} differ in length (layer count is structural): '
                       'they need separate runs')
    return tuple(max(v[j] for v in values) for j in range(len(values[0])))
  return max(values)


def _set_model(model: dict, key: str, value: Any) -> None:
  parts = key.split('.')[1:]
  node = model
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = value


def _get_model(model: dict, key: str) -> Any:
  node = model
  for p in key.split('.')[1:]:
    node = node[p]
  return node


# ---------------------------------------------------------------------------- the plan

@dataclasses.dataclass
class Plan:
  """How a population with varied structure runs as one program."""
  keys: list[str]  # the varied structural keys
  model_config: ml_collections.ConfigDict  # the program's model (widest, mixed cell)
  own_models: list[Any]  # one per distinct member structure
  member_kind: list[int]  # member -> index into own_models
  rules: list[dict[str, Any]] | None  # distinct optimizer rules (None: one rule)
  member_rule: list[int]
  variants: tuple[str, ...] | None
  member_variant: list[int]
  _maps: list[dict]  # per kind: {(collection, path): per-axis index arrays}
  _super: dict  # abstract variables of the program's model
  own_shapes: list[dict]  # per kind: abstract variables of the member's own model

  @property
  def mixes_model(self) -> bool:
    return bool(self._maps)

  def num_params(self, i: int) -> int:
    shapes = self.own_shapes[self.member_kind[i]] if self.mixes_model else self._super
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes.get('params', {}))))

  def embed(self, i: int, variables: dict) -> dict:
    """Member i's own variables (numpy or jax arrays) in the program's shapes,
    with its ``structure`` collection."""
    maps = self._maps[self.member_kind[i]]
    out = {}
    for col, tree in self._super.items():
      if col == STRUCTURE:
        out[col] = jax.tree.map(lambda _: np.int32(self.member_variant[i]), tree)
        continue
      flat = _flatten(tree)
      own = _flatten(variables.get(col, {}))
      new = {}
      for path, spec in flat.items():
        z = np.zeros(spec.shape, spec.dtype)
        if path in own:
          z[np.ix_(*maps[(col, path)])] = np.asarray(own[path])
        new[path] = z
      out[col] = _unflatten(new)
    return out

  def mask(self, i: int) -> Any:
    """1 where member i has a parameter, 0 on padding and absent parameters."""
    maps = self._maps[self.member_kind[i]]
    new = {}
    for path, spec in _flatten(self._super['params']).items():
      m = np.zeros(spec.shape, np.float32)
      if ('params', path) in maps:
        m[np.ix_(*maps[('params', path)])] = 1.0
      new[path] = m
    return _unflatten(new)

  def extract(self, i: int, variables: dict) -> dict:
    """Member i's own variables cut out of the program's (no member axis)."""
    if not self.mixes_model:
      return variables
    kind = self.member_kind[i]
    maps = self._maps[kind]
    out = {}
    for col, tree in self.own_shapes[kind].items():
      flat = _flatten(variables[col])
      out[col] = _unflatten({path: jnp.asarray(flat[path])[np.ix_(*maps[(col, path)])]
                             for path in _flatten(tree)})
    return out

  def member_model(self, i: int):
    return self.own_models[self.member_kind[i]] if self.mixes_model else None


def _flatten(tree) -> dict[tuple[str, ...], Any]:
  from flax import traverse_util
  return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _unflatten(flat: dict) -> dict:
  from flax import traverse_util
  return traverse_util.unflatten_dict(flat) if flat else {}


def make_plan(config: ml_collections.ConfigDict, members: list[dict[str, Any]],
              task_keys: tuple[str, ...], abstract_init) -> Plan | None:
  """The plan for ``members`` (None when no structural key varies).

  ``abstract_init(model_config) -> (model, abstract variables)`` builds a model
  and its variables' shapes for the data at hand."""
  keys = structural_varied(members, task_keys)
  if not keys:
    return None
  refuse_inexact(config, keys, members)
  abstract_init = configlib.once_per_config(abstract_init)  # each model config traced once
  rule_keys = [k for k in keys if k in RULE_KEYS]
  model_keys = [k for k in keys if k not in RULE_KEYS]
  rules, member_rule = None, [0] * len(members)
  if rule_keys:
    seen: dict[tuple, int] = {}
    for i, m in enumerate(members):
      key = tuple(m.get(k, configlib.get_path(config, k)) for k in RULE_KEYS)
      member_rule[i] = seen.setdefault(key, len(seen))
    rules = [dict(zip(('name', 'nesterov', 'schedule'), k)) for k in seen]
  for k in model_keys:
    if k == VARIANT_KEY:
      continue
    for m in members:
      v = m[k]
      if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                 for x in (v if isinstance(v, tuple) else (v,))):
        from research.population import format_value
        raise ValueError(f'population {k}={format_value(v)}: widths must be positive '
                         'integers')
  super_config, variants = program_model(config, members, model_keys)
  member_variant = ([variants.index(m[VARIANT_KEY]) for m in members] if variants
                    else [0] * len(members))
  widths = [k for k in model_keys if k != VARIANT_KEY]
  _, super_vars = abstract_init(super_config)
  kinds: dict[str, int] = {}
  member_kind, own_models, own_shapes, maps = [], [], [], []
  for m in members:
    own = member_config(config, m, model_keys).model
    sig = own.to_json_best_effort(sort_keys=True) if model_keys else ''
    if sig not in kinds:
      kinds[sig] = len(kinds)
      own_model, own_vars = abstract_init(own)
      own_models.append(own_model)
      own_shapes.append(own_vars)
      if model_keys:
        maps.append(_index_maps(own, m, widths, super_config, own_vars, super_vars,
                                abstract_init))
    member_kind.append(kinds[sig])
  return Plan(keys, super_config, own_models, member_kind, rules, member_rule, variants,
              member_variant, maps, super_vars, own_shapes)


def program_model(config: ml_collections.ConfigDict, members: list[dict[str, Any]],
                  keys: Sequence[str]) -> tuple[ml_collections.ConfigDict, tuple | None]:
  """The model config of the program that holds ``members``: each varied width at
  its widest, a varied LSTM variant as the tuple of variants (the mixed cell).
  Returns (model config, the variants or None)."""
  model = config.model.to_dict()
  variants = None
  if VARIANT_KEY in keys:
    variants = tuple(dict.fromkeys(m.get(VARIANT_KEY, configlib.get_path(config, VARIANT_KEY))
                                   for m in members))
    _set_model(model, VARIANT_KEY, variants if len(variants) > 1 else variants[0])
    variants = variants if len(variants) > 1 else None
  for k in keys:
    if k != VARIANT_KEY and k not in RULE_KEYS:
      _set_model(model, k, _widest([m.get(k, configlib.get_path(config, k)) for m in members]))
  return ml_collections.ConfigDict(model), variants


def padded_flops(config: ml_collections.ConfigDict, members: list[dict[str, Any]],
                 dataset, keys: Sequence[str] | None = None) -> float:
  """Estimated training FLOPs of one member-step in the program that holds
  ``members`` (every member padded to its widest, mixed model): `member_flops`
  of that model's parameter count, with tokens = batch x sequence length for
  recurrent models (batch otherwise). ``keys``: the structural keys the member
  dicts set (default: every mixable key any of them holds)."""
  from research.train import abstract_init
  if keys is None:
    keys = [k for k in mixable_keys(config) if any(k in m for m in members)]
  model_cfg, _ = program_model(config, members, [k for k in keys if k not in RULE_KEYS])
  _, shapes = abstract_init(dataset)(model_cfg)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes.get('params', {})))
  x = dataset.train['x']
  tokens = int(config.train.batch_size) * (x.shape[1] if 'rnn' in config.model and x.ndim >= 2
                                           else 1)
  return member_flops(n, tokens)


def refuse_inexact(config, keys, members) -> None:
  """A ValueError when zero padding would not be exact for ``members`` varying
  ``keys`` (dropout, layer norm over a varied width, free bits over a varied latent)."""
  widths = [k for k in keys if k not in RULE_KEYS and k != VARIANT_KEY]
  if not widths:
    return
  flat = configlib.flatten(config.model)
  for k, v in flat.items():
    if 'dropout' in k.split('.')[-1] and v:
      raise ValueError(f'model.{k}={v} with varied widths {widths}: dropout masks are drawn '
                       'per width, so a padded member would not match its solo run; set '
                       f'model.{k}=0 or train each width as a separate run')
    if k.split('.')[-1] == 'norm' and v == 'layer':
      raise ValueError(f"model.{k}='layer' normalises over the varied widths {widths}, which "
                       'zero padding would change; use another norm or separate runs')
  free_bits = [m.get('task.free_bits', config.task.get('free_bits', 0)) or 0 for m in members]
  if 'model.latent' in widths and max(free_bits) > 0:
    raise ValueError('task.free_bits > 0 counts every latent unit, padded ones too: '
                     'model.latent cannot vary inside one population with free bits')


def _elements(value) -> list[int | None]:
  return list(range(len(value))) if isinstance(value, tuple) else [None]


def _bump(value, pos):
  if pos is None:
    return value + 1
  return tuple(v + (j == pos) for j, v in enumerate(value))


def _at(value, pos):
  return value if pos is None else value[pos]


def _index_maps(own: ml_collections.ConfigDict, member: dict, widths: list[str],
                super_config, own_vars: dict, super_vars: dict, abstract_init) -> dict:
  """Per (collection, path) of the member's own variables, per axis, the indices
  in the program's shapes."""
  own_d = own.to_dict()
  sup_d = super_config.to_dict()
  # Stage 1: own widths -> widest widths, in the member's own variant.
  inter_d = own.to_dict()
  for k in widths:
    _set_model(inter_d, k, _get_model(sup_d, k))
  _, inter_vars = abstract_init(ml_collections.ConfigDict(inter_d))
  derivs = []  # (own width, widest width, {(col, path): sizes at width + 1})
  for k in widths:
    for pos in _elements(_get_model(own_d, k)):
      w, W = _at(_get_model(own_d, k), pos), _at(_get_model(sup_d, k), pos)
      if w == W:
        continue
      bumped = own.to_dict()
      _set_model(bumped, k, _bump(_get_model(own_d, k), pos))
      _, b_vars = abstract_init(ml_collections.ConfigDict(bumped))
      name = k if pos is None else f'{k}[{pos}]'
      derivs.append((name, w, W, {(c, p): s.shape for c, t in b_vars.items()
                                  for p, s in _flatten(t).items()}))
  maps = {}
  for col, tree in own_vars.items():
    inter = _flatten(inter_vars.get(col, {}))
    sup = _flatten(super_vars.get(col, {}))
    for path, spec in _flatten(tree).items():
      where = f'{col}/{"/".join(path)}'
      if path not in inter or any((col, path) not in d for *_, d in derivs):
        raise ValueError(f'{where}: the varied widths change the parameter tree; '
                         'they need separate runs')
      idx = []
      for ax, n in enumerate(spec.shape):
        n_i = inter[path].shape[ax]
        moved = [(name, w, W, d[(col, path)][ax] - n) for name, w, W, d in derivs
                 if d[(col, path)][ax] != n]
        if not moved:
          if n != n_i:
            raise ValueError(f'{where}: axis {ax} changes size ({n} -> {n_i}) in a way the '
                             'varied widths do not explain; they need separate runs')
          idx.append(np.arange(n))
          continue
        if len(moved) > 1:
          raise ValueError(f'{where}: axis {ax} depends on several varied widths '
                           f'({[m[0] for m in moved]}); they need separate runs')
        name, w, W, a = moved[0]
        if n != a * w or n_i != a * W:
          raise ValueError(f'{where}: axis {ax} ({n} at {name}={w}) is not {a} blocks of '
                           f'{name}; {name} cannot vary inside one population here')
        idx.append((np.arange(a)[:, None] * W + np.arange(w)[None, :]).reshape(-1))
      # Stage 2: the member's variant -> the mixed cell's gate layout.
      if path not in sup:
        raise ValueError(f'{where}: not in the population program; needs separate runs')
      s_shape = sup[path].shape
      for ax, (n_i, n_s) in enumerate(zip(inter[path].shape, s_shape)):
        if n_i == n_s:
          continue
        cell = next((p for p in path[:-1] if _CELL.match(p)), None)
        if cell is None or path[-1] not in ('W', 'b', 'R') or ax != len(s_shape) - 1:
          raise ValueError(f'{where}: axis {ax} differs ({n_i} vs {n_s}) between the member '
                           'and the population program; it needs a separate run')
        gates = _gates(member.get(VARIANT_KEY))
        H = n_s // len(_SUPER_GATES)
        cols = np.concatenate([_SUPER_GATES.index(g) * H + np.arange(H) for g in gates])
        idx[ax] = cols[idx[ax]]
      maps[(col, path)] = idx
  return maps


def _gates(variant: str | None) -> list[str]:
  from research.models.cells import lstm_structure
  return lstm_structure(variant or 'vanilla')['gates']


# ---------------------------------------------------------------------------- cost

# Per backend: the fixed seconds of a program (``program_s``: compilation, set-up,
# evaluations), of each of its steps (``step_overhead_s``: dispatch, loop control,
# small kernels; independent of the member count) and the throughput a member's
# work runs at (``flops_per_s``, per device, in `member_flops` units). CPU: fitted
# by scripts/benchmark.py --benchmark=calibrate on 2 shared cores (step overhead,
# throughput) and --benchmark=programs on JSB Chorales (compile and set-up of 16
# separate programs: 107 s, ~6.7 s each); docs/studies/benchmarks.md. 'default'
# (GPU, TPU) is not measured yet: it assumes cheap steps and fast devices.
COST = {
    'cpu': dict(program_s=6.7, step_overhead_s=9.8e-4, flops_per_s=2.0e10),
    'default': dict(program_s=10.0, step_overhead_s=5.0e-5, flops_per_s=1.0e12),
}


def member_flops(num_params: int, tokens: int) -> float:
  """Training FLOPs of one member-step: about 6 per parameter per token (a
  multiply-add forward, two backward) for dense and recurrent layers."""
  return 6.0 * float(num_params) * float(tokens)


def program_cost(flops: Sequence[float], devices: int = 1, backend: str | None = None,
                 steps: int | None = None) -> float:
  """Estimated seconds of one program holding members of padded cost ``flops`` (each
  member padded to the largest): ``program_s`` (compilation, set-up, evaluations)
  plus ``steps`` x (``step_overhead_s`` + the members per device x the largest
  member's FLOPs / ``flops_per_s``). ``steps=None``: per step, without ``program_s``."""
  c = COST.get(backend or jax.default_backend(), COST['default'])
  if not flops:
    return 0.0
  # train.member_sharding shards over the largest device count that divides K
  k = len(flops)
  per_device = k // max(d for d in range(1, max(devices, 1) + 1) if k % d == 0)
  per_step = c['step_overhead_s'] + per_device * max(flops) / c['flops_per_s']
  return per_step if steps is None else c.get('program_s', 0.0) + steps * per_step


def program_steps(config: ml_collections.ConfigDict, dataset) -> int:
  """Training steps a run of ``config`` takes at most (epochs x batches per epoch)."""
  return int(config.train.epochs) * max(1, len(dataset.train['x']) // int(config.train.batch_size))


def program_groups(kinds: Sequence[Any], counts: Sequence[int], padded_flops,
                   devices: int = 1, backend: str | None = None,
                   max_members: int = 0, steps: int | None = None,
                   max_programs: int = 0) -> list[list[int]]:
  """Partitions member kinds into programs by the cost model.

  ``kinds``: distinct member structures; ``counts``: members of each;
  ``padded_flops(list of kind indices) -> float``: a member-step's FLOPs in
  the program that holds those kinds (its widest, mixed shape). Starts from
  one program per kind and merges the pair that saves the most estimated
  time (`program_cost`; ``steps``: the training steps of each program, which
  weigh the per-step costs against the per-program one) until no merge saves
  any (``max_members > 0`` caps a program's size); ``max_programs > 0`` goes on
  merging the pair that costs least until at most that many programs are left
  (the cost model's estimate is for this backend's measured constants: on an
  accelerator that has none yet, or to trade time for fewer compilations).
  Returns lists of kind indices."""
  groups = [[i] for i in range(len(kinds))]
  cache: dict[tuple, float] = {}

  def flops(g):
    key = tuple(sorted(g))
    if key not in cache:
      cache[key] = float(padded_flops(list(key)))
    return cache[key]

  def cost(g):
    n = sum(counts[i] for i in g)
    return program_cost([flops(g)] * n, devices, backend, steps)

  while len(groups) > 1:
    best, pair = -math.inf, None
    for a in range(len(groups)):
      for b in range(a + 1, len(groups)):
        merged = groups[a] + groups[b]
        if max_members and sum(counts[i] for i in merged) > max_members:
          continue
        saving = cost(groups[a]) + cost(groups[b]) - cost(merged)
        if saving > best:
          best, pair = saving, (a, b)
    if pair is None or (best <= 0 and not 0 < max_programs < len(groups)):
      break
    a, b = pair
    groups[a] = sorted(groups[a] + groups[b])
    del groups[b]
  return groups
