"""A hang watchdog: a daemon thread that ends the process when progress stops.

    with Watchdog(workdir, timeout_s=900) as dog:
      for epoch in ...:
        ...
        dog.beat(epoch=epoch, step=step)

If no `Watchdog.beat` arrives in time the thread writes
``workdir/hang-<UTC time>.txt`` (the last completed progress, the timeout, every
thread's Python stack and, with ``py-spy`` on PATH, the native stacks), prints one
``error: ...`` line on stderr and ends the process with ``os._exit(75)``
(`research.errors.EXIT_HANG`). The main thread may be stuck in native code (an XLA
or collective call that never returns), where neither an exception nor a signal
handler would run, so ``os._exit`` is the one reliable way out; the run resumes
from its last checkpoint when re-run (`research.supervise` does that itself).

Timeouts: before the first beat the run may take ``first_timeout_s`` (compilation;
default ``2 * timeout_s``); after it, ``max(timeout_s, 10 * the longest interval
between two beats so far)``, so a slow but healthy run never trips it. The clock is
``time.monotonic``, which does not advance while the machine is suspended.
"""
from __future__ import annotations

import datetime
import faulthandler
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from research import errors

_PY_SPY_TIMEOUT_S = 60
# Set by `research.supervise` for its child: a file the watchdog appends the hang
# report's path to, so the supervisor can name it when it restarts the run.
NOTE_ENV = 'RESEARCH_HANG_NOTE'


class Watchdog:
  """Context manager running the watchdog thread (none when ``timeout_s <= 0``)."""

  def __init__(self, workdir, timeout_s: float, first_timeout_s: float | None = None):
    self.workdir = Path(workdir)
    self.timeout_s = float(timeout_s)
    self.first_timeout_s = (2 * self.timeout_s if first_timeout_s is None
                            else float(first_timeout_s))
    self.enabled = self.timeout_s > 0
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._started = 0.0
    self._last = 0.0  # time of the last beat (or of the start)
    self._beats = 0
    self._longest = 0.0  # longest interval between two beats
    self._progress: dict[str, Any] = {}
    self.hang_file: Path | None = None

  # -- the training loop's side --------------------------------------------

  def start(self) -> 'Watchdog':
    if not self.enabled or self._thread is not None:
      return self
    self._started = self._last = time.monotonic()
    self._stop.clear()
    self._thread = threading.Thread(target=self._run, name='watchdog', daemon=True)
    self._thread.start()
    return self

  def beat(self, **progress: Any) -> None:
    """Records that ``progress`` (e.g. ``epoch=3, step=120``) has been completed now."""
    now = time.monotonic()
    with self._lock:
      if self._beats:
        self._longest = max(self._longest, now - self._last)
      self._beats += 1
      self._last = now
      self._progress = dict(progress)

  def stop(self) -> None:
    self._stop.set()
    thread, self._thread = self._thread, None
    if thread is not None and thread is not threading.current_thread():
      thread.join()

  def __enter__(self) -> 'Watchdog':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  # -- the thread ------------------------------------------------------------

  def timeout(self) -> float:
    """The timeout in force now (seconds after the last beat)."""
    with self._lock:
      if not self._beats:
        return self.first_timeout_s
      return max(self.timeout_s, 10 * self._longest)

  def _run(self) -> None:
    while True:
      with self._lock:
        last = self._last
      limit = self.timeout()
      remaining = last + limit - time.monotonic()
      if remaining <= 0:
        break
      # Beats only move the deadline later, so sleeping until it is enough.
      if self._stop.wait(remaining):
        return
    if self._stop.is_set():
      return
    self._trip(time.monotonic() - last, limit)

  def _describe(self) -> str:
    with self._lock:
      progress = dict(self._progress)
    if not progress:
      return 'nothing yet'
    return ', '.join(f'{k} {v}' for k, v in progress.items())

  def _trip(self, silent_s: float, limit: float) -> None:
    code = errors.EXIT_HANG
    path = None
    try:
      path = self._write_report(silent_s, limit)
      note = os.environ.get(NOTE_ENV)
      if note:
        with open(note, 'a') as f:
          f.write(f'{path}\n')
    except BaseException as e:  # noqa: BLE001 - never stay alive because the report failed
      try:
        sys.stderr.write(f'watchdog: could not write the stack report: {e!r}\n')
      except BaseException:  # noqa: BLE001
        pass
    finally:
      try:
        where = f'stacks in {path}' if path else 'no stack report'
        shown = f'{limit:.0f}' if limit >= 10 else f'{limit:.3g}'
        line = (f'error: no training progress for {shown} s (last completed: '
                f'{self._describe()}); {where}; exiting {code}, re-run to resume\n')
        try:
          sys.stdout.flush()
        except BaseException:  # noqa: BLE001
          pass
        sys.stderr.write(line)
        sys.stderr.flush()
      finally:
        os._exit(code)

  def _write_report(self, silent_s: float, limit: float) -> Path:
    self.workdir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')
    path = self.workdir / f'hang-{stamp}.txt'
    self.hang_file = path
    pid = os.getpid()
    with self._lock:
      beats, longest = self._beats, self._longest
    with open(path, 'w') as f:
      f.write(f'No training progress for {silent_s:.1f} s; pid {pid}; '
              f'{datetime.datetime.now(datetime.timezone.utc).isoformat()}\n')
      f.write(f'Last completed: {self._describe()}\n')
      f.write(f'Timeout in force: {limit:.1f} s (timeout_s {self.timeout_s:g}, before the first '
              f'beat {self.first_timeout_s:g}; {beats} beats, longest interval '
              f'{longest:.1f} s)\n')
      f.write(f'Running for {time.monotonic() - self._started:.1f} s; exiting with code '
              f'{errors.EXIT_HANG}; re-run the same command to resume from the last '
              'checkpoint.\n')
      f.write('\n== Python stacks (faulthandler) ==\n')
      f.flush()
      faulthandler.dump_traceback(f, all_threads=True)
      f.flush()
      f.write('\n== Python stacks (traceback) ==\n')
      names = {t.ident: t.name for t in threading.enumerate()}
      me = threading.get_ident()
      for ident, frame in sys._current_frames().items():
        mark = ' (this watchdog)' if ident == me else ''
        f.write(f'\nThread {ident} {names.get(ident, "?")!r}{mark}:\n')
        f.write(''.join(traceback.format_stack(frame)))
      f.write('\n== Native stacks ==\n')
      f.flush()
      f.write(_native_stacks(pid))
    return path


