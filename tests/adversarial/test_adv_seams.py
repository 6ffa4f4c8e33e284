"""Where the stdlib's own code meets oxloop's native objects, on every version.

The stdlib's TLS layer, server bookkeeping and transport factories call private
methods of the transports and loops under them; each test runs a scenario on the
loop under test and, where the stdlib's answer depends on the version, on a fresh
stdlib loop too, and compares.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import sys

import pytest
from conftest import new_loop


def _here_and_on_the_stdlib(loop, scenario, *args):
    """``scenario(*args)`` run on ``loop`` and on a fresh stdlib loop: (got, expected)."""
    got = loop.run_until_complete(scenario(*args))
    reference = new_loop('asyncio')
    try:
        reference.set_exception_handler(lambda lp, ctx: None)
        expected = reference.run_until_complete(scenario(*args))
    finally:
        reference.close()
    return got, expected


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _start_tls_against(peer_answer: bytes | None, timeout: float) -> tuple[str, bool]:
    """start_tls() over a TCP connection whose peer is not a TLS server: it answers
    ``peer_answer`` in the clear, or nothing. Returns the exception's type name and
    whether the underlying transport ended up closed."""
    loop = asyncio.get_running_loop()
    served: list[asyncio.Transport] = []

    class Peer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            served.append(transport)  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            if peer_answer is not None:
                served[0].write(peer_answer)

    server = await loop.create_server(Peer, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    transport, protocol = await loop.create_connection(asyncio.Protocol, '127.0.0.1', port)
    try:
        await asyncio.wait_for(
            loop.start_tls(
                transport, protocol, _client_context(), server_hostname='localhost', ssl_handshake_timeout=timeout
            ),
            10,
        )
    except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
        outcome = type(exc).__name__
    else:
        outcome = 'no error'
    for _ in range(5):
        await asyncio.sleep(0)
    closed = transport.is_closing()
    transport.close()
    for t in served:
        t.close()
    server.close()
    await server.wait_closed()
    return outcome, closed


@pytest.mark.parametrize(
    ('peer_answer', 'timeout'), [(b'HTTP/1.1 400 Bad Request\r\n\r\n', 5.0), (None, 0.3)], ids=['plaintext', 'silent']
)
def test_start_tls_failure_closes_the_transport(loop, peer_answer, timeout) -> None:
    # sslproto calls transport._force_close(exc) on a fatal TLS error and on a
    # handshake timeout: the native transport under it must have it.
    errors: list[dict] = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    got, expected = _here_and_on_the_stdlib(loop, _start_tls_against, peer_answer, timeout)
    assert got == expected
    assert got[0] != 'no error'
    assert not [e for e in errors if isinstance(e.get('exception'), AttributeError)]


async def _second_transport_on_one_socket() -> str:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    try:
        first, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        try:
            second, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        except RuntimeError as exc:
            assert str(exc).startswith('File descriptor ')
            return 'RuntimeError: ' + str(exc).split(' is used by transport ')[0].split(' ')[0]
        second.close()
        return 'second transport made'
    finally:
        first.close()
        await asyncio.sleep(0)
        b.close()


def test_second_transport_on_one_socket_as_the_stdlib(loop) -> None:
    # 3.12+ checks _ensure_fd_no_transport when it makes a transport; 3.11 does not.
    got, expected = _here_and_on_the_stdlib(loop, _second_transport_on_one_socket)
    assert got == expected


async def _wait_closed_after_a_leaked_client() -> str:
    loop = asyncio.get_running_loop()
    accepted: list[asyncio.Transport] = []

    class Leaky(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Leaky, '127.0.0.1', 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    try:
        for _ in range(100):
            if accepted:
                break
            await asyncio.sleep(0.01)
        # Unregistered from the selector, then forgotten unclosed: collectable (at
        # once on oxloop, whose transport is in no cycle; by the collector on the
        # stdlib loop, whose transport holds its own bound methods).
        accepted[0].pause_reading()
        server.close()

        def forget() -> None:
            accepted.clear()
            gc.collect()

        with pytest.warns(ResourceWarning):
            forget()
        await asyncio.sleep(0)
        try:
            await asyncio.wait_for(server.wait_closed(), 1.0)
        except TimeoutError:
            return 'wait_closed hangs'
        return 'wait_closed returns'
    finally:
        client.close()


def test_wait_closed_after_a_leaked_client_as_the_stdlib(loop) -> None:
    # 3.13's transport __del__ detaches from the server and wakes wait_closed().
    got, expected = _here_and_on_the_stdlib(loop, _wait_closed_after_a_leaked_client)
    assert got == expected


def test_divergence_datagram_buffer_size_counts_payload_only(loop, loop_impl, tmp_dir) -> None:
    # CPython 3.13 counts len(data) + 8 per buffered datagram and takes off only
    # len(data) once sent; oxloop counts the payload both ways, as 3.11/3.12 do.
    from test_adv_transports import Recorder, dgram_pair, drain, fill, run

    header = 8 if loop_impl == 'asyncio' and sys.version_info >= (3, 13) else 0
    a, b = dgram_pair(tmp_dir)
    fill(a)

    async def main():
        pr = Recorder()
        tr, _ = await loop.create_datagram_endpoint(lambda: pr, sock=a)
        for _ in range(3):
            tr.sendto(b'x' * 100)
        size = tr.get_write_buffer_size()
        for _ in range(1000):
            if tr.get_write_buffer_size() <= 3 * header:
                break
            drain(b)
            await asyncio.sleep(0.001)
        after = tr.get_write_buffer_size()
        tr.close()
        return size, after

    size, after = run(loop, main())
    b.close()
    assert (size, after) == (3 * (100 + header), 3 * header)


def test_divergence_import_refused_with_the_gil_off(run_python) -> None:
    # A free-threaded build with PYTHON_GIL=0 keeps the GIL off although oxloop
    # declares gil_used; oxloop's state is GIL-guarded, so it refuses to import
    # (the stdlib loop runs). Simulated where the build has a GIL.
    code = """
