#!/usr/bin/env bash
# Set up .venv (if missing) with the dev extra and run the test suite.
# RUN_SLOW=1 also runs the tests marked slow; extra arguments go to pytest.
# Tests run in parallel (pytest-xdist), one worker per core up to 4; TEST_WORKERS=N
# sets the count (TEST_WORKERS=0 runs them in this process).
# The install step (scripts/_setup.sh) runs pip only when pyproject.toml changed or the
# package is not installed, shows pip's output only when it fails, and then exits non-zero.
# VENV=DIR uses another virtual environment (default .venv); PYTHON=... the interpreter
# that creates it (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
install_project '.[dev]' test
marker=()
if [ "${RUN_SLOW:-0}" = "1" ]; then marker=(-m "slow or not slow"); fi
workers=${TEST_WORKERS:-$("$VENV/bin/python" -c 'import os; print(min(os.cpu_count() or 1, 4))')}
exec "$VENV/bin/python" -m pytest -q -n "$workers" --dist worksteal ${marker[@]+"${marker[@]}"} "$@"
