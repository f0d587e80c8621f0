"""A finished (or interrupted) run read back from its workdir: evaluation, samples, export.

``load_run(workdir)`` rebuilds the run from ``workdir/config.json``, restores its
newest readable checkpoint (`research.train.load_trained`) and places the
population state on devices the way the run did. Then

* ``evaluate(run, split, checkpoint)`` scores every member on a split with the
  trainer's own jitted, vmapped ``evaluate`` over ``train.batch_split`` of the
  split: the program the run's final test evaluation was, so for
  ``split='test', checkpoint='best'`` the metrics are the floats of the run's
  ``results.json`` (``members[i]['test/<metric>']``). The whole population is
  always evaluated (one member alone would be a different program, whose floats
  may differ in the last bits); callers pick members from the result.
* ``sample_vae`` / ``sample_text`` draw from generative members;
* ``export_member`` writes one member's Flax variables as msgpack, the run's
  config and a JSON of metadata; ``load_export`` reads them back.

Exactness needs the same mesh as the run: with several devices the run sharded
its members and batches over ``results.json['mesh']`` (member x data), and
`run_layout` rebuilds that mesh (scripts/evaluate.py starts JAX with enough CPU
devices for it). It also needs the same XLA options as the run (e.g. the
tests' ``JAX_DISABLE_MOST_OPTIMIZATIONS``); numbers then agree bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import configlib, population
from research.defaults import base_config

SPLITS = ('train', 'val', 'test')
CHECKPOINTS = ('best', 'latest')
GENERATIVE = ('vae', 'char_lm')


def _tuples(x):
  """JSON has no tuples: the configs' tuples come back as lists; make them tuples again."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The run's config from ``workdir/config.json``.

  Keys the saved run lacks (options added to `research.defaults` since) get
  their defaults, which are 'off' values that compute what the run computed.
  """
  path = Path(workdir) / 'config.json'
  if not Path(workdir).is_dir():
    raise FileNotFoundError(f'No run directory {workdir}')
  if not path.exists():
    raise FileNotFoundError(f'{workdir} holds no config.json: not a run directory '
                            '(scripts/train.py writes it)')
  return _config_from_json(path)


def _config_from_json(path: Path) -> ml_collections.ConfigDict:
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e})') from None
  config = ml_collections.ConfigDict(_tuples(saved))
  defaults = configlib.flatten(base_config())
  have = configlib.flatten(config)
  for key in sorted(set(defaults) - set(have)):
    node = config
    *parents, last = key.split('.')
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[last] = defaults[key]
  return config


def checkpoint_epochs(workdir: str | Path) -> list[int]:
  """The epochs of the complete checkpoints in ``workdir/checkpoints`` (newest last)."""
  d = Path(workdir) / 'checkpoints'
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def check_checkpoints(workdir: str | Path) -> list[int]:
  """`checkpoint_epochs`, or FileNotFoundError when there are none."""
  epochs = checkpoint_epochs(workdir)
  if not epochs:
    raise FileNotFoundError(f'No checkpoint in {Path(workdir) / "checkpoints"}; train the run '
                            'first (or let it reach its first evaluation)')
  return epochs


def num_members(config: ml_collections.ConfigDict) -> int:
  from research.tasks import make_task
  return len(population.expand(config, make_task(config.task).hparam_keys))


def run_layout(config: ml_collections.ConfigDict, results: dict | None):
  """``(config, devices)``: ``config`` with ``train.data_parallel`` set and the devices
  over which `research.mesh` rebuilds the mesh the run trained on (results.json's
  ``mesh``; runs from before the data axis recorded only ``member_sharding`` and
  had none). Warns when this machine has too few devices for it: metrics may then
  differ from the run's in the last bits."""
  results = results or {}
  recorded = results.get('mesh') or {'member': results.get('member_sharding', 1), 'data': 1}
  config = ml_collections.ConfigDict(config.to_dict())
  need = int(recorded['member']) * int(recorded['data'])
  if need > len(jax.devices()):
    logging.warning('The run trained on a %d x %d (member x data) mesh; %d device(s) are '
                    'available here, so metrics may differ from the run\'s in the last bits',
                    recorded['member'], recorded['data'], len(jax.devices()))
    return config, None
  config.train.data_parallel = int(recorded['data'])
  return config, jax.devices()[:need]


