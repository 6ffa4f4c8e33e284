"""The loop's low-level socket coroutines: sock_recv, sock_recv_into, sock_recvfrom,
sock_recvfrom_into, sock_sendall, sock_sendto, sock_connect, sock_accept; the
non-blocking requirement in debug mode, and cancellation."""

import asyncio
import errno
import hashlib
import os
import shutil
import socket
import struct
import tempfile

import pytest
from _net import free_port, run


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
        s.bind(('127.0.0.1', 0))
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def listener():
    s = socket.socket()
    s.setblocking(False)
    s.bind(('127.0.0.1', 0))
    s.listen()
    yield s
    s.close()


def test_sock_recv_and_sendall(loop, sock_pair):
    a, b = sock_pair

    async def main():
        recv = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not recv.done()
        assert await loop.sock_sendall(b, b'payload') is None
        assert await recv == b'payload'
        b.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(a, 100) == b''

    run(loop, main())


def test_sock_recv_returns_at_most_n(loop, sock_pair):
    a, b = sock_pair

    async def main():
        await loop.sock_sendall(b, b'0123456789')
        assert await loop.sock_recv(a, 4) == b'0123'
        assert await loop.sock_recv(a, 100) == b'456789'

    run(loop, main())


def test_sock_recv_into(loop, sock_pair):
    a, b = sock_pair

    async def main():
        buf = bytearray(8)
        recv = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0.01)
        b.send(b'abc')
        assert await recv == 3
        assert buf[:3] == b'abc'
        view = memoryview(buf)[2:]
        b.send(b'0123456789')
        assert await loop.sock_recv_into(a, view) == 6
        assert buf == b'ab012345'
        b.close()
        assert await loop.sock_recv_into(a, buf) == 4
        assert buf[:4] == b'6789'
        assert await loop.sock_recv_into(a, buf) == 0

    run(loop, main())


def test_sock_sendall_large_payload(loop, sock_pair):
    a, b = sock_pair
    payload = os.urandom(16 * 1024 * 1024)

    async def reader():
        digest = hashlib.sha256()
        n = 0
        while n < len(payload):
            chunk = await loop.sock_recv(b, 256 * 1024)
            assert chunk
            n += len(chunk)
            digest.update(chunk)
        return n, digest.hexdigest()

    async def main():
        r = asyncio.ensure_future(reader())
        assert await loop.sock_sendall(a, memoryview(payload)) is None
        assert await r == (len(payload), hashlib.sha256(payload).hexdigest())

    run(loop, main())


def test_sock_sendall_empty(loop, sock_pair):
    a, b = sock_pair

    async def main():
        assert await loop.sock_sendall(a, b'') is None
        await loop.sock_sendall(a, bytearray(b'x'))
        assert await loop.sock_recv(b, 10) == b'x'

    run(loop, main())


def test_sock_recvfrom_and_sendto(loop, udp_pair):
    a, b = udp_pair

    async def main():
        recv = asyncio.ensure_future(loop.sock_recvfrom(a, 100))
        await asyncio.sleep(0.01)
        assert not recv.done()
        assert await loop.sock_sendto(b, b'datagram', a.getsockname()) == 8
        assert await recv == (b'datagram', b.getsockname())
        # A datagram longer than bufsize is truncated.
        await loop.sock_sendto(b, b'0123456789', a.getsockname())
        assert await loop.sock_recvfrom(a, 4) == (b'0123', b.getsockname())

    run(loop, main())


def test_sock_recvfrom_into(loop, udp_pair):
    a, b = udp_pair

    async def main():
        buf = bytearray(16)
        recv = asyncio.ensure_future(loop.sock_recvfrom_into(a, buf))
        await asyncio.sleep(0.01)
        await loop.sock_sendto(b, b'into', a.getsockname())
        assert await recv == (4, b.getsockname())
        assert buf[:4] == b'into'
        await loop.sock_sendto(b, b'abcdefgh', a.getsockname())
        assert await loop.sock_recvfrom_into(a, buf, 3) == (3, b.getsockname())
        assert buf[:4] == b'abco'

    run(loop, main())


def test_sock_connect_and_accept(loop, listener):
    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        try:
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            await asyncio.sleep(0.01)
            assert not accept.done()
            assert await loop.sock_connect(cli, listener.getsockname()) is None
            conn, addr = await accept
            try:
                assert addr == cli.getsockname()
                assert conn.gettimeout() == 0  # accepted sockets are non-blocking
                await loop.sock_sendall(cli, b'hi')
                assert await loop.sock_recv(conn, 10) == b'hi'
            finally:
                conn.close()
        finally:
            cli.close()

    run(loop, main())


