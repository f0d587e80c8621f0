"""scripts/demo.sh and scripts/test.sh: the install step, without network and in seconds.

Each test copies the shell scripts into a throwaway repository (a pyproject.toml,
an empty `research` package, stub scripts/reproduce.py) whose .venv is a fresh
`venv --without-pip` holding a fake `pip` and a fake `pytest`. The fake pip logs
every call and, by FAKE_PIP: fails with pip's error lines ('fail'), exits 0
without installing anything ('noop'), or installs the repository (a .pth file)
after printing pip-like noise ('ok').

What must hold: a failed install exits non-zero with pip's output shown and writes
no stamp, so the next run calls pip again; an install that pip reports as done
but that `import research` from outside the repository root cannot see is a
failure too (the package directory is importable from the repository root
without any install); a stamp that is current but whose install is gone is
redone; a successful install prints none of pip's noise and is not repeated.
"""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SITE = f'lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages'
PIP_ERROR = 'ERROR: No matching distribution found for no-such-package-4b1d'
PIP_NOISE = 'WARNING: fake pip noise that a successful install must not show'

FAKE_PIP = f'''
import os, pathlib, sys
with open(os.environ['FAKE_PIP_CALLS'], 'a') as f:
  f.write(' '.join(sys.argv[1:]) + '\\n')
mode = os.environ.get('FAKE_PIP', 'fail')
if mode == 'fail':
  print('ERROR: Could not find a version that satisfies the requirement '
        'no-such-package-4b1d (from research) (from versions: none)', file=sys.stderr)
  print({PIP_ERROR!r}, file=sys.stderr)
  sys.exit(1)
if mode == 'ok':
  print({PIP_NOISE!r})
  site = pathlib.Path(__file__).resolve().parents[1]
  (site / 'fake_editable_research.pth').write_text(os.getcwd() + '\\n')
'''


def _repo(tmp_path, venv_dir='.venv'):
  repo = tmp_path / 'repo'
  (repo / 'scripts').mkdir(parents=True)
  for script in (ROOT / 'scripts').glob('*.sh'):
    shutil.copy(script, repo / 'scripts')
  (repo / 'scripts' / 'reproduce.py').write_text(
      'import sys, research\nprint("REPRODUCE", *sys.argv[1:])\n')
  (repo / 'research').mkdir()
  (repo / 'research' / '__init__.py').write_text('')
  (repo / 'pyproject.toml').write_text(
      '[project]\nname = "research"\nversion = "0.1.0"\n'
      'dependencies = ["no-such-package-4b1d>=1"]\n')
  venv = repo / venv_dir if not os.path.isabs(venv_dir) else pathlib.Path(venv_dir)
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  site = venv / SITE
  (site / 'pip').mkdir()
  (site / 'pip' / '__init__.py').write_text('')
  (site / 'pip' / '__main__.py').write_text(FAKE_PIP)
  (site / 'pytest').mkdir()
  (site / 'pytest' / '__init__.py').write_text('')
  (site / 'pytest' / '__main__.py').write_text('import sys\nprint("PYTEST", *sys.argv[1:])\n')
  return repo, venv


def _run(repo, script, mode, *args, **env):
  calls = repo.parent / 'pip-calls'
  environ = {k: v for k, v in os.environ.items()
             if k not in ('VENV', 'PYTHON', 'PYTHONPATH', 'PYTHONHOME')}
  environ.update(FAKE_PIP=mode, FAKE_PIP_CALLS=str(calls), **env)
  # From another directory: the script must find its repository by itself.
  proc = subprocess.run(['bash', str(repo / 'scripts' / script), *args], cwd=repo.parent,
                        env=environ, capture_output=True, text=True, timeout=60)
  n = len(calls.read_text().splitlines()) if calls.exists() else 0
  return proc.returncode, proc.stdout + proc.stderr, n


def _stamps(venv):
  return sorted(p.name for p in venv.glob('.installed-*'))


