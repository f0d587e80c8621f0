r"""Train one config (a population of members) into a workdir; re-run to resume.

  python scripts/train.py --config=configs/mnist1d.py:model=cnn --workdir=runs/cnn \
      --config.optim.lr=3e-3 --config.population='seed=0,1,2'
  python scripts/train.py --config=configs/mnist1d.py:model=cnn --dry_run   # check, no training

--config.a.b=value overrides any config key (a tuple key takes a tuple:
--config.model.channels='(32, 32)'). --dry_run prints the resolved config, the
population's members and the parameter count of one member, and exits without
creating the workdir. Bad input ends in one 'error: ...' line and exit code 2;
a run whose every member diverged exits 1 (research/errors.py).

Several processes (hosts) train one run with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I on each (research/distributed.py): the run's
mesh spans every process's devices, all processes write the Orbax checkpoints
in the shared --workdir, process 0 everything else.
"""
import sys
from pathlib import Path

from research.devices import configure_cpu_devices

configure_cpu_devices()  # before JAX starts: one CPU device per core (research/devices.py)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from research import cli, distributed, results  # noqa: E402
from research.train import train_and_evaluate  # noqa: E402

distributed.define_flags(heartbeat_timeout=True)

__doc__ += cli.configs_help()  # --help lists configs/*.py and their variants

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for all outputs of this run.')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Print the resolved config, the members and the parameter count per '
    'member, then exit without training (no workdir needed; none is created).')
flags.mark_flag_as_required('config')


@flags.multi_flags_validator(['workdir', 'dry_run'],
                             message='--workdir is required (the directory for this run\'s '
                             'outputs), unless --dry_run')
def _workdir_given(values):
  return values['dry_run'] or bool(values['workdir'])


def dry_run(config) -> None:
  """Prints what a run of ``config`` would be: config, members, data, parameters."""
  import jax

  from research import configlib, population, structure
  from research.data import load_dataset
  from research.tasks import make_task
  from research.train import abstract_init

  task = make_task(config.task)
  members = population.expand(config, task.hparam_keys)
  print(f'config {config_flags.get_config_filename(flags.FLAGS["config"])}:')
  for key, value in configlib.flatten(config).items():
    print(f'  {key} = {value!r}')
  varied = population.varied_keys(members)
  print(f'\npopulation: {len(members)} member(s) ({config.get("population_mode", "product")}'
        f' of {config.get("population", "") or "no population"!r}); varied: '
        f'{", ".join(varied) or "nothing"}')
  for i, m in enumerate(members):
    print(f'  member {i}: ' + ' '.join(f'{k}={population.format_value(v)}'
                                      for k, v in m.items()))
  dataset = load_dataset(config.data)
  sizes = {k: len(s['x']) for k, s in (('train', dataset.train), ('val', dataset.val),
                                       ('test', dataset.test)) if s is not None}
  batch = int(config.train.batch_size)
  steps = sizes['train'] // batch
  if steps == 0:
    raise ValueError(f'train.batch_size={batch} exceeds the {sizes["train"]} training examples')
  print(f'\ndata: {config.data.name}, ' + ', '.join(f'{k} {n}' for k, n in sizes.items())
        + f'; {steps} steps per epoch, {steps * int(config.train.epochs)} in total')
  shapes_of = abstract_init(dataset)

  def count(model_config) -> int:
    _, shapes = shapes_of(model_config)
    return sum(int(x.size) for x in jax.tree.leaves(shapes['params']))

  # Members whose variant or widths differ have their own parameters (those of their solo
  # run), counted at their own shapes; the program holds them padded to the widest.
  model_keys = [k for k in structure.structural_varied(members, task.hparam_keys)
                if k not in structure.RULE_KEYS]
  if not model_keys:
    print(f'model: {config.model.name}, {count(config.model)} parameters per member')
    return
  count_once = configlib.once_per_config(count)
  counts = [count_once(structure.member_config(config, m, model_keys).model) for m in members]
  for i, n in enumerate(counts):
    print(f'  member {i}: {n} parameters')
  program, _ = structure.program_model(config, members, model_keys)
  print(f'model: {config.model.name}, {min(counts)} to {max(counts)} parameters per member '
        f'(its own shapes; varied: {", ".join(model_keys)}); the program pads them to the '
        f'widest, {count(program)} per member')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}; flags are written --name=value')
  cli.setup_logging()
  config = _CONFIG.value
  if not _DRY_RUN.value:
    distributed.initialize_from_flags()  # before any JAX computation
  if _DRY_RUN.value:
    dry_run(config)
    return
  workdir = Path(_WORKDIR.value)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f'--workdir={workdir} is a file; the workdir must be a directory')
  out = train_and_evaluate(config, workdir)  # validates everything before writing
  if not distributed.is_writer():
    return
  print(results.markdown_table(out['rows'], digits=4))
  print()
  print(results.member_summary(out, workdir))


if __name__ == '__main__':
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
