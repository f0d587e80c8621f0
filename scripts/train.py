"""Train one config (a population of members) into a workdir; re-run to resume.

  python scripts/train.py --config=configs/mnist1d.py:model=cnn --workdir=runs/cnn \
      --config.optim.lr=3e-3 --config.population='seed=0,1,2'
"""
import sys

from research.devices import configure_cpu_devices

configure_cpu_devices()  # before JAX starts: one CPU device per core (research/devices.py)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags

from research import cli, results
from research.train import DivergenceError, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for all outputs of this run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging()
  try:
    out = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (DivergenceError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(results.markdown_table(out['rows'], digits=4))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
