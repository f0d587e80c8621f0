"""A bad --storage stops scripts/sweep.py before it writes anything: one line, exit 2, no
new workdir, and an existing workdir's files as they were."""
import socket

import pytest

from research.sweep import runner
from tests import sweep_worker as sw
from tests.helpers import run_script


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]  # nothing listens there once the socket is closed


def _files(d):
  return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.read_bytes())
          for p in sorted(d.rglob('*')) if p.is_file()}


@pytest.mark.parametrize('storage, message', [
    ('postgresq://u:secret@127.0.0.1/sweeps', "SQLAlchemy knows no database 'postgresq'"),
    ('postgresql://u:secret@127.0.0.1:{port}/sweeps', 'cannot connect: '),
], ids=['unknown-driver', 'no-server'])  # the port is picked at run time: xdist's workers
def test_a_bad_storage_url_is_one_line_and_creates_no_workdir(tmp_path, storage, message):
  storage = storage.format(port=_closed_port())  # must collect the same test ids
  workdir = tmp_path / 'new' / 'sweep'
  p = run_script('sweep.py', '--config=configs/vae_digits.py:quick', '--space=small',
                 '--trials=2', f'--workdir={workdir}', f'--storage={storage}', timeout=120)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2, p.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('error: --storage') and message in lines[0], lines
  assert 'secret' not in p.stderr and 'Traceback' not in p.stderr
  assert not (tmp_path / 'new').exists()


def test_a_bad_storage_leaves_an_existing_sweep_untouched(tmp_path):
  workdir = tmp_path / 'sweep'
  sw.sweep(workdir, 'random', 2, batch=2, space={k: sw.SPACE[k] for k in ('optim.lr',
                                                                            'task.beta')})
  before = _files(workdir)
  for storage in ('jornal', f'postgresql://u@127.0.0.1:{_closed_port()}/sweeps'):
    with pytest.raises(ValueError, match='--storage') as e:
      sw.sweep(workdir, 'random', 2, batch=2, storage=storage, heartbeat_s=1)
    assert '\n' not in str(e.value)
  assert _files(workdir) == before
