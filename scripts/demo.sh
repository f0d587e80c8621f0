#!/usr/bin/env bash
# The main job: set up .venv (if missing), install the project, reproduce MNIST-1D.
# Extra arguments go to scripts/reproduce.py (e.g. --budget=smoke).
# The install step (scripts/_setup.sh) runs pip only when pyproject.toml changed or the
# package is not installed, shows pip's output only when it fails, and then exits non-zero.
# VENV=DIR uses another virtual environment (default .venv); PYTHON=... the interpreter
# that creates it (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
install_project . demo
"$VENV/bin/python" scripts/reproduce.py --experiment=mnist1d --workdir=runs/demo "$@"
echo
echo "Report: runs/demo/report.md   Results: runs/demo/results.json   Plot: runs/demo/curves.png"
