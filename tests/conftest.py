"""Test-session set-up.

JAX's persistent compilation cache (under .pytest_cache/, git-ignored) is
shared by the test process and the scripts it starts as subprocesses, so the
same training program is compiled once per session instead of once per
process; later sessions on the same machine reuse it. Results do not depend
on it: a cached executable is the one XLA would compile.
"""
import os
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / '.pytest_cache' / 'jax'
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(_CACHE))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