def test_sock_connect_resolves_localhost(loop, listener):
    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        try:
            await loop.sock_connect(cli, ('localhost', listener.getsockname()[1]))
            assert cli.getpeername() == listener.getsockname()
            conn, _ = await loop.sock_accept(listener)
            conn.close()
        finally:
            cli.close()

    run(loop, main())


def test_sock_connect_refused(loop):
    closed, port = free_port()

    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        try:
            with pytest.raises(ConnectionRefusedError) as info:
                await loop.sock_connect(cli, ('127.0.0.1', port))
            assert info.value.errno == errno.ECONNREFUSED
        finally:
            cli.close()

    try:
        run(loop, main())
    finally:
        closed.close()


def test_sock_connect_unix(loop):
    d = tempfile.mkdtemp(prefix='oxl-', dir='/tmp')
    path = os.path.join(d, 's')
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    srv.setblocking(False)

    async def main():
        cli = socket.socket(socket.AF_UNIX)
        cli.setblocking(False)
        try:
            await loop.sock_connect(cli, path)
            conn, addr = await loop.sock_accept(srv)
            conn.close()
            assert addr == ''
            with pytest.raises(FileNotFoundError):
                other = socket.socket(socket.AF_UNIX)
                other.setblocking(False)
                try:
                    await loop.sock_connect(other, os.path.join(d, 'missing'))
                finally:
                    other.close()
        finally:
            cli.close()

    try:
        run(loop, main())
    finally:
        srv.close()
        shutil.rmtree(d, ignore_errors=True)


def test_sock_recv_connection_reset(loop, listener):
    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        await loop.sock_connect(cli, listener.getsockname())
        conn, _ = await loop.sock_accept(listener)
        try:
            recv = asyncio.ensure_future(loop.sock_recv(conn, 10))
            await asyncio.sleep(0.01)
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            cli.close()
            with pytest.raises(ConnectionResetError):
                await recv
        finally:
            conn.close()
            cli.close()

    run(loop, main())


def test_sock_debug_requires_non_blocking(loop, listener):
    loop.set_debug(True)
    a, b = socket.socketpair()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocking_listener = socket.socket()
    c = socket.socket()

    async def main():
        msg = '^the socket must be non-blocking$'
        with pytest.raises(ValueError, match=msg):
            await loop.sock_recv(a, 1)
        with pytest.raises(ValueError, match=msg):
            await loop.sock_recv_into(a, bytearray(1))
        with pytest.raises(ValueError, match=msg):
            await loop.sock_sendall(a, b'x')
        with pytest.raises(ValueError, match=msg):
            await loop.sock_recvfrom(u, 1)
        with pytest.raises(ValueError, match=msg):
            await loop.sock_recvfrom_into(u, bytearray(1))
        with pytest.raises(ValueError, match=msg):
            await loop.sock_sendto(u, b'x', ('127.0.0.1', 9))
        with pytest.raises(ValueError, match=msg):
            await loop.sock_connect(c, listener.getsockname())
        with pytest.raises(ValueError, match=msg):
            await loop.sock_accept(blocking_listener)

    try:
        run(loop, main())
    finally:
        for s in (a, b, u, blocking_listener, c):
            s.close()
    assert b.fileno() == -1


def test_sock_cancelled_recv_releases_the_fd(loop, sock_pair):
    a, b = sock_pair

    async def main():
        recv = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        recv.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recv
        # Nothing watches the fd any more: a reader can be added, and the data sent
        # after the cancellation is still there for the next sock_recv().
        b.send(b'after cancel')
        called = loop.create_future()
        loop.add_reader(a.fileno(), lambda: called.done() or called.set_result(True))
        assert await asyncio.wait_for(called, 5)
        assert loop.remove_reader(a.fileno()) is True
        assert await loop.sock_recv(a, 100) == b'after cancel'

    run(loop, main())


def test_sock_cancelled_recv_into_and_recvfrom(loop, udp_pair):
    a, b = udp_pair

    async def main():
        for coro in (loop.sock_recv_into(a, bytearray(10)), loop.sock_recvfrom(a, 10)):
            fut = asyncio.ensure_future(coro)
            await asyncio.sleep(0.01)
            fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fut
        await loop.sock_sendto(b, b'kept', a.getsockname())
        assert await loop.sock_recvfrom(a, 10) == (b'kept', b.getsockname())

    run(loop, main())