def _native_stacks(pid: int) -> str:
  spy = shutil.which('py-spy')
  how = (f'py-spy dump --native --pid {pid}   (pip install py-spy)\n'
         f"gdb -p {pid} -batch -ex 'thread apply all bt'\n"
         'This process has exited by now: run one of these while a run hangs '
         '(e.g. with a larger train.watchdog_s) to see where native code is stuck.\n')
  if spy is None:
    return 'py-spy is not on PATH; for native stacks use\n' + how
  _allow_ptrace_by_children()
  try:
    out = subprocess.run([spy, 'dump', '--native', '--pid', str(pid)], capture_output=True,
                         text=True, timeout=_PY_SPY_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    return f'py-spy dump timed out after {_PY_SPY_TIMEOUT_S} s; try\n' + how
  except OSError as e:
    return f'py-spy failed to start: {e}; try\n' + how
  text = out.stdout.rstrip('\n') + '\n'
  if out.returncode != 0:
    text += f'\npy-spy exited {out.returncode}: {out.stderr.strip()}\n' + how
  return text


def _allow_ptrace_by_children() -> None:
  """Under Yama's ptrace_scope=1 a child may not trace its parent; let it (Linux only)."""
  if not sys.platform.startswith('linux'):
    return
  try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_ptracer, pr_set_ptracer_any = 0x59616d61, ctypes.c_ulong(-1)
    libc.prctl(pr_set_ptracer, pr_set_ptracer_any, 0, 0, 0)
  except Exception:  # noqa: BLE001 - best effort
    pass
