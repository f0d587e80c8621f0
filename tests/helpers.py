"""What several test files share: the scripts as subprocesses, and the small MNIST-1D run.

``small_mnist1d`` (a config) and ``SMALL_MNIST1D`` (the same settings as
``scripts/train.py`` flags) describe one run: a residual MLP of width 16 on 500
MNIST-1D sequences, batches of 50, evaluated every epoch, no progress bar.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from research import cli, configlib

REPO = Path(__file__).resolve().parents[1]

SMALL_MNIST1D = ('--config=' + str(REPO / 'configs/mnist1d.py') + ':model=mlp',
                 '--config.data.num_samples=500', '--config.model.hidden=16',
                 '--config.train.batch_size=50', '--config.train.progress=False')


def small_mnist1d(**overrides: Any):
  """The small run's config with dotted ``overrides`` ({'train.epochs': 2}) applied."""
  c = cli.load_config('configs/mnist1d.py', 'model=mlp')
  c.data.num_samples = 500
  c.model.hidden = 16
  c.train.batch_size = 50
  c.train.eval_every = 1
  c.train.progress = False
  return configlib.with_values(c, overrides)


def script_command(script: str, *args: Any) -> list[str]:
  """``python scripts/<script> args...`` with this interpreter."""
  return [sys.executable, str(REPO / 'scripts' / script), *map(str, args)]


def run_script(script: str, *args: Any, cwd: Path | str = REPO, env: dict | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs ``scripts/<script>`` to the end; stdout and stderr captured as text."""
  return subprocess.run(script_command(script, *args), capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=timeout)


def train_command(workdir: Path | str, *extra: Any) -> list[str]:
  """``scripts/train.py`` on the small run in ``workdir``, then ``extra`` flags."""
  return script_command('train.py', SMALL_MNIST1D[0], f'--workdir={workdir}', *SMALL_MNIST1D[1:],
                        *extra)


def run_train(workdir: Path | str, *extra: Any, env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `train_command` to the end, from the repository root."""
  return subprocess.run(train_command(workdir, *extra), capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=timeout)


def kill_when_checkpointed(workdir: Path | str, step: int, *extra: Any, env: dict | None = None,
                           timeout: float = 180) -> None:
  """Starts `train_command(workdir, *extra)` and kills it with SIGKILL as soon as its
  checkpoint ``step`` is complete (Orbax renames a finished checkpoint into place, so the
  directory appearing is the moment the step is saved). Fails if the run ended first."""
  import signal
  import time
  proc = subprocess.Popen(train_command(workdir, *extra), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=REPO, env=env)
  target = Path(workdir) / 'checkpoints' / str(step)
  deadline = time.time() + timeout
  try:
    while proc.poll() is None and not target.exists() and time.time() < deadline:
      time.sleep(0.002)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
  finally:
    if proc.poll() is None:
      proc.kill()
  assert target.exists(), f'no checkpoint {step} within {timeout} s: {err.decode()[-2000:]}'
  assert running, 'the run finished before it could be killed; make it longer'
  assert not (Path(workdir) / 'results.json').exists()
