"""Reproduce a paper-style study end to end: results.json, report.md, plots.

  python scripts/reproduce.py --experiment=mnist1d --workdir=runs/mnist1d [--budget=smoke]
  python scripts/reproduce.py --experiment=rnn_music --workdir=runs/music \
      [--data_path=../shared/data/JSB_Chorales.mat]
"""
import inspect

from research.devices import configure_cpu_devices

configure_cpu_devices()  # before JAX starts: one CPU device per core (research/devices.py)

from absl import app, flags  # noqa: E402

from research import cli, experiments

_EXPERIMENT = flags.DEFINE_string('experiment', None, f'One of {sorted(experiments.EXPERIMENTS)}.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (re-run to resume).')
_BUDGET = flags.DEFINE_enum('budget', 'full', ['smoke', 'full'],
                            'smoke: a minutes-long check; full: the published protocol.')
_DATA_PATH = flags.DEFINE_string(
    'data_path', None, 'Data file for studies that read one (JSB_Chorales.mat for rnn_music, '
    'lstm_variants); default: the path in their config.')
flags.mark_flags_as_required(['experiment', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging()
  run = experiments.get(_EXPERIMENT.value).run
  kwargs = {}
  if _DATA_PATH.value is not None:
    if 'data_path' not in inspect.signature(run).parameters:
      raise app.UsageError(f'--data_path does not apply to {_EXPERIMENT.value}')
    kwargs['data_path'] = _DATA_PATH.value
  run(_WORKDIR.value, budget=_BUDGET.value, **kwargs)


if __name__ == '__main__':
  app.run(main)