def test_sock_cancelled_sendall_releases_the_fd(loop, sock_pair):
    a, b = sock_pair

    async def main():
        send = asyncio.ensure_future(loop.sock_sendall(a, b'x' * (16 * 1024 * 1024)))
        await asyncio.sleep(0.02)
        assert not send.done()  # nobody reads: the kernel buffers are full
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send
        called = loop.create_future()
        # Drain the peer so that the socket becomes writable again.
        while True:
            try:
                if not b.recv(1 << 20):
                    break
            except BlockingIOError:
                break
        loop.add_writer(a.fileno(), lambda: called.done() or called.set_result(True))
        assert await asyncio.wait_for(called, 5)
        assert loop.remove_writer(a.fileno()) is True

    run(loop, main())


def test_sock_cancelled_accept(loop, listener):
    async def main():
        acc = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0.01)
        acc.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acc
        cli = socket.socket()
        cli.setblocking(False)
        try:
            await loop.sock_connect(cli, listener.getsockname())
            conn, addr = await asyncio.wait_for(loop.sock_accept(listener), 5)
            conn.close()
            assert addr == cli.getsockname()
        finally:
            cli.close()

    run(loop, main())


def test_sock_cancelled_connect(loop, listener):
    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        try:
            fut = asyncio.ensure_future(loop.sock_connect(cli, listener.getsockname()))
            fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fut
            # The fd is not left watched.
            called = loop.create_future()
            loop.add_writer(cli.fileno(), lambda: called.done() or called.set_result(True))
            await asyncio.wait_for(called, 5)
            assert loop.remove_writer(cli.fileno()) is True
        finally:
            cli.close()

    run(loop, main())


def test_sock_wait_for_timeout_on_recv(loop, sock_pair):
    a, b = sock_pair

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 10), 0.02)
        b.send(b'late')
        assert await loop.sock_recv(a, 10) == b'late'

    run(loop, main())


def test_sock_methods_are_coroutines(loop, sock_pair):
    a, b = sock_pair

    async def main():
        b.send(b'xy')
        coro = loop.sock_recv(a, 1)
        assert asyncio.iscoroutine(coro)
        assert await asyncio.create_task(coro) == b'x'
        assert await asyncio.wait_for(loop.sock_recv(a, 5), 5) == b'y'

    run(loop, main())


def test_sock_recv_argument_errors_are_the_socket_modules(loop, sock_pair):
    a, b = sock_pair

    async def main():
        with pytest.raises(ValueError, match='negative buffersize in recv'):
            await loop.sock_recv(a, -1)
        with pytest.raises(TypeError):
            await loop.sock_recv(a, 'ten')
        with pytest.raises(TypeError):
            await loop.sock_sendall(a, 'text')
        with pytest.raises(TypeError):
            await loop.sock_recv_into(a, b'read-only')
        b.send(b'z')
        assert await loop.sock_recv(a, 0) == b''

    run(loop, main())


def test_sock_methods_on_a_closed_socket(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        a.close()
        b.close()
        for call in (lambda: loop.sock_recv(a, 1), lambda: loop.sock_sendall(a, b'x')):
            with pytest.raises(OSError) as info:
                await call()
            assert info.value.errno == errno.EBADF

    run(loop, main())


def test_sock_sendall_accepts_bytes_like(loop, sock_pair):
    a, b = sock_pair

    async def main():
        await loop.sock_sendall(a, bytearray(b'ab'))
        await loop.sock_sendall(a, memoryview(b'cd'))
        assert await loop.sock_recv(b, 10) == b'abcd'

    run(loop, main())


def test_sock_refuses_ssl_sockets(loop):
    ssl = pytest.importorskip('ssl')
    wrapped = ssl.SSLSocket.__new__(ssl.SSLSocket)  # the type check happens before any I/O

    async def main():
        with pytest.raises(TypeError, match='Socket cannot be of type SSLSocket'):
            await loop.sock_recv(wrapped, 1)
        with pytest.raises(TypeError, match='Socket cannot be of type SSLSocket'):
            await loop.sock_sendall(wrapped, b'x')

    run(loop, main())


def test_sock_recv_on_a_transport_socket_is_refused(loop):
    async def main():
        srv = await loop.create_server(asyncio.Protocol, '127.0.0.1', 0)
        tr, _ = await loop.create_connection(asyncio.Protocol, *srv.sockets[0].getsockname())
        sock = tr.get_extra_info('socket')._sock
        try:
            with pytest.raises(RuntimeError, match=r'File descriptor \d+ is used by transport'):
                await loop.sock_recv(sock, 1)
        finally:
            tr.close()
            srv.close()
            await srv.wait_closed()

    run(loop, main())