@dataclasses.dataclass
class Run:
  workdir: Path
  config: ml_collections.ConfigDict
  trainer: Any
  dataset: Any
  members: list[dict[str, Any]]
  state: Any  # MemberState, leading member axis, placed like the run's
  hp: dict[str, Any]
  epoch: int  # epoch of the restored checkpoint
  results: dict | None  # results.json, if the run finished
  replicated: Any  # sharding for data (None: default device)

  @property
  def num_members(self) -> int:
    return len(self.members)

  def split(self, name: str) -> dict[str, np.ndarray]:
    if name not in SPLITS:
      raise ValueError(f'--split must be one of {", ".join(SPLITS)}, got {name!r}')
    data = {'train': self.dataset.train, 'val': self.dataset.val,
            'test': self.dataset.test}[name]
    if data is None:
      have = ', '.join(s for s in SPLITS if getattr(self.dataset, s) is not None)
      raise ValueError(f'Dataset {self.dataset.name!r} of this run has no {name} split '
                       f'(it has: {have})')
    return data

  def member_epoch(self, i: int, checkpoint: str) -> int:
    """Epoch whose parameters ``checkpoint`` holds for member i (-1: never improved)."""
    if checkpoint == 'best':
      return int(np.asarray(self.state.best_epoch)[i])
    return self.epoch

  def variables(self, i: int, checkpoint: str) -> dict:
    """Member i's Flax variables ({'params': ..., other collections}) on the host."""
    from research.train import member_variables
    check_checkpoint(checkpoint)
    if checkpoint == 'best':
      v = member_variables(self.state, i)
    else:
      take = lambda tree: jax.tree.map(lambda a: a[i], tree)
      v = {'params': take(self.state.params), **take(self.state.model_state)}
    return jax.tree.map(np.asarray, jax.device_get(v))


def check_checkpoint(checkpoint: str) -> None:
  if checkpoint not in CHECKPOINTS:
    raise ValueError(f'--checkpoint must be best or latest, got {checkpoint!r}')


def check_split(config: ml_collections.ConfigDict, split: str) -> None:
  """Raises ValueError for a split name other than train/val/test, or for val when the
  run's dataset has none (loads the dataset for that: train and test always exist)."""
  if split not in SPLITS:
    raise ValueError(f'--split must be one of {", ".join(SPLITS)}, got {split!r}')
  if split == 'val':
    from research.data import load_dataset
    ds = load_dataset(config.data)
    if ds.val is None:
      raise ValueError(f'Dataset {ds.name!r} of this run has no val split (it has: train, '
                       'test; data.val_fraction=0 or none defined)')


def check_member(member: int, num: int) -> None:
  if not 0 <= member < num:
    raise ValueError(f'--member={member} is out of range: the run has {num} member'
                     f'{"s" if num != 1 else ""}, 0..{num - 1}')


def _restored_epoch(state, steps_per_epoch: int, epochs: list[int]) -> int:
  """The epoch of the checkpoint load_trained restored: the oldest checkpoint that
  covers the most steps any member took (each evaluation follows whole epochs)."""
  most = int(np.max(np.asarray(state.step)))
  for e in epochs:
    if e * steps_per_epoch >= most:
      return e
  return epochs[-1]


