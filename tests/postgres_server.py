"""A throwaway PostgreSQL server for tests: a fresh cluster in a temporary directory.

    with postgres_server.running() as server:   # or the `postgres` fixture in a test file
      url = server.create_database('sweep')      # postgresql://postgres@127.0.0.1:PORT/sweep
      ...

`running()` finds the server binaries (``initdb``, ``pg_ctl``, ``postgres``: on
PATH, in /usr/local/bin, or the newest /usr/lib/postgresql/*/bin), runs ``initdb``
into a new temporary directory (trust authentication, superuser ``postgres``), starts
the server on a free port of 127.0.0.1 and a unix socket in that directory, with
fsync off (a test server, nothing to keep), and stops it with ``pg_ctl stop -m
immediate`` and removes the directory on exit, also when the body raised.
PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres``
OS user (``nobody`` when there is none) and every server command runs through
``runuser -u USER --``. `find_bindir()` returns None when no server is installed, so a
test can skip; `NotFound` names what is missing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PROGRAMS = ('initdb', 'pg_ctl', 'postgres')


class NotFound(RuntimeError):
  pass


def _version(bindir: str) -> tuple[int, ...]:
  name = Path(bindir).parent.name
  return tuple(int(x) for x in name.split('.') if x.isdigit()) or (0,)


def find_bindir() -> str | None:
  """A directory holding initdb, pg_ctl and postgres, or None."""
  on_path = shutil.which('pg_ctl')
  candidates = [os.path.dirname(os.path.realpath(on_path))] if on_path else []
  candidates += ['/usr/local/bin']
  candidates += sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=_version, reverse=True)
  for d in candidates:
    if all(os.access(os.path.join(d, p), os.X_OK) for p in PROGRAMS):
      return d
  return None


def _server_user() -> str | None:
  """The OS user that owns the cluster: None (ourselves) unless we are root."""
  if os.geteuid() != 0:
    return None
  for name in ('postgres', 'nobody'):
    try:
      pwd.getpwnam(name)
      return name
    except KeyError:
      pass
  raise NotFound('running as root and there is neither a postgres nor a nobody user '
                 '(PostgreSQL refuses to run as root)')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class Server:
  bindir: str
  root: Path  # the temporary directory: data/, the socket, server.log
  port: int
  user: str | None  # the OS user the server runs as (None: this process's)

  @property
  def data(self) -> Path:
    return self.root / 'data'

  def url(self, database: str = 'postgres') -> str:
    return f'postgresql://postgres@127.0.0.1:{self.port}/{database}'

  def command(self, program: str, *args: str, timeout: float = 120) -> str:
    """Runs one of the server's programs as the server's user; returns its stdout."""
    path = os.path.join(self.bindir, program)
    cmd = [path if os.access(path, os.X_OK) else shutil.which(program) or program, *args]
    if self.user:
      cmd = ['runuser', '-u', self.user, '--', *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
    if p.returncode != 0:
      log = self.root / 'server.log'
      tail = log.read_text()[-2000:] if log.exists() else ''
      raise RuntimeError(f'{" ".join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}{tail}')
    return p.stdout

  def psql(self, sql: str, database: str = 'postgres') -> str:
    return self.command('psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h', str(self.root),
                        '-p', str(self.port), '-U', 'postgres', '-d', database, '-c', sql)

  def create_database(self, name: str) -> str:
    """Creates database ``name``; returns its URL."""
    self.psql(f'CREATE DATABASE "{name}"')
    return self.url(name)

  def start(self) -> None:
    self.command('initdb', '-D', str(self.data), '-U', 'postgres', '--auth=trust', '-E', 'UTF8',
                 '--locale=C', '--no-sync')
    options = (f'-c listen_addresses=127.0.0.1 -c port={self.port} '
               f'-c unix_socket_directories={self.root} -c fsync=off '
               '-c synchronous_commit=off -c full_page_writes=off -c max_connections=50')
    self.command('pg_ctl', 'start', '-D', str(self.data), '-w', '-t', '60',
                 '-l', str(self.root / 'server.log'), '-o', options)

  def stop(self) -> None:
    if (self.data / 'postmaster.pid').exists():
      self.command('pg_ctl', 'stop', '-D', str(self.data), '-m', 'immediate', '-w', '-t', '30')


@contextlib.contextmanager
def running():
  """Starts a fresh server; yields its `Server`; stops it and deletes it on exit."""
  bindir = find_bindir()
  if bindir is None:
    raise NotFound(f'no PostgreSQL server binaries ({", ".join(PROGRAMS)}) on PATH, in '
                   '/usr/local/bin or /usr/lib/postgresql/*/bin')
  user = _server_user()
  # Not under pytest's tmp_path: its parents are private to root, out of the server user's reach.
  root = Path(tempfile.mkdtemp(prefix='pg-test-'))
  if user:
    shutil.chown(root, user)
  server = Server(bindir, root, _free_port(), user)
  try:
    server.start()
    yield server
  finally:
    try:
      server.stop()
    finally:
      shutil.rmtree(root, ignore_errors=True)
