"""Re-run a script whose run hung: the supervisor side of `research.watchdog`.

    def main(argv):
      ...                     # check the flags (cheap, before any work)
      supervise.supervise()   # the supervisor stops here and runs a child
      ...                     # the real work, in the child

    app.run(cli.guard(main))  # or app.run(cli.guard(supervise.supervised(main)))

`supervise()` makes the process a supervisor: after absl has parsed the flags it
starts the same command again as a child (``sys.executable`` with the original
arguments and ``RESEARCH_SUPERVISED=1`` in its environment), and the child runs the
real ``main``. When the child exits with `research.errors.EXIT_HANG` (75: its
watchdog found no training progress and wrote ``hang-*.txt``) the supervisor prints
one line and starts it again, up to ``--hang_retries`` times (default 2); the
re-run resumes from the last checkpoint. Any other exit code is passed on as is
(a child killed by signal N as 128 + N, as a shell reports it).

Signals: the child shares the supervisor's process group, so Ctrl-C in a terminal
reaches it directly; the supervisor ignores SIGINT (no traceback of its own) and
returns the child's code once it ends. SIGTERM sent to the supervisor is passed
on to the child, and a child whose supervisor dies (even by ``kill -9``) gets a
SIGTERM (Linux), so it checkpoints and stops. With ``--hang_retries=0`` there is
no child: ``main`` runs in the process itself.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import flags

from research import errors
from research.watchdog import NOTE_ENV

ENV = 'RESEARCH_SUPERVISED'
_PARENT_ENV = 'RESEARCH_SUPERVISOR_PID'

_RETRIES = flags.DEFINE_integer(
    'hang_retries', 2, 'Times to restart a run that hung (exit 75, no training progress '
    'within train.watchdog_s; stacks in the workdir\'s hang-*.txt); each restart resumes '
    'from the last checkpoint. 0: run in this process, no supervisor.')


def is_child() -> bool:
  return os.environ.get(ENV) == '1'


def _exit_code(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


def _last_hang_file(note: Path) -> str | None:
  try:
    lines = [l for l in note.read_text().splitlines() if l.strip()]
  except OSError:
    return None
  return lines[-1] if lines else None


def run_supervised(argv: list[str], retries: int) -> int:
  """Runs ``argv`` (a full command line) as a supervised child; restarts it up to
  ``retries`` times when it exits 75 (hung). Returns the child's last exit code."""
  fd, note_name = tempfile.mkstemp(prefix='research-hang-', suffix='.txt')
  os.close(fd)
  note = Path(note_name)
  env = {**os.environ, ENV: '1', NOTE_ENV: str(note), _PARENT_ENV: str(os.getpid())}
  child: subprocess.Popen | None = None

  def forward(signum, _frame):
    if child is not None and child.poll() is None:
      child.send_signal(signum)

  # A Python-level handler, not SIG_IGN: dispositions set to SIG_IGN survive exec and
  # the child would then ignore Ctrl-C too; handlers are reset to the default.
  old_int = signal.signal(signal.SIGINT, lambda *_: None)
  old_term = signal.signal(signal.SIGTERM, forward)
  try:
    attempt = 0
    while True:
      child = subprocess.Popen(argv, env=env)
      code = _exit_code(child.wait())
      child = None
      if code != errors.EXIT_HANG:
        return code
      where = _last_hang_file(note) or 'hang-*.txt in the workdir'
      if attempt >= retries:
        print(f'error: run hung {attempt + 1} time(s) (last stacks in {where}); not retrying '
              f'again (--hang_retries={retries})', file=sys.stderr, flush=True)
        return code
      attempt += 1
      print(f'run hung (stacks in {where}); resuming from the last checkpoint '
            f'(retry {attempt} of {retries})', file=sys.stderr, flush=True)
  finally:
    signal.signal(signal.SIGINT, old_int)
    signal.signal(signal.SIGTERM, old_term)
    note.unlink(missing_ok=True)


def _stop_with_supervisor() -> None:
  """In the child (Linux): a SIGTERM when the supervisor dies, even by ``kill -9``, so
  that the run saves a checkpoint and stops instead of running on unsupervised."""
  parent = os.environ.pop(_PARENT_ENV, None)  # not for processes this one starts
  if not parent or not sys.platform.startswith('linux'):
    return
  try:
    import ctypes
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
  except Exception:  # noqa: BLE001 - best effort
    return
  if os.getppid() != int(parent):  # the supervisor died before prctl took effect
    os.kill(os.getpid(), signal.SIGTERM)


def supervise(retries: int | None = None) -> None:
  """Call from an absl ``main`` once its flags are checked: in the supervisor this
  re-executes the command as a supervised child and exits with the child's code (it
  never returns); in the child, or with ``retries`` (default ``--hang_retries``) 0,
  it returns at once and ``main`` goes on."""
  if is_child():
    _stop_with_supervisor()
    return
  retries = _RETRIES.value if retries is None else retries
  if retries <= 0:
    return
  command = [sys.executable, *getattr(sys, 'orig_argv', [sys.executable, *sys.argv])[1:]]
  sys.exit(run_supervised(command, retries))


def supervised(main):
  """Decorator for an absl ``main``: `supervise`, then ``main`` (in the child)."""

  @functools.wraps(main)
  def wrapped(argv):
    supervise()
    return main(argv)

  return wrapped