@pytest.mark.parametrize('script', ['demo.sh', 'test.sh'])
def test_failed_pip_install_exits_non_zero_shows_pip_and_retries(tmp_path, script):
  repo, venv = _repo(tmp_path)
  rc, out, calls = _run(repo, script, 'fail')
  assert rc != 0, out
  assert PIP_ERROR in out
  assert 'REPRODUCE' not in out and 'PYTEST' not in out
  assert _stamps(venv) == [] and calls == 1
  rc, out, calls = _run(repo, script, 'fail')  # no stamp: pip runs again (and fails again)
  assert rc != 0 and PIP_ERROR in out and calls == 2
  assert _stamps(venv) == []
  # Once the install works, the same repository recovers without any manual step.
  rc, out, calls = _run(repo, script, 'ok')
  assert rc == 0, out
  assert calls == 3 and len(_stamps(venv)) == 1


@pytest.mark.parametrize('script', ['demo.sh', 'test.sh'])
def test_install_invisible_outside_the_repo_root_is_a_failure(tmp_path, script):
  """pip exits 0 but installs nothing: `import research` works from the repository
  root only (the package directory is on sys.path there), so no stamp."""
  repo, venv = _repo(tmp_path)
  rc, out, calls = _run(repo, script, 'noop')
  assert rc != 0, out
  assert 'research' in out and 'REPRODUCE' not in out and 'PYTEST' not in out
  assert _stamps(venv) == [] and calls == 1
  rc, _, calls = _run(repo, script, 'noop')
  assert rc != 0 and calls == 2


@pytest.mark.parametrize('script,stamp', [('demo.sh', '.installed-demo'),
                                          ('test.sh', '.installed-test')])
def test_successful_install_is_quiet_and_done_once(tmp_path, script, stamp):
  repo, venv = _repo(tmp_path)
  rc, out, calls = _run(repo, script, 'ok', '--budget=smoke')
  assert rc == 0, out
  assert PIP_NOISE not in out
  assert ('REPRODUCE --experiment=mnist1d --workdir=runs/demo --budget=smoke' in out
          if script == 'demo.sh' else 'PYTEST' in out and '--budget=smoke' in out)
  want = hashlib.sha256((repo / 'pyproject.toml').read_bytes()).hexdigest()[:16]
  assert _stamps(venv) == [stamp] and (venv / stamp).read_text().strip() == want
  rc, out, calls = _run(repo, script, 'fail')  # stamp current, install there: no pip
  assert rc == 0 and calls == 1, out
  with open(repo / 'pyproject.toml', 'a') as f:  # changed pyproject.toml: reinstall
    f.write('# changed\n')
  rc, out, calls = _run(repo, script, 'fail')
  assert rc != 0 and PIP_ERROR in out and calls == 2
  assert _stamps(venv) == []  # the old stamp is gone with the failed install


@pytest.mark.parametrize('script,stamp', [('demo.sh', '.installed-demo'),
                                          ('test.sh', '.installed-test')])
def test_current_stamp_without_the_install_reinstalls(tmp_path, script, stamp):
  """A stamp from an earlier (broken) version of the script, or an install removed
  since: the stamp alone must not skip the install."""
  repo, venv = _repo(tmp_path)
  want = hashlib.sha256((repo / 'pyproject.toml').read_bytes()).hexdigest()[:16]
  (venv / stamp).write_text(want + '\n')
  rc, out, calls = _run(repo, script, 'fail')
  assert rc != 0 and PIP_ERROR in out and calls == 1, out
  assert _stamps(venv) == []
  rc, out, calls = _run(repo, script, 'ok')
  assert rc == 0 and calls == 2, out


def test_venv_variable_picks_the_environment(tmp_path):
  repo, venv = _repo(tmp_path, venv_dir=str(tmp_path / 'elsewhere'))
  rc, out, calls = _run(repo, 'demo.sh', 'ok', VENV=str(venv))
  assert rc == 0 and calls == 1, out
  assert _stamps(venv) == ['.installed-demo']
  assert not (repo / '.venv').exists()


def test_ci_runs_exactly_the_readme_test_command():
  lines = [l.strip() for l in (ROOT / '.ci' / 'run').read_text().splitlines()]
  assert 'bash scripts/test.sh' in lines