import sys
sys._is_gil_enabled = lambda: False
try:
    import oxloop
except ImportError as exc:
    print('refused:', exc)
else:
    print('imported')
import asyncio
loop = asyncio.new_event_loop()
print(loop.run_until_complete(asyncio.sleep(0, 'stdlib runs')))
loop.close()
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('refused: oxloop needs the GIL')
    assert lines[1] == 'stdlib runs'


def test_loop_transports_mapping_behaves_as_asyncios(loop) -> None:
    """``loop._transports`` (asyncio's WeakValueDictionary; native on oxloop) as the
    stdlib's code uses it: set, get, item access, delete, membership, weak values."""

    class T:
        def is_closing(self) -> bool:
            return False

    m = loop._transports  # type: ignore[attr-defined]
    a, b = T(), T()
    m[1000] = a
    m[1001] = b
    assert m[1000] is a and m.get(1001) is b and m.get(1002) is None and m.get(1002, 'x') == 'x'
    assert 1000 in m and 1002 not in m
    del m[1001]
    assert 1001 not in m
    with pytest.raises(KeyError):
        del m[1001]
    with pytest.raises(KeyError):
        m[1002]
    del a
    gc.collect()
    assert 1000 not in m
    assert m.get(1000) is None
    with pytest.raises(TypeError):
        m[1003] = 1  # an int takes no weak reference


def test_a_closed_and_dropped_transport_leaves_loop_transports(loop) -> None:
    async def main() -> tuple[bool, bool]:
        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        fd = a.fileno()
        present = transport is loop._transports.get(fd)  # type: ignore[attr-defined]
        transport.close()
        await asyncio.sleep(0.01)
        del transport
        gc.collect()
        b.close()
        return present, fd in loop._transports  # type: ignore[attr-defined]

    assert loop.run_until_complete(main()) == (True, False)


async def _server_bookkeeping() -> list[tuple[str, int]]:
    """The server's client count (3.11/3.12 ``_active_count``, 3.13 ``_clients``) as
    connections come and go, and whether wait_closed() returns once the last goes."""
    loop = asyncio.get_running_loop()
    served: list[asyncio.Transport] = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            served.append(transport)  # type: ignore[arg-type]

    def count(server: asyncio.AbstractServer) -> int:
        if hasattr(server, '_clients'):
            return len(server._clients)  # type: ignore[attr-defined]
        return server._active_count  # type: ignore[attr-defined]

    server = await loop.create_server(Keep, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    log = [('start', count(server))]
    clients = [socket.create_connection(('127.0.0.1', port)) for _ in range(3)]
    for _ in range(100):
        if len(served) == 3:
            break
        await asyncio.sleep(0.01)
    log.append(('three', count(server)))
    served.pop().close()
    await asyncio.sleep(0.01)
    log.append(('one closed', count(server)))
    server.close()
    for t in served:
        t.close()
    try:
        await asyncio.wait_for(server.wait_closed(), 1.0)
        log.append(('wait_closed returns', count(server)))
    except TimeoutError:
        log.append(('wait_closed hangs', count(server)))
    for c in clients:
        c.close()
    return log


def test_server_client_count_as_the_stdlib(loop) -> None:
    got, expected = _here_and_on_the_stdlib(loop, _server_bookkeeping)
    assert got == expected
