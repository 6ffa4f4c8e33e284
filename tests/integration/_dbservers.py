"""Real database servers for the integration tests: PostgreSQL and Redis.

``running_postgres()`` and ``running_redis()`` start one into a temporary directory,
listening on 127.0.0.1 (a free port) and on a Unix socket in that directory, and stop it
on exit. Not a test module: the test files of this directory wrap them in module-scoped
fixtures (``postgres_server``, ``redis_server``); one module uses each server, so each
starts once per session.

The servers come from Debian packages that ``make test-servers-deps`` installs when
missing: ``postgresql`` (its binaries live in /usr/lib/postgresql/<major>/bin, off PATH)
and ``redis-server`` (Debian builds it with TLS). PostgreSQL refuses to run as root, so
under root the cluster belongs to the ``postgres`` user the package creates and the
server processes run as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

HOST = '127.0.0.1'
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CERTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'certs')
CA = os.path.join(CERTS, 'ca.pem')
SERVER_CERT = os.path.join(CERTS, 'server.pem')
SERVER_KEY = os.path.join(CERTS, 'server.key')


def _free_port() -> int:
    # The port could be taken between this close and the server's bind: the start
    # then fails with the server's log, which says so.
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError as e:
        return f'(no log: {e})'


def _wait_ready(proc: subprocess.Popen, ready, what: str, log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f'{what} exited with {proc.returncode} while starting:\n{_log_tail(log)}')
        if time.monotonic() > deadline:
            _stop(proc, signal.SIGTERM)
            raise RuntimeError(f'{what} not ready after {START_TIMEOUT} s:\n{_log_tail(log)}')
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- PostgreSQL ------------------------------------------------------------------------


def _postgres_bindir() -> str:
    """The directory holding initdb and postgres: PATH's, else Debian's newest major."""
    on_path = shutil.which('initdb')
    if on_path and shutil.which('postgres'):
        return os.path.dirname(os.path.realpath(on_path))
    dirs = sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=lambda d: int(d.split('/')[-2]))
    for d in reversed(dirs):
        if os.access(os.path.join(d, 'initdb'), os.X_OK) and os.access(os.path.join(d, 'postgres'), os.X_OK):
            return d
    pytest.fail("PostgreSQL is not installed (make test-servers-deps installs Debian's postgresql)")


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    socket_dir: str
    user: str = 'postgres'
    database: str = 'postgres'
    ca: str = CA

    @property
    def dsn(self) -> str:
        return f'postgresql://{self.user}@{self.host}:{self.port}/{self.database}'


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster made by initdb in a temporary directory, trust authentication,
    on 127.0.0.1 (TLS offered, with tests/certs/server.pem) and a Unix socket in that
    directory; superuser and database ``postgres``."""
    bindir = _postgres_bindir()
    run_as: dict = {}
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam('postgres')
        except KeyError:
            pytest.fail('running as root and there is no postgres user to run PostgreSQL as')
        run_as = {'user': owner.pw_uid, 'group': owner.pw_gid, 'extra_groups': []}
    base = tempfile.mkdtemp(prefix='oxl-pg-', dir='/tmp')  # short: the socket path holds 108 bytes
    if run_as:
        os.chown(base, run_as['user'], run_as['group'])
    data = os.path.join(base, 'data')
    log = os.path.join(base, 'log')
    proc = None
    try:
        init = subprocess.run(
            [os.path.join(bindir, 'initdb'), '-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8'],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
            **run_as,
        )
        if init.returncode != 0:
            pytest.fail(f'initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}')
        # PostgreSQL wants its key owned by the server's user and closed to others.
        for name in ('server.pem', 'server.key', 'ca.pem'):
            dest = os.path.join(base, name)
            shutil.copyfile(os.path.join(CERTS, name), dest)
            os.chmod(dest, 0o600)
            if run_as:
                os.chown(dest, run_as['user'], run_as['group'])
        port = _free_port()
        # fsync off and no autovacuum: a throwaway cluster, started fast. TLS is offered
        # on TCP; clients that ask for it get tests/certs/server.pem.
        settings = {
            'listen_addresses': HOST,
            'port': str(port),
            'unix_socket_directories': base,
            'fsync': 'off',
            'synchronous_commit': 'off',
            'full_page_writes': 'off',
            'autovacuum': 'off',
            'max_connections': '50',
            'ssl': 'on',
            'ssl_cert_file': os.path.join(base, 'server.pem'),
            'ssl_key_file': os.path.join(base, 'server.key'),
        }
        cmd = [os.path.join(bindir, 'postgres'), '-D', data]
        for k, v in settings.items():
            cmd += ['-c', f'{k}={v}']
        with open(log, 'wb') as logf:
            proc = subprocess.Popen(cmd, cwd=base, stdout=logf, stderr=subprocess.STDOUT, **run_as)
        pidfile = os.path.join(data, 'postmaster.pid')

        def ready() -> bool:
            # postmaster.pid's last line is the server's status; 'ready' once it accepts
            # connections (PostgreSQL >= 10).
            try:
                with open(pidfile) as f:
                    status = f.read().splitlines()
            except OSError:
                return False
            return len(status) >= 8 and status[7].strip() == 'ready' and _tcp_accepts(port)

        _wait_ready(proc, ready, 'postgres', log)
        yield PostgresServer(host=HOST, port=port, socket_dir=base)
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(base, ignore_errors=True)


# --- Redis -----------------------------------------------------------------------------


def _redis_pong(port: int) -> bool:
    # Redis binds every listener (TLS and Unix included) before it serves commands, and
    # answers -LOADING until its data is loaded.
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b'PING\r\n')
            return s.recv(64).startswith(b'+PONG')
    except OSError:
        return False


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    tls_port: int
    unix_socket: str
    ca: str = CA


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A redis-server without persistence on 127.0.0.1 (plain and TLS, the TLS listener
    with tests/certs/server.pem, clients not asked for certificates) and a Unix socket."""
    exe = shutil.which('redis-server')
    if exe is None:
        pytest.fail("redis-server is not installed (make test-servers-deps installs Debian's redis-server)")
    base = tempfile.mkdtemp(prefix='oxl-redis-', dir='/tmp')
    log = os.path.join(base, 'log')
    sock = os.path.join(base, 'redis.sock')
    port, tls_port = _free_port(), _free_port()
    while tls_port == port:
        tls_port = _free_port()
    cmd = [
        exe,
        '--bind', HOST,
        '--port', str(port),
        '--tls-port', str(tls_port),
        '--tls-cert-file', SERVER_CERT,
        '--tls-key-file', SERVER_KEY,
        '--tls-ca-cert-file', CA,
        '--tls-auth-clients', 'no',
        '--unixsocket', sock,
        '--unixsocketperm', '700',
        '--dir', base,
        '--save', '',
        '--appendonly', 'no',
        '--daemonize', 'no',
        '--maxclients', '1000',
    ]  # fmt: skip
    proc = None
    try:
        with open(log, 'wb') as logf:
            proc = subprocess.Popen(cmd, cwd=base, stdout=logf, stderr=subprocess.STDOUT)
        _wait_ready(
            proc,
            lambda: os.path.exists(sock) and _redis_pong(port),
            'redis-server',
            log,
        )
        yield RedisServer(host=HOST, port=port, tls_port=tls_port, unix_socket=sock)
    finally:
        if proc is not None:
            _stop(proc, signal.SIGTERM)
        shutil.rmtree(base, ignore_errors=True)
