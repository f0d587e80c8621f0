"""Reproduce a paper-style study end to end: results.json, report.md, plots.

  python scripts/reproduce.py --experiment=mnist1d --workdir=runs/mnist1d [--budget=smoke]
  python scripts/reproduce.py --experiment=rnn_music --workdir=runs/music \
      [--data_path=../shared/data/JSB_Chorales.mat]

The workdir records its study (study.json: experiment and budget); a workdir that
holds another study, the same study at another budget, or a run that is no study
is refused before anything is written. Re-running the same command resumes. A run
that hangs (no training progress within train.watchdog_s) writes hang-*.txt and is
restarted from its last checkpoint, up to --hang_retries times.

Several processes (hosts) run one study with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I on each (research/distributed.py), for the studies
that train only through common.train_variant (MULTI_PROCESS_STUDIES in
research/experiments/common.py): every process trains each run together, process 0
writes study.json, the reports and plots, the others replay the study against a
scratch directory (common.follow). There is no hang supervisor then.
"""
import inspect
from pathlib import Path

from research.devices import configure_cpu_devices

configure_cpu_devices()  # before JAX starts: one CPU device per core (research/devices.py)

from absl import app, flags  # noqa: E402

from research import cli, distributed, experiments, supervise  # noqa: E402
from research.errors import UserError  # noqa: E402

_EXPERIMENT = flags.DEFINE_string('experiment', None, f'One of {sorted(experiments.EXPERIMENTS)}.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (re-run to resume).')
_BUDGET = flags.DEFINE_enum('budget', 'full', ['smoke', 'full'],
                            'smoke: a minutes-long check; full: the published protocol.')
_DATA_PATH = flags.DEFINE_string(
    'data_path', None, 'Data file for studies that read one (JSB_Chorales.mat for rnn_music, '
    'lstm_variants); default: the path in their config.')
_MAX_PROGRAMS = flags.DEFINE_integer(
    'max_programs', None, 'For studies that group their trials by a cost model '
    '(lstm_variants): train them as at most this many padded programs (every member at its '
    "program's widest, mixed shape; at least the number of kinds: each kind alone); default: one program whose groups of kinds each step at "
    'its own shapes (train.groups=kinds).')
_POPULATION_SIZE = flags.DEFINE_integer(
    'population_size', None, 'For studies that sweep asked trials as populations '
    '(asha_compare): asked trials per batch of the in-population arms (the planner may '
    "train a batch as several programs; default: the budget's).")
flags.mark_flags_as_required(['experiment', 'workdir'])
distributed.define_flags(heartbeat_timeout=True)


def _taking(arg: str) -> list[str]:
  return [name for name, run in experiments.EXPERIMENTS.items()
          if arg in inspect.signature(run).parameters]


def _study_count(run, name: str, arg: str, value: int) -> int:
  """``value`` of the flag ``--<arg>``, for a study whose run takes ``arg``, at least 1."""
  if arg not in inspect.signature(run).parameters:
    raise UserError(f'--{arg} does not apply to --experiment={name} (only to '
                    f'{", ".join(_taking(arg))})')
  if value < 1:
    raise UserError(f'--{arg}={value}: must be at least 1')
  return value


def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  from research.experiments import common
  name, workdir, budget = _EXPERIMENT.value, _WORKDIR.value, _BUDGET.value
  run = experiments.get(name)
  kwargs = {}
  if _DATA_PATH.value is not None:
    if 'data_path' not in inspect.signature(run).parameters:
      raise UserError(f'--data_path does not apply to --experiment={name} (only to '
                      f'{", ".join(_taking("data_path"))})')
    path = Path(_DATA_PATH.value).expanduser()
    if not path.is_file():
      raise UserError(f'--data_path={_DATA_PATH.value}: no such file'
                      + (' (it is a directory)' if path.is_dir() else ''))
    kwargs['data_path'] = _DATA_PATH.value
  for arg, flag in (('max_programs', _MAX_PROGRAMS), ('population_size', _POPULATION_SIZE)):
    if flag.value is not None:
      kwargs[arg] = _study_count(run, name, arg, flag.value)
  if distributed.requested():
    if name not in common.MULTI_PROCESS_STUDIES:
      raise UserError(f'--experiment={name} does not run with several processes; those that '
                      f'do: {", ".join(common.MULTI_PROCESS_STUDIES)}')
    cli.setup_logging()  # no supervisor: a restarted process could not rejoin the others
    distributed.initialize_from_flags()  # before any JAX computation
    distributed.from_writer(lambda: common.claim_workdir(workdir, name, budget))
  else:
    distributed.initialize_from_flags()  # (refuses --num_processes without an address)
    common.claim_workdir(workdir, name, budget, write=False)  # refuse before anything starts
    supervise.supervise()  # the supervisor runs the rest in a child and exits with its code
    cli.setup_logging()
    common.claim_workdir(workdir, name, budget)
  try:
    if distributed.is_writer():
      run(workdir, budget=budget, **kwargs)
    else:  # the same steps, its files in a scratch directory
      common.follow(run, workdir, budget=budget, **kwargs)
  except ValueError as e:
    if 'holds a run with a different config' not in str(e):
      raise
    if (Path(workdir) / common.STUDY_FILE).exists():  # the same study at this budget
      raise UserError(f'{e} (was this study run with other flags, e.g. --max_programs or '
                      '--population_size, or on another number of devices?)') from None
    other = 'full' if budget == 'smoke' else 'smoke'
    raise UserError(f'{e} (was this study run with --budget={other}?)') from None


if __name__ == '__main__':
  app.run(cli.guard(main), flags_parser=cli.parse_flags)