def load_run(workdir: str | Path, config: ml_collections.ConfigDict | None = None) -> Run:
  """Restores the newest readable checkpoint of the run in ``workdir``."""
  from research.train import load_trained
  workdir = Path(workdir)
  config = read_config(workdir) if config is None else config
  epochs = check_checkpoints(workdir)
  res_path = workdir / 'results.json'
  results = json.loads(res_path.read_text()) if res_path.exists() else None
  layout_config, devices = run_layout(config, results)
  trainer, dataset, members, state = load_trained(layout_config, workdir, devices)
  # (listed again: an unreadable newest checkpoint may have been moved aside)
  epoch = _restored_epoch(state, trainer.steps_per_epoch, checkpoint_epochs(workdir) or epochs)
  # As train_and_evaluate places them: state and hparams sharded by member, data replicated.
  shard, replicated = trainer.layout.member, trainer.layout.replicated
  put = (lambda x: jax.device_put(x, shard)) if shard else jnp.asarray
  state = jax.device_put(state, shard or jax.devices()[0])
  hp = jax.tree.map(put, population.stack(members))
  return Run(workdir, config, trainer, dataset, members, state, hp, epoch, results, replicated)


def evaluate(run: Run, split: str, checkpoint: str = 'best') -> list[dict[str, Any]]:
  """One record per member: member, hparams, checkpoint, epoch, ``<split>/<metric>``..."""
  from research.train import batch_split
  check_checkpoint(checkpoint)
  put_shared = ((lambda x: jax.device_put(x, run.replicated)) if run.replicated
                else jnp.asarray)
  data = jax.tree.map(put_shared, batch_split(run.split(split),
                                              int(run.config.train.eval_batch_size)))
  s = run.state
  params, model_state = ((s.best_params, s.best_model_state) if checkpoint == 'best'
                         else (s.params, s.model_state))
  vals = jax.tree.map(np.asarray, jax.device_get(run.trainer.evaluate(params, model_state,
                                                                      run.hp, data)))
  diverged = np.asarray(s.diverged)
  out = []
  for i, m in enumerate(run.members):
    out.append({'member': i, 'hparams': m, 'checkpoint': checkpoint,
                'epoch': run.member_epoch(i, checkpoint), 'checkpoint_epoch': run.epoch,
                'diverged': bool(diverged[i]),
                **{f'{split}/{k}': float(v[i]) for k, v in sorted(vals.items())}})
  return out


def table(run: Run, records: list[dict[str, Any]]) -> str:
  """Records of `evaluate` as a Markdown table (varied hyperparameters only)."""
  varied = population.varied_keys(run.members)
  metrics = [k for k in records[0] if '/' in k]
  head = ['member'] + (['hparams'] if varied else []) + ['epoch'] + metrics
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in records:
    cells = [str(r['member'])]
    if varied:
      cells.append(', '.join(f'{k}={population.format_value(r["hparams"][k])}' for k in varied))
    cells.append(str(r['epoch']) + (' (diverged)' if r['diverged'] else ''))
    cells += [f'{r[k]:.6g}' for k in metrics]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_eval(run: Run, split: str, checkpoint: str,
               records: list[dict[str, Any]]) -> Path:
  path = run.workdir / f'eval_{split}.json'
  doc = {'experiment': run.config.experiment, 'split': split, 'checkpoint': checkpoint,
         'checkpoint_epoch': run.epoch, 'num_members': run.num_members,
         'members': records}
  path.write_text(json.dumps(doc, indent=2))
  return path


def describe(run: Run, i: int, checkpoint: str) -> str:
  varied = population.varied_keys(run.members)
  hp = ', '.join(f'{k}={population.format_value(run.members[i][k])}' for k in varied)
  return (f'{run.config.experiment} member {i}' + (f' ({hp})' if hp else '')
          + f', {checkpoint} checkpoint, epoch {run.member_epoch(i, checkpoint)}')


# ---- samples ----

def check_generative(run: Run) -> str:
  name = run.config.model.name
  if name not in GENERATIVE:
    raise ValueError(f'--sample applies to generative models only ({", ".join(GENERATIVE)}); '
                     f'this run\'s model is {name!r}')
  return name


def sample_vae(run: Run, i: int, n: int, checkpoint: str = 'best', seed: int = 0,
               path: str | Path | None = None) -> tuple[np.ndarray, Path]:
  """n images E[x|z], z ~ N(0, I), of member i as a PNG grid; returns (images, path)."""
  from research.analysis import generative
  images = generative.prior_samples(run.trainer.model, run.variables(i, checkpoint), n, seed)
  path = Path(path) if path else run.workdir / f'samples_member{i}.png'
  generative.sample_grid(path, images, f'{describe(run, i, checkpoint)}: '
                                       f'E[x|z], z ~ N(0, I), seed {seed}')
  return images, path


