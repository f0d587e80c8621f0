"""Sweep a config's search space with Optuna; batches of trials train as populations.

  python scripts/sweep.py --config=configs/vae_digits.py --method=bayes --trials=64 \
      --workdir=runs/sweep [--space=hpo] [--population_size=8] [--storage=sqlite]

The space is the config file's ``get_search_space(--space)``. Re-running the same
command resumes (finished trials are kept, interrupted ones retried); running it in
two shells splits the work. A worker that hangs (no training progress within the
config's train.watchdog_s) writes hang-*.txt in its run directory and is restarted,
up to --hang_retries times; the restarted worker queues the trials it was training
again and resumes them from their checkpoint. ``--storage`` takes 'journal'
(default, a file in the workdir), 'sqlite' or an SQLAlchemy URL (e.g.
postgresql://...) for many machines; on those, workers send heartbeats and a trial
whose worker went silent (a dead machine) is retried by the others.
``--pruner=asha`` prunes inside each population (train.prune);
``--pruner=optuna_asha`` / ``optuna_hyperband`` trains trials one at a time and
lets Optuna's own pruner stop them (the baseline of the asha_compare study).

One worker can span several processes (hosts) with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I on each (as scripts/train.py): process 0 alone
talks to Optuna and writes the sweep's files, the others train the same populations
with it (research/distributed.py). Such a worker runs without the hang supervisor.
"""
import sys

from research.devices import configure_cpu_devices

configure_cpu_devices()  # before JAX starts: one CPU device per core (research/devices.py)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags

from research import cli, distributed, supervise
from research.sweep import runner
from research.sweep.space import SearchSpaceError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory (storage, runs, reports).')
_METHOD = flags.DEFINE_enum('method', 'random', list(runner.METHODS), 'Search method.')
_TRIALS = flags.DEFINE_integer('trials', 0, 'Trials in total (grid: 0 = the whole grid).')
_SPACE = flags.DEFINE_string('space', None, "Argument of the config file's get_search_space.")
_BATCH = flags.DEFINE_integer('population_size', 8,
                              'Trials asked at a time; they train in the populations the cost '
                              'model finds fastest (optimizer rules and widths mix; batch size, '
                              'depth... need their own).')
_STORAGE = flags.DEFINE_string(
    'storage', 'journal', "'journal', 'sqlite' or an SQLAlchemy URL (postgresql://user:pw@host/db: "
    "pip install '.[postgres]', docs/scaling_out_postgres.md).")
_STUDY = flags.DEFINE_string('study_name', 'sweep', 'Optuna study name inside the storage.')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_s', 60, 'With sqlite or a URL storage: seconds between trial heartbeats; a trial '
    'silent for 3x this is retried by another worker (0: off).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampler seed (random draws, TPE/GP).')
_PRUNER = flags.DEFINE_string(
    'pruner', '', "Prune inside each program: '' (none), 'median', 'asha[:eta=3]', "
    "'hyperband' (sets train.prune, research/pruning.py); pruned trials are told to Optuna as "
    'PRUNED, their best validation value reported at the epoch they stopped. Or Optuna\'s own '
    "pruner deciding trials trained one at a time: 'optuna_asha[:eta=3,min=1]' "
    "(SuccessiveHalvingPruner), 'optuna_hyperband[:eta=3,min=1]' (HyperbandPruner), set like "
    'the in-population rule of the same arguments (--population_size is then 1).')
_SAMPLER = flags.DEFINE_enum('sampler', 'tpe', list(runner.SAMPLERS),
                             'Bayesian sampler: TPE, or GP (needs torch).')
flags.mark_flags_as_required(['config', 'workdir'])
distributed.define_flags(heartbeat_timeout=True)


def load_space(config_file: str, arg):
  module = cli.load_config_module(config_file)
  if not hasattr(module, 'get_search_space'):
    raise SearchSpaceError(f'{config_file} defines no get_search_space(arg) function')
  return module.get_search_space(arg)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging()
  ref = config_flags.get_config_filename(flags.FLAGS['config'])  # path[:variant]
  config_file = ref.split(':')[0]
  overrides = config_flags.get_override_values(flags.FLAGS['config'])  # {'a.b': value}
  ref += ''.join(f' --config.{k}={v!r}' for k, v in overrides.items())
  config = _CONFIG.value
  trial_pruner = ''
  if _PRUNER.value.startswith('optuna_'):
    try:
      runner.optuna_pruner(_PRUNER.value, config)
    except ValueError as e:
      print(f'error: --pruner: {e}', file=sys.stderr)
      sys.exit(2)
    trial_pruner = _PRUNER.value
  elif _PRUNER.value:
    from research import pruning
    try:
      pruning.parse(_PRUNER.value)
    except ValueError as e:
      print(f'error: --pruner={_PRUNER.value}: {e}', file=sys.stderr)
      sys.exit(2)
    config.train.prune = _PRUNER.value
    ref += f' --config.train.prune={_PRUNER.value!r}'
  try:
    space = load_space(config_file, _SPACE.value)
    # The supervisor runs the sweep in a child and exits with its code; a multi-process
    # worker has none (a restarted process could not rejoin the others).
    supervise.supervise(0 if distributed.requested() else None)
    distributed.initialize_from_flags()  # before any JAX computation
    out = runner.run_sweep(
        config, space, _METHOD.value, _TRIALS.value, _WORKDIR.value,
        storage=_STORAGE.value, study_name=_STUDY.value, batch=_BATCH.value, seed=_SEED.value,
        bayes_sampler=_SAMPLER.value, config_ref=ref,
        heartbeat_s=_HEARTBEAT.value, trial_pruner=trial_pruner)
  except (SearchSpaceError, ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if not distributed.is_writer():
    return
  best = out.get('best')
  print(f"{out['states']}; best: {best['value'] if best else None}")
  if best:
    print(best['command'])


if __name__ == '__main__':
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
