"""Reproduce a paper-style study end to end: results.json, report.md, plots.

  python scripts/reproduce.py --experiment=mnist1d --workdir=runs/mnist1d [--budget=smoke]
"""
from absl import app, flags

from research import cli, experiments

_EXPERIMENT = flags.DEFINE_string('experiment', None, f'One of {sorted(experiments.EXPERIMENTS)}.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (re-run to resume).')
_BUDGET = flags.DEFINE_enum('budget', 'full', ['smoke', 'full'],
                            'smoke: a minutes-long check; full: the published protocol.')
flags.mark_flags_as_required(['experiment', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging()
  experiments.get(_EXPERIMENT.value).run(_WORKDIR.value, budget=_BUDGET.value)


if __name__ == '__main__':
  app.run(main)
