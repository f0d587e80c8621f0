#!/usr/bin/env bash
# Set up .venv (if missing) with the dev extra and run the test suite.
# RUN_SLOW=1 also runs the tests marked slow; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then "${PYTHON:-python3}" -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
marker=()
if [ "${RUN_SLOW:-0}" = "1" ]; then marker=(-m "slow or not slow"); fi
exec .venv/bin/python -m pytest -q "${marker[@]}" "$@"
