"""Every public loop method fed what users get wrong, answered as asyncio answers.

Each case runs on a fresh oxloop loop and on a fresh stdlib loop, in this process,
and the two outcomes must be the same: the same result type, or the same exception
type with the same message (addresses masked). The stdlib loop of the running
interpreter is the reference, so the expected answers follow its version.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

NAN = math.nan
INF = math.inf


def _noop(*_args: Any) -> None:
    pass


async def _coro() -> None:
    pass


class _Resources:
    """Objects a case may need, made afresh for each loop and closed after it."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.b.setblocking(False)
        self.closed = socket.socket()
        self.closed.close()
        self.blocking = socket.socket()  # a blocking socket: sock_* refuse it in debug mode only
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setblocking(False)
        self.rfd, self.wfd = os.pipe()
        self.closed_fd = os.dup(self.rfd)
        os.close(self.closed_fd)

    def close(self) -> None:
        for s in (self.a, self.b, self.blocking, self.udp):
            s.close()
        for fd in (self.rfd, self.wfd):
            os.close(fd)


Case = Callable[[asyncio.AbstractEventLoop, _Resources], Any]

# (id, call). A call returns a value, an awaitable (run with a deadline) or raises.
CASES: list[tuple[str, Case]] = [
    # scheduling
    ('call_soon-not-callable', lambda lp, r: lp.call_soon(1)),
    ('call_soon-context-wrong-type', lambda lp, r: lp.call_soon(_noop, context=1)),
    ('call_later-none', lambda lp, r: lp.call_later(None, _noop)),
    ('call_later-str', lambda lp, r: lp.call_later('1', _noop)),
    ('call_later-bytes', lambda lp, r: lp.call_later(b'1', _noop)),
    ('call_later-complex', lambda lp, r: lp.call_later(1j, _noop)),
    ('call_later-not-callable', lambda lp, r: lp.call_later(0, None)),
    ('call_at-none', lambda lp, r: lp.call_at(None, _noop)),
    ('call_at-str', lambda lp, r: lp.call_at('1', _noop)),
    ('call_soon_threadsafe-not-callable', lambda lp, r: lp.call_soon_threadsafe(object())),
    # tasks and futures
    ('create_task-not-coroutine', lambda lp, r: lp.create_task(_noop)),
    ('create_task-none', lambda lp, r: lp.create_task(None)),
    ('create_task-name-int', lambda lp, r: _closed_task(lp.create_task(_coro(), name=1))),
    ('set_task_factory-not-callable', lambda lp, r: lp.set_task_factory(1)),
    ('run_until_complete-not-awaitable', lambda lp, r: lp.run_until_complete(1)),
    ('run_until_complete-foreign-future', lambda lp, r: lp.run_until_complete(_foreign_future())),
    ('set_exception_handler-not-callable', lambda lp, r: lp.set_exception_handler(1)),
    ('call_exception_handler-not-dict', lambda lp, r: lp.call_exception_handler(None)),
    ('set_default_executor-not-executor', lambda lp, r: lp.set_default_executor(object())),
    # fd watching
    ('add_reader-none', lambda lp, r: lp.add_reader(None, _noop)),
    ('add_reader-negative', lambda lp, r: lp.add_reader(-1, _noop)),
    ('add_reader-float', lambda lp, r: lp.add_reader(1.5, _noop)),
    ('add_reader-str', lambda lp, r: lp.add_reader('3', _noop)),
    ('add_reader-huge', lambda lp, r: lp.add_reader(2**63, _noop)),
    ('add_reader-closed-socket', lambda lp, r: lp.add_reader(r.closed, _noop)),
    ('add_writer-closed-fd', lambda lp, r: lp.add_writer(r.closed_fd, _noop)),
    ('remove_reader-str', lambda lp, r: lp.remove_reader('x')),
    ('remove_reader-unwatched', lambda lp, r: lp.remove_reader(r.a)),
    ('remove_writer-negative', lambda lp, r: lp.remove_writer(-5)),
    # sock_*
    ('sock_recv-negative', lambda lp, r: lp.sock_recv(r.a, -1)),
    ('sock_recv-float', lambda lp, r: lp.sock_recv(r.a, 1.5)),
    ('sock_recv-str', lambda lp, r: lp.sock_recv(r.a, 'x')),
    ('sock_recv-closed', lambda lp, r: lp.sock_recv(r.closed, 1)),
    ('sock_recv-not-a-socket', lambda lp, r: lp.sock_recv(object(), 1)),
    ('sock_recv_into-bytes', lambda lp, r: lp.sock_recv_into(r.a, b'xx')),
    ('sock_recv_into-none', lambda lp, r: lp.sock_recv_into(r.a, None)),
    ('sock_sendall-str', lambda lp, r: lp.sock_sendall(r.a, 'text')),
    ('sock_sendall-none', lambda lp, r: lp.sock_sendall(r.a, None)),
    ('sock_sendall-closed', lambda lp, r: lp.sock_sendall(r.closed, b'x')),
    ('sock_connect-bad-address', lambda lp, r: lp.sock_connect(r.udp, 'nowhere')),
    ('sock_connect-closed', lambda lp, r: lp.sock_connect(r.closed, ('127.0.0.1', 1))),
    ('sock_accept-not-listening', lambda lp, r: lp.sock_accept(r.closed)),
    ('sock_sendto-str', lambda lp, r: lp.sock_sendto(r.udp, 'x', ('127.0.0.1', 9))),
    ('sock_recvfrom-negative', lambda lp, r: lp.sock_recvfrom(r.udp, -1)),
    ('sock_sendfile-not-a-file', lambda lp, r: lp.sock_sendfile(r.a, object())),
    # connections and servers
    ('create_connection-no-host', lambda lp, r: lp.create_connection(asyncio.Protocol)),
    ('create_connection-port-str', lambda lp, r: lp.create_connection(asyncio.Protocol, '127.0.0.1', 'x')),
    ('create_connection-port-huge', lambda lp, r: lp.create_connection(asyncio.Protocol, '127.0.0.1', 2**20)),
    ('create_connection-sock-and-host', lambda lp, r: lp.create_connection(asyncio.Protocol, 'h', 1, sock=r.a)),
    (
        'create_connection-server_hostname-no-ssl',
        lambda lp, r: lp.create_connection(asyncio.Protocol, 'h', 1, server_hostname='h'),
    ),
    ('create_connection-ssl-not-context', lambda lp, r: lp.create_connection(asyncio.Protocol, '127.0.0.1', 1, ssl=1)),
    (
        'create_connection-timeout-no-ssl',
        lambda lp, r: lp.create_connection(asyncio.Protocol, '127.0.0.1', 1, ssl_handshake_timeout=1),
    ),
    (
        'create_connection-happy-eyeballs-negative',
        lambda lp, r: lp.create_connection(asyncio.Protocol, sock=r.closed, happy_eyeballs_delay=-1),
    ),
    ('create_server-port-huge', lambda lp, r: lp.create_server(asyncio.Protocol, '127.0.0.1', 2**20)),
    ('create_server-port-str', lambda lp, r: lp.create_server(asyncio.Protocol, '127.0.0.1', 'x')),
    ('create_server-sock-and-host', lambda lp, r: lp.create_server(asyncio.Protocol, '127.0.0.1', 0, sock=r.a)),
    ('create_server-udp-sock', lambda lp, r: lp.create_server(asyncio.Protocol, sock=r.udp)),
    (
        'create_server-ssl-timeout-no-ssl',
        lambda lp, r: lp.create_server(asyncio.Protocol, '127.0.0.1', 0, ssl_handshake_timeout=1),
    ),
    ('create_unix_server-no-path', lambda lp, r: lp.create_unix_server(asyncio.Protocol)),
    ('create_unix_server-path-int', lambda lp, r: lp.create_unix_server(asyncio.Protocol, 5)),
    ('create_unix_connection-no-path', lambda lp, r: lp.create_unix_connection(asyncio.Protocol)),
    ('create_unix_connection-missing', lambda lp, r: lp.create_unix_connection(asyncio.Protocol, '/nonexistent/oxl')),
    (
        'create_datagram_endpoint-tcp-sock',
        lambda lp, r: lp.create_datagram_endpoint(asyncio.DatagramProtocol, sock=r.a),
    ),
    (
        'create_datagram_endpoint-bad-family',
        lambda lp, r: lp.create_datagram_endpoint(asyncio.DatagramProtocol, family=-1),
    ),
    (
        'create_datagram_endpoint-reuse_address',
        lambda lp, r: lp.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0), reuse_address=True
        ),
    ),
    ('connect_accepted_socket-udp', lambda lp, r: lp.connect_accepted_socket(asyncio.Protocol, r.udp)),
    ('start_tls-not-a-transport', lambda lp, r: lp.start_tls(object(), asyncio.Protocol(), None)),
    ('sendfile-not-a-transport', lambda lp, r: lp.sendfile(object(), object())),
    # DNS
    ('getaddrinfo-port-float', lambda lp, r: lp.getaddrinfo('127.0.0.1', 1.5)),
    ('getaddrinfo-family-huge', lambda lp, r: lp.getaddrinfo('127.0.0.1', 80, family=2**40)),
    ('getnameinfo-not-tuple', lambda lp, r: lp.getnameinfo('127.0.0.1')),
    # subprocesses and signals
    ('subprocess_shell-bytes-list', lambda lp, r: lp.subprocess_shell(asyncio.SubprocessProtocol, ['ls'])),
    (
        'subprocess_exec-universal-newlines',
        lambda lp, r: lp.subprocess_exec(asyncio.SubprocessProtocol, 'true', universal_newlines=True),
    ),
    ('add_signal_handler-bad-signal', lambda lp, r: lp.add_signal_handler(-1, _noop)),
    ('add_signal_handler-sigkill', lambda lp, r: lp.add_signal_handler(9, _noop)),
    ('add_signal_handler-coroutine', lambda lp, r: lp.add_signal_handler(10, _coro)),
    ('remove_signal_handler-str', lambda lp, r: lp.remove_signal_handler('x')),
    # debug and misc
    ('set_debug-str', lambda lp, r: lp.set_debug('yes')),
    ('shutdown_default_executor', lambda lp, r: lp.shutdown_default_executor()),
]


