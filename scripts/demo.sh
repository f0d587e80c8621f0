#!/usr/bin/env bash
# The main job: set up .venv (if missing), install the project, reproduce MNIST-1D.
# Extra arguments go to scripts/reproduce.py (e.g. --budget=smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then "${PYTHON:-python3}" -m venv .venv; fi
# Reinstall only when pyproject.toml changed (the stamp holds its hash).
stamp=".venv/.installed-$(basename "$0" .sh)"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e . 2>&1 | grep -vE '^\s*$|Warning|warn|!!|\*\*\*|^\s' || true
  .venv/bin/python -c "import research" && echo "$want" > "$stamp"
fi
.venv/bin/python scripts/reproduce.py --experiment=mnist1d --workdir=runs/demo "$@"
echo
echo "Report: runs/demo/report.md   Results: runs/demo/results.json   Plot: runs/demo/curves.png"
