"""Helpers for the tests against real servers and libraries.

Servers run either in the test's own loop (the ``loop`` fixture: oxloop or the stdlib
loop) or as child processes started on the loop under test; the clients (httpx, aiohttp,
websockets) always run on the ``loop`` fixture. Children listen on a port the OS picked,
are ready when that port accepts a connection, and are killed (their whole process group:
gunicorn, hypercorn and granian fork or spawn workers) when the test ends.

No conftest.py here: tests/_net.py imports ``new_loop`` from the module named
``conftest``, which must stay tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest

APP_DIR = Path(__file__).resolve().parent
# What the server's loop class name starts with, per implementation under test.
LOOP_MODULE = {'oxloop': 'oxloop.', 'asyncio': 'asyncio.'}
PYTHON = sys.executable

_T = TypeVar('_T')


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T], timeout: float = 20) -> _T:
    """Run ``coro`` on ``loop`` to completion, failing after ``timeout`` seconds, or if
    anything reached the loop's exception handler meanwhile (an error no one awaited)."""
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, context: errors.append(context))
    try:
        result = loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        loop.set_exception_handler(None)
    assert not errors, f'the exception handler got: {errors}'
    return result


def assert_loop(name: str, impl: str) -> None:
    """``name`` (the app's /loop answer) is a loop class of implementation ``impl``."""
    assert name.startswith(LOOP_MODULE[impl]), f'served on {name}, expected an {impl} loop'


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picked it)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started as a child process in a session (process group) of its own.

    ``with ServerProcess(argv, port) as server:`` waits until it listens, and kills the
    whole group on the way out."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        # A file, not a pipe: a chatty server never blocks. Closed by kill().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        child_env = {k: v for k, v in os.environ.items() if k not in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE')}
        child_env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(APP_DIR), os.environ.get('PYTHONPATH')]))
        child_env['PYTHONUNBUFFERED'] = '1'
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            argv,
            cwd=APP_DIR,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors='replace')

    def wait_ready(self, timeout: float = 20) -> None:
        """Poll the port until it accepts a connection; fail if the child exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f'server exited with {self.proc.returncode} before listening:\n{self.output()}')
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f'server not listening on {self.port} after {timeout}s:\n{self.output()}')

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> int:
        """Send ``sig`` to the server (its main process) and return its exit code."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f'server still running {timeout}s after signal {sig}:\n{self.output()}')

    def __enter__(self) -> Self:
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole group has exited
        self.proc.wait(10)
        self._log.close()
