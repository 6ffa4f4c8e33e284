"""Fixtures shared by the behaviour suite.

Every behaviour test runs twice: on oxloop and on the stdlib's asyncio loop, which is
the reference. A test that fails on the ``asyncio`` id encodes the wrong behaviour.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

LOOP_IMPLS = ('oxloop', 'asyncio')

# Source that creates a loop named ``loop`` in a child interpreter, per implementation.
LOOP_SOURCE = {
    'oxloop': 'import asyncio, oxloop\nloop = oxloop.new_event_loop()\n',
    'asyncio': 'import asyncio\nloop = asyncio.new_event_loop()\n',
}


def new_loop(impl: str) -> asyncio.AbstractEventLoop:
    """Create a fresh loop of the given implementation."""
    if impl == 'oxloop':
        import oxloop  # imported lazily: collection works before the extension is built

        return oxloop.new_event_loop()
    return asyncio.new_event_loop()


def _close(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_running():
        loop.stop()
        return
    if not loop.is_closed():
        loop.close()


class _TestTimeout(SystemExit):
    """What a test that overran its timeout gets, in the main thread.

    pytest-timeout's own signal handler raises ``pytest.fail``'s exception, which a
    running loop swallows when the test is inside a callback (``Handle._run`` reports
    everything but ``SystemExit``/``KeyboardInterrupt`` to the exception handler), so
    the test went on hanging. Both loops re-raise a ``SystemExit`` out of
    ``run_forever``, and pytest reports it as the test's failure. The alarm repeats
    until the test ends, in case something swallows this one too."""


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings):
    if settings.method != 'signal' or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer
    import pytest_timeout

    fired = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            pytest_timeout.dump_stacks(item.config.get_terminal_writer())
        fired.append(True)
        raise _TestTimeout(f'Timeout (>{settings.timeout}s) in {item.nodeid}')

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined] # pytest-timeout's cancel hook calls it
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout, 1.0)
    return True


@pytest.fixture
def tmp_dir():
    """A fresh directory under /tmp: short, as a Unix socket path holds 108 bytes."""
    d = tempfile.mkdtemp(prefix='oxl-', dir='/tmp')
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def path(tmp_dir: str) -> str:
    """A Unix socket path in ``tmp_dir``."""
    return os.path.join(tmp_dir, 's')


@pytest.fixture(params=['tcp', 'unix'])
def kind(request: pytest.FixtureRequest) -> str:
    """A stream transport kind, for ``_net.stream_pair``."""
    return request.param


@pytest.fixture
def sock_pair():
    """A connected pair of non-blocking Unix stream sockets, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(params=LOOP_IMPLS)
def loop_impl(request: pytest.FixtureRequest) -> str:
    """The name of the loop implementation under test: 'oxloop' or 'asyncio'."""
    return request.param


@pytest.fixture
def loop_source(loop_impl: str) -> str:
    """Python source that creates a loop named ``loop`` in a child interpreter."""
    return LOOP_SOURCE[loop_impl]


@pytest.fixture
def loop_factory(loop_impl: str):
    """A zero-argument factory for extra loops of the implementation under test; every
    loop it creates is closed after the test."""
    made: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.AbstractEventLoop:
        lp = new_loop(loop_impl)
        made.append(lp)
        return lp

    yield factory
    for lp in made:
        _close(lp)


@pytest.fixture
def loop(loop_factory):
    """A fresh, not running loop; closed after the test."""
    lp = loop_factory()
    yield lp
    _close(lp)


@pytest.fixture(autouse=True)
def _restore_event_loop_state():
    """Tests that install a policy or set a current loop must not leak it."""
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop(None)
    if asyncio.get_event_loop_policy() is not policy:
        asyncio.set_event_loop_policy(policy)
        asyncio.set_event_loop(None)


def _run_python(
    code: str,
    *,
    impl: str | None = None,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 20,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child interpreter (this venv's python) and return its result.

    With ``impl``, the code is prefixed with the source that creates ``loop``.
    """
    src = textwrap.dedent(code)
    if impl is not None:
        src = LOOP_SOURCE[impl] + src
    child_env = {k: v for k, v in os.environ.items() if k not in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE')}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args, '-c', src],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _run_briefly(loop: asyncio.AbstractEventLoop, iterations: int = 1) -> None:
    """Run ``iterations`` loop iterations (each ends with a call_soon'ed stop())."""
    for _ in range(iterations):
        loop.call_soon(loop.stop)
        loop.run_forever()


def _run_with_deadline(loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> bool:
    """run_forever() until something calls stop(), or ``timeout`` elapses.

    Return True if the loop was stopped by the test and not by the deadline."""
    fired = []

    def deadline() -> None:
        fired.append(True)
        loop.stop()

    h = loop.call_later(timeout, deadline)
    try:
        loop.run_forever()
    finally:
        h.cancel()
    return not fired


@pytest.fixture
def run_python():
    """``run_python(code, impl=None, env=None, args=(), timeout=20)``: run code in a child
    interpreter; with ``impl`` the code starts with a ready-made ``loop``."""
    return _run_python


@pytest.fixture
def run_briefly():
    """``run_briefly(loop, iterations=1)``: run that many loop iterations."""
    return _run_briefly


@pytest.fixture
def run_with_deadline():
    """``run_with_deadline(loop, timeout=5.0) -> bool``: run_forever() until stopped or the
    deadline; True when something other than the deadline stopped it."""
    return _run_with_deadline
