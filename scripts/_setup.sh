# The install step of scripts/demo.sh and scripts/test.sh, sourced by both from the
# repository root:  install_project SPEC NAME  (SPEC: what pip installs editable, e.g.
# '.' or '.[dev]'; NAME: the stamp's name).
#
# Creates the virtual environment if missing, then runs `pip install -e SPEC` when
# pyproject.toml changed since the last successful install (the stamp
# $VENV/.installed-NAME holds its hash) or the installed package is not there. The
# stamp is removed before installing and written only when pip succeeded and
# `import research` with the current directory off sys.path (python -I) finds this
# checkout's package: from the repository root the package directory is importable
# without any install. pip's output goes to $VENV/pip.log and is printed only when the
# install fails; then the calling script exits non-zero and the next run installs again.
#
# Environment: VENV, the virtual environment's directory (default .venv; relative paths
# are relative to the repository root); PYTHON, the interpreter that creates it
# (default python3).

VENV=${VENV:-.venv}

# research, imported with neither the current directory nor PYTHONPATH on sys.path,
# is this checkout's package.
_research_installed_here() {
  "$VENV/bin/python" -I -c '
import os, sys
try:
  import research
except ImportError as e:
  sys.exit(f"{e} (outside the repository root: is it installed in {sys.prefix}?)")
here = os.path.realpath(os.path.join(sys.argv[1], "research"))
got = os.path.realpath(os.path.dirname(research.__file__ or "."))
if got != here:
  sys.exit(f"research is imported from {got}, not from this checkout ({here})")
' "$PWD"
}

install_project() {
  local spec=$1 name=$2
  local py="$VENV/bin/python" stamp="$VENV/.installed-$name" want
  if [ ! -x "$py" ]; then "${PYTHON:-python3}" -m venv "$VENV" || return; fi
  want=$("$py" -I -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' pyproject.toml) || return
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && _research_installed_here 2>/dev/null; then
    return 0
  fi
  rm -f "$stamp"
  if ! "$py" -m pip install -q --disable-pip-version-check -e "$spec" > "$VENV/pip.log" 2>&1; then
    cat "$VENV/pip.log" >&2
    echo "$0: pip install -e '$spec' into $VENV failed (pip's output above, also in $VENV/pip.log)" >&2
    return 1
  fi
  if ! _research_installed_here; then
    cat "$VENV/pip.log" >&2
    echo "$0: pip install -e '$spec' into $VENV exited 0 but the package is not importable (pip's output above); the next run installs again" >&2
    return 1
  fi
  echo "$want" > "$stamp"
}
