"""Test-session set-up.

JAX's persistent compilation cache (under .pytest_cache/, git-ignored) is
shared by the test process and the scripts it starts as subprocesses, so the
same training program is compiled once per session instead of once per
process; later sessions on the same machine reuse it. Results do not depend
on it: a cached executable is the one XLA would compile. Under pytest-xdist
(scripts/test.sh runs several workers) each worker keeps its own cache folder,
so no two processes write one entry at the same time.

Tests also compile with ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (XLA backend
optimisation level 0, no expensive LLVM passes): most of a test's time is
compilation of a program that then runs for a few steps, and this cut the time of
the heaviest tests by a third. Programs compute the same functions; benchmarks and
experiments never set it. Set the variable to 0 to test optimised programs.
"""
import os
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / '.pytest_cache' / 'jax'


def pytest_configure(config):
  # Runs in each xdist worker before any test module (and so JAX) is imported. The xdist
  # controller runs no test; it sets nothing, or its workers would inherit its folder.
  worker = getattr(config, 'workerinput', {}).get('workerid')
  if worker is None and getattr(config.option, 'numprocesses', None):
    return
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(_CACHE / (worker or 'main')))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
