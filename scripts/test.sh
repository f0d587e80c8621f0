#!/usr/bin/env bash
# Set up .venv (if missing) with the dev extra and run the test suite.
# RUN_SLOW=1 also runs the tests marked slow; extra arguments go to pytest.
# Tests run in parallel (pytest-xdist), one worker per core up to 4; TEST_WORKERS=N
# sets the count (TEST_WORKERS=0 runs them in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then "${PYTHON:-python3}" -m venv .venv; fi
# Reinstall only when pyproject.toml changed (the stamp holds its hash).
stamp=".venv/.installed-$(basename "$0" .sh)"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' > .venv/pip.log 2>&1; then
    cat .venv/pip.log; exit 1
  fi
  .venv/bin/python -c "import research" && echo "$want" > "$stamp"
fi
marker=()
if [ "${RUN_SLOW:-0}" = "1" ]; then marker=(-m "slow or not slow"); fi
workers=${TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(os.cpu_count() or 1, 4))')}
exec .venv/bin/python -m pytest -q -n "$workers" --dist worksteal "${marker[@]}" "$@"