def sample_text(run: Run, i: int, n: int, length: int, temperature: float = 1.0,
                prime: str = '\n', checkpoint: str = 'best', seed: int = 0,
                path: str | Path | None = None) -> tuple[list[str], Path]:
  """n continuations of ``prime`` by ``length`` characters; written one block each."""
  from research.analysis import generative
  from research.data import text as text_data
  if length < 1:
    raise ValueError(f'--length must be at least 1, got {length}')
  if not prime:
    raise ValueError('--prime must hold at least one character')
  vocab = run.dataset.info['vocab']
  unknown = sorted({c for c in prime if c not in vocab})
  if unknown:
    logging.warning('Characters %s of the prime are not in the vocabulary; they read as '
                    'the unknown character', unknown)
  ids = generative.sample_text(run.trainer.model, run.variables(i, checkpoint),
                               text_data.encode(prime, vocab), length, n, seed, temperature,
                               int(run.config.data.seq_len))
  texts = [text_data.decode(row, vocab) for row in ids]
  path = Path(path) if path else run.workdir / f'samples_member{i}.txt'
  head = f'# {describe(run, i, checkpoint)}; temperature {temperature:g}, seed {seed}\n'
  path.write_text(head + ''.join(f'\n--- sample {j} ---\n{t}\n' for j, t in enumerate(texts)))
  return texts, path


# ---- export ----

def export_paths(path: str | Path) -> tuple[Path, Path, Path]:
  """(variables, config, metadata): PATH, PATH with suffix .config.json and .meta.json."""
  path = Path(path)
  return path, path.with_suffix('.config.json'), path.with_suffix('.meta.json')


def export_member(run: Run, i: int, path: str | Path,
                  checkpoint: str = 'best') -> tuple[Path, Path, Path]:
  """Member i's variables (flax.serialization msgpack), the run's config and metadata."""
  from flax import serialization
  check_member(i, run.num_members)
  variables = run.variables(i, checkpoint)
  out, cfg_path, meta_path = export_paths(path)
  if out.suffix == '.json':
    raise ValueError(f'--export={out}: use a name like model.msgpack (its config is written '
                     'beside it as <name>.config.json)')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(serialization.msgpack_serialize(variables))
  cfg_path.write_text((run.workdir / 'config.json').read_text()
                      if (run.workdir / 'config.json').exists()
                      else run.config.to_json_best_effort(indent=2))
  model = run.trainer.model
  meta = {'workdir': str(run.workdir), 'experiment': run.config.experiment, 'member': i,
          'hparams': run.members[i], 'checkpoint': checkpoint,
          'epoch': run.member_epoch(i, checkpoint), 'checkpoint_epoch': run.epoch,
          'diverged': bool(np.asarray(run.state.diverged)[i]),
          'model': run.config.model.name,
          'num_params': int(sum(x.size for x in jax.tree.leaves(variables['params']))),
          'collections': sorted(variables),
          'config': cfg_path.name,
          'format': 'flax.serialization.msgpack_serialize of the Flax variables dict'}
  if hasattr(model, 'num_outputs'):
    meta['num_outputs'] = int(model.num_outputs)  # what build_model takes from the data
  meta_path.write_text(json.dumps(meta, indent=2))
  return out, cfg_path, meta_path


def load_export(path: str | Path):
  """(model, variables, metadata) of an `export_member` file, without the dataset."""
  from flax import serialization

  from research.models import build_model
  out, cfg_path, meta_path = export_paths(path)
  config = _config_from_json(cfg_path)
  meta = json.loads(meta_path.read_text())
  info = {'num_outputs': meta['num_outputs']} if 'num_outputs' in meta else {}
  model = build_model(config.model, info)
  return model, serialization.msgpack_restore(out.read_bytes()), meta