def _closed_task(task: asyncio.Task[Any]) -> str:
    task.cancel()
    return task.get_name()


def _foreign_future() -> asyncio.Future[Any]:
    other = asyncio.new_event_loop()
    try:
        return other.create_future()
    finally:
        other.close()


_ADDRESS = re.compile(r'0x[0-9a-f]+')
_FD = re.compile(r'fd=\d+')


def _normalise(text: str) -> str:
    text = _FD.sub('fd=?', _ADDRESS.sub('0x?', text))
    # Loop reprs name the class.
    return text.replace('oxloop.Loop', '<loop>').replace('Loop', '<loop>').replace('_UnixSelectorEventLoop', '<loop>')


def _outcome(loop: asyncio.AbstractEventLoop, case: Case) -> tuple[str, str, str]:
    res = _Resources()
    try:
        try:
            value = case(loop, res)
            if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                value = loop.run_until_complete(asyncio.wait_for(value, 5))
        except Exception as exc:  # noqa: BLE001 - the outcome is the point
            return ('raises', type(exc).__name__, _normalise(str(exc)))
        if isinstance(value, asyncio.Handle):
            value.cancel()
        if isinstance(value, asyncio.BaseTransport):
            value.close()
        if isinstance(value, asyncio.AbstractServer):
            value.close()
        if isinstance(value, tuple):
            for item in value:
                if isinstance(item, asyncio.BaseTransport):
                    item.close()
        return ('returns', type(value).__name__, '')
    finally:
        for sig in (10,):
            try:
                loop.remove_signal_handler(sig)
            except Exception:  # noqa: BLE001, S110 - cleanup only
                pass
        loop.run_until_complete(asyncio.sleep(0))
        res.close()


