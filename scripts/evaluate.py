"""Evaluate a trained (or interrupted) run's members; draw samples; export parameters.

  python scripts/evaluate.py --workdir=runs/cnn [--split=test] [--member=0] [--checkpoint=best]
  python scripts/evaluate.py --workdir=runs/vae --sample=16 [--seed=0]
  python scripts/evaluate.py --workdir=runs/text --sample=3 --length=200 --temperature=0.7
  python scripts/evaluate.py --workdir=runs/cnn --export=cnn.msgpack --member=1

Restores the newest readable checkpoint of the run in --workdir (its config from
workdir/config.json), evaluates every member on --split with the checkpoint's best
(validation-selected) or latest parameters, prints a table and writes
workdir/eval_<split>.json. For --split=test --checkpoint=best the metrics are those of
the run's results.json. --sample draws from a VAE's prior (workdir/samples_member<i>.png)
or a character model (workdir/samples_member<i>.txt) instead; --export writes one
member's variables (msgpack) with the run's config and metadata beside it.
"""
import json
import os
import sys
from pathlib import Path


def _run_device_count(argv):
  """CPU devices for the run's mesh (member x data), read from its results.json before
  JAX starts (None: the default of research/devices.py)."""
  workdir = None
  for j, a in enumerate(argv):
    if a.startswith('--workdir='):
      workdir = a.split('=', 1)[1]
    elif a == '--workdir' and j + 1 < len(argv):
      workdir = argv[j + 1]
  try:
    res = json.loads((Path(workdir) / 'results.json').read_text())
    mesh = res.get('mesh') or {'member': res['member_sharding'], 'data': 1}
    shards = int(mesh['member']) * int(mesh['data'])
  except Exception:  # noqa: BLE001 - no run there, or no results yet: main() reports it
    return None
  if shards <= 1 or os.environ.get('RESEARCH_CPU_DEVICES'):
    return None
  from research.devices import usable_cores
  return max(shards, usable_cores())


from research.devices import configure_cpu_devices  # noqa: E402

configure_cpu_devices(_run_device_count(sys.argv))  # before JAX starts (research/devices.py)

from absl import app, flags  # noqa: E402

from research import cli  # noqa: E402
from research import evaluate as ev  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a run (config.json, checkpoints/).')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split to evaluate: train | val | test.')
_MEMBER = flags.DEFINE_integer('member', None, 'Only this member (default: all; --export: 0).')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'best', 'best: each member\'s validation-selected parameters; latest: the '
    'parameters at the newest checkpoint.')
_SAMPLE = flags.DEFINE_integer('sample', 0, 'Draw this many samples (generative models) '
                               'instead of evaluating.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the sampling rng.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Text sampling temperature (0 = argmax).')
_LENGTH = flags.DEFINE_integer('length', 200, 'Characters per text sample.')
_PRIME = flags.DEFINE_string('prime', 'The ', 'Text the character samples continue.')
_EXPORT = flags.DEFINE_string(
    'export', None, 'Write one member\'s Flax variables (msgpack) to this path, and beside it '
    'the run\'s config and metadata (m.msgpack -> m.config.json, m.meta.json).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging()
  workdir = Path(_WORKDIR.value)
  config = ev.read_config(workdir)
  ev.check_checkpoint(_CHECKPOINT.value)
  if _SAMPLE.value < 0:
    raise ValueError(f'--sample must be a positive number of samples, got {_SAMPLE.value}')
  if _SAMPLE.value and _EXPORT.value:
    raise ValueError('--sample and --export are separate jobs: give one of them')
  if _SAMPLE.value and config.model.name not in ev.GENERATIVE:
    raise ValueError(f'--sample applies to generative models only ({", ".join(ev.GENERATIVE)}); '
                     f'this run\'s model is {config.model.name!r}')
  if _TEMPERATURE.value < 0:
    raise ValueError(f'--temperature must be >= 0, got {_TEMPERATURE.value}')
  k = ev.num_members(config)
  if _MEMBER.value is not None:
    ev.check_member(_MEMBER.value, k)
  ev.check_checkpoints(workdir)
  if not (_SAMPLE.value or _EXPORT.value):
    ev.check_split(config, _SPLIT.value)  # before the (slower) restore
  run = ev.load_run(workdir, config)
  kind = _CHECKPOINT.value
  chosen = [_MEMBER.value] if _MEMBER.value is not None else list(range(k))

  if _EXPORT.value:
    i = _MEMBER.value or 0
    paths = ev.export_member(run, i, _EXPORT.value, kind)
    print(f'{ev.describe(run, i, kind)} -> ' + ', '.join(str(p) for p in paths))
    return

  if _SAMPLE.value:
    for i in chosen:
      if config.model.name == 'vae':
        _, path = ev.sample_vae(run, i, _SAMPLE.value, kind, _SEED.value)
        print(f'{ev.describe(run, i, kind)}: {_SAMPLE.value} samples -> {path}')
      else:
        texts, path = ev.sample_text(run, i, _SAMPLE.value, _LENGTH.value, _TEMPERATURE.value,
                                     _PRIME.value, kind, _SEED.value)
        print(f'## {ev.describe(run, i, kind)}, temperature {_TEMPERATURE.value:g} -> {path}')
        for j, t in enumerate(texts):
          print(f'--- sample {j} ---\n{t}')
    return

  records = ev.evaluate(run, _SPLIT.value, kind)
  records = [records[i] for i in chosen]
  path = ev.write_eval(run, _SPLIT.value, kind, records)
  print(f'{config.experiment}: {_SPLIT.value} split, {kind} parameters, checkpoint of epoch '
        f'{run.epoch}')
  print(ev.table(run, records))
  print(f'-> {path}')


if __name__ == '__main__':
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