# Cases where oxloop answers differently on purpose: each names its entry in
# docs/divergences.md (oxloop refuses at call time what asyncio accepts and fails on later).
DIVERGENT = {
    'call_soon-not-callable': 'Non-callable callbacks are refused',
    'call_soon_threadsafe-not-callable': 'Non-callable callbacks are refused',
    'call_later-not-callable': 'Non-callable callbacks are refused',
    'call_later-complex': '`call_at` refuses a deadline that is not a real number at call time',
    'call_at-str': '`call_at` refuses a deadline that is not a real number at call time',
}
DIVERGENCES_MD = os.path.join(os.path.dirname(__file__), '..', '..', 'docs', 'divergences.md')


@pytest.mark.parametrize(('name', 'case'), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_answered_as_asyncio_answers(name: str, case: Case) -> None:
    import oxloop

    reference = asyncio.new_event_loop()
    try:
        expected = _outcome(reference, case)
    finally:
        reference.close()
    ours = oxloop.new_event_loop()
    try:
        got = _outcome(ours, case)
        assert not ours.is_closed()
        # The loop is still usable after the bad call.
        assert ours.run_until_complete(asyncio.sleep(0, 'alive')) == 'alive'
    finally:
        ours.close()
    if name in DIVERGENT:
        with open(DIVERGENCES_MD) as f:
            assert DIVERGENT[name] in f.read()
        assert (expected[0], got[0]) == ('returns', 'raises')
        return
    assert got == expected


def test_divergence_set_debug_keeps_the_truth_value(loop) -> None:
    # asyncio stores the object given to set_debug() and get_debug() returns it;
    # oxloop reads the flag per callback and keeps only its truth value.
    loop.set_debug('yes')
    assert loop.get_debug() in ('yes', True)
    assert bool(loop.get_debug()) is True
    loop.set_debug([])
    assert not loop.get_debug()
