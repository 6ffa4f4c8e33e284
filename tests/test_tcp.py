"""TCP: create_connection (resolution, local_addr, sock=, family, errors), connect_accepted_socket,
and the protocol call sequence over a real loopback connection."""

import asyncio
import errno
import inspect
import socket
from asyncio import base_events

import pytest
from _net import DATA, EOF, LOST, MADE, Recorder, free_port, run, stream_pair, wait_until


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


async def echo_server(loop, host='127.0.0.1', **kw):
    protos = []

    def factory():
        p = Echo()
        protos.append(p)
        return p

    server = await loop.create_server(factory, host, 0, **kw)
    return server, protos


def test_tcp_create_connection_roundtrip_and_call_sequence(loop):
    async def main():
        server, sprotos = await echo_server(loop)
        async with server:
            host, port = server.sockets[0].getsockname()
            tr, proto = await loop.create_connection(Recorder, host, port)
            tr.write(b'hello ')
            tr.write(b'world')
            assert await proto.read(11) == b'hello world'
            tr.write_eof()
            # The echo server's eof_received returns None: it closes, so the client sees EOF.
            await asyncio.wait_for(proto.lost, 5)
            assert proto.calls == [MADE, DATA, EOF, LOST]
            assert proto.lost.result() is None
            await asyncio.wait_for(sprotos[0].lost, 5)
            assert sprotos[0].calls == [MADE, DATA, EOF, LOST]
            assert sprotos[0].data == b'hello world'

    run(loop, main())


def test_tcp_create_connection_returns_connected_pair(loop):
    made = []

    def factory():
        p = Recorder()
        made.append(p)
        return p

    async def main():
        server, _ = await echo_server(loop)
        async with server:
            tr, proto = await loop.create_connection(factory, *server.sockets[0].getsockname())
            assert made == [proto]
            # connection_made() has run before create_connection() returns.
            assert proto.calls == [MADE]
            assert proto.transport is tr
            assert isinstance(tr, asyncio.Transport)
            assert not tr.is_closing()
            tr.close()
            assert tr.is_closing()
            assert await asyncio.wait_for(proto.lost, 5) is None

    run(loop, main())


def test_tcp_create_connection_resolves_localhost(loop):
    async def main():
        server, _ = await echo_server(loop)
        async with server:
            port = server.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(Recorder, 'localhost', port)
            try:
                assert tr.get_extra_info('peername') == ('127.0.0.1', port)
                tr.write(b'ping')
                assert await proto.read(4) == b'ping'
            finally:
                tr.close()
                await proto.lost

    run(loop, main())


def test_tcp_create_connection_local_addr(loop):
    async def main():
        server, sprotos = await echo_server(loop)
        async with server:
            tr, proto = await loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), local_addr=('127.0.0.1', 0)
            )
            try:
                sockname = tr.get_extra_info('sockname')
                assert sockname[0] == '127.0.0.1'
                assert sockname[1] != 0
                await wait_until(lambda: sprotos and sprotos[0].transport is not None)
                assert sprotos[0].transport.get_extra_info('peername') == sockname
            finally:
                tr.close()
                await proto.lost

    run(loop, main())


def test_tcp_create_connection_local_addr_explicit_port(loop):
    async def main():
        server, _ = await echo_server(loop)
        async with server:
            s, port = free_port()
            s.close()
            tr, proto = await loop.create_connection(
                Recorder, *server.sockets[0].getsockname(), local_addr=('127.0.0.1', port)
            )
            try:
                assert tr.get_extra_info('sockname') == ('127.0.0.1', port)
            finally:
                tr.close()
                await proto.lost

    run(loop, main())


def test_tcp_create_connection_local_addr_in_use(loop):
    busy = socket.socket()
    busy.bind(('127.0.0.1', 0))
    busy.listen()
    laddr = busy.getsockname()

    async def main():
        server, _ = await echo_server(loop)
        async with server:
            with pytest.raises(OSError) as info:
                await loop.create_connection(Recorder, *server.sockets[0].getsockname(), local_addr=laddr)
            assert info.value.errno == errno.EADDRINUSE
            # 3.13 quotes str(exc) (with its "[errno N]"), earlier versions strerror.
            source = inspect.getsource(base_events)
            reason = str(OSError(errno.EADDRINUSE, 'Address already in use')).lower()
            if 'str(exc).lower()' not in source:
                reason = 'address already in use'
            assert str(info.value) == (
                f'[Errno {errno.EADDRINUSE}] error while attempting to bind on address {laddr!r}: {reason}'
            )

    try:
        run(loop, main())
    finally:
        busy.close()


def test_tcp_create_connection_local_addr_family_mismatch(loop):
    async def main():
        server, _ = await echo_server(loop)
        async with server:
            with pytest.raises(OSError) as info:
                await loop.create_connection(Recorder, *server.sockets[0].getsockname(), local_addr=('::1', 0))
            assert str(info.value) == f'no matching local address with family={socket.AF_INET!r} found'

    run(loop, main())


def test_tcp_create_connection_sock(loop):
    async def main():
        server, _ = await echo_server(loop)
        async with server:
            sock = socket.create_connection(server.sockets[0].getsockname())  # blocking
            tr, proto = await loop.create_connection(Recorder, sock=sock)
            assert sock.gettimeout() == 0  # asyncio makes it non-blocking
            assert tr.get_extra_info('sockname') == sock.getsockname()
            tr.write(b'via sock')
            assert await proto.read(8) == b'via sock'
            tr.close()
            await asyncio.wait_for(proto.lost, 5)
            # The transport owns the socket: closing it closes the socket.
            assert sock.fileno() == -1

    run(loop, main())


def test_tcp_create_connection_ipv6_family(loop):
    async def main():
        server, _ = await echo_server(loop, host='::1')
        async with server:
            port = server.sockets[0].getsockname()[1]
            tr, proto = await loop.create_connection(Recorder, '::1', port, family=socket.AF_INET6)
            try:
                assert tr.get_extra_info('socket').family == socket.AF_INET6
                assert tr.get_extra_info('peername')[:2] == ('::1', port)
                tr.write(b'six')
                assert await proto.read(3) == b'six'
            finally:
                tr.close()
                await proto.lost
            # An IPv6 literal cannot be resolved for AF_INET.
            with pytest.raises(socket.gaierror):
                await loop.create_connection(Recorder, '::1', port, family=socket.AF_INET)

    run(loop, main())


def test_tcp_create_connection_refused(loop):
    closed, port = free_port()

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(Recorder, '127.0.0.1', port)
        assert info.value.errno == errno.ECONNREFUSED
        assert str(info.value) == f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})"

    try:
        run(loop, main())
    finally:
        closed.close()


def _fake_resolver(loop, infos):
    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        assert host == 'multi.test'
        return infos

    loop.getaddrinfo = getaddrinfo


def test_tcp_create_connection_multiple_errors_combined(loop):
    # Two addresses that both refuse, with different messages: one combined OSError.
    s4, port = free_port()
    s6 = socket.socket(socket.AF_INET6)
    try:
        s6.bind(('::1', port))
    except OSError:
        s6.close()
        s6, _ = free_port(socket.AF_INET6)
    port6 = s6.getsockname()[1]
    _fake_resolver(
        loop,
        [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, '', ('127.0.0.1', port)),
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, '', ('::1', port6, 0, 0)),
        ],
    )

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_connection(Recorder, 'multi.test', port)
        assert type(info.value) is OSError
        assert info.value.errno is None
        assert str(info.value) == (
            f"Multiple exceptions: [Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port}), "
            f"[Errno {errno.ECONNREFUSED}] Connect call failed ('::1', {port6}, 0, 0)"
        )

    try:
        run(loop, main())
    finally:
        s4.close()
        s6.close()


def test_tcp_create_connection_multiple_identical_errors_raise_first(loop):
    closed, port = free_port()
    info = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, '', ('127.0.0.1', port))
    _fake_resolver(loop, [info, info])

    async def main():
        with pytest.raises(ConnectionRefusedError) as exc:
            await loop.create_connection(Recorder, 'multi.test', port)
        assert exc.value.errno == errno.ECONNREFUSED

    try:
        run(loop, main())
    finally:
        closed.close()


@pytest.mark.parametrize('extra', [{}, {'happy_eyeballs_delay': 0.05}], ids=['in-order', 'happy-eyeballs'])
def test_tcp_create_connection_tries_next_address(loop, extra):
    closed, bad_port = free_port()

    async def main():
        server, _ = await echo_server(loop)
        async with server:
            good = server.sockets[0].getsockname()
            _fake_resolver(
                loop,
                [
                    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, '', ('127.0.0.1', bad_port)),
                    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, '', good),
                ],
            )
            tr, proto = await loop.create_connection(Recorder, 'multi.test', good[1], **extra)
            try:
                assert tr.get_extra_info('peername') == good
            finally:
                tr.close()
                await proto.lost

    try:
        run(loop, main())
    finally:
        closed.close()


def test_tcp_create_connection_empty_resolution(loop):
    _fake_resolver(loop, [])

    async def main():
        with pytest.raises(OSError, match=r'^getaddrinfo\(\) returned empty list$'):
            await loop.create_connection(Recorder, 'multi.test', 80)

    run(loop, main())


def test_tcp_create_connection_argument_errors(loop):
    async def main():
        server, _ = await echo_server(loop)
        async with server:
            addr = server.sockets[0].getsockname()
            sock = socket.socket()
            udp = socket.socket(type=socket.SOCK_DGRAM)
            try:
                with pytest.raises(ValueError, match='^host/port and sock can not be specified at the same time$'):
                    await loop.create_connection(Recorder, *addr, sock=sock)
                with pytest.raises(ValueError, match='^host and port was not specified and no sock specified$'):
                    await loop.create_connection(Recorder)
                with pytest.raises(ValueError, match='^A Stream Socket was expected, got '):
                    await loop.create_connection(Recorder, sock=udp)
                with pytest.raises(ValueError, match='^server_hostname is only meaningful with ssl$'):
                    await loop.create_connection(Recorder, *addr, server_hostname='x')
                with pytest.raises(ValueError, match='^ssl_handshake_timeout is only meaningful with ssl$'):
                    await loop.create_connection(Recorder, *addr, ssl_handshake_timeout=1)
            finally:
                sock.close()
                udp.close()

    run(loop, main())


def test_tcp_transport_sets_nodelay(loop):
    async def main():
        async with stream_pair(loop, 'tcp') as (client, server):
            for proto in (client, server):
                sock = proto.transport.get_extra_info('socket')
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0

    run(loop, main())


def test_tcp_extra_info_names(loop):
    async def main():
        async with stream_pair(loop, 'tcp') as (client, server):
            ctr, str_ = client.transport, server.transport
            assert ctr.get_extra_info('peername') == str_.get_extra_info('sockname')
            assert ctr.get_extra_info('sockname') == str_.get_extra_info('peername')
            sock = ctr.get_extra_info('socket')
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_STREAM
            assert sock.getsockname() == ctr.get_extra_info('sockname')
            assert sock.getpeername() == ctr.get_extra_info('peername')
            assert sock.fileno() >= 0

    run(loop, main())


def test_tcp_connect_accepted_socket(loop):
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen()

    async def main():
        lsock.setblocking(False)
        cli = socket.socket()
        cli.setblocking(False)
        try:
            await loop.sock_connect(cli, lsock.getsockname())
            conn, _ = await loop.sock_accept(lsock)
            tr, proto = await loop.connect_accepted_socket(Recorder, conn)
            assert proto.calls == [MADE]
            assert tr.get_extra_info('peername') == cli.getsockname()
            await loop.sock_sendall(cli, b'accepted')
            assert await proto.read(8) == b'accepted'
            tr.write(b'back')
            assert await loop.sock_recv(cli, 10) == b'back'
            tr.close()
            assert await asyncio.wait_for(proto.lost, 5) is None
            assert conn.fileno() == -1
            assert await loop.sock_recv(cli, 10) == b''
        finally:
            cli.close()

    try:
        run(loop, main())
    finally:
        lsock.close()


def test_tcp_connect_accepted_socket_rejects_datagram_socket(loop):
    udp = socket.socket(type=socket.SOCK_DGRAM)

    async def main():
        with pytest.raises(ValueError, match='^A Stream Socket was expected, got '):
            await loop.connect_accepted_socket(Recorder, udp)

    try:
        run(loop, main())
    finally:
        udp.close()


def test_tcp_many_concurrent_connections(loop):
    async def main():
        server, sprotos = await echo_server(loop)
        async with server:
            addr = server.sockets[0].getsockname()

            async def one(i):
                tr, proto = await loop.create_connection(Recorder, *addr)
                payload = f'conn-{i}'.encode() * 100
                tr.write(payload)
                got = await proto.read(len(payload))
                tr.close()
                await proto.lost
                return got == payload

            assert all(await asyncio.gather(*(one(i) for i in range(50))))
            await wait_until(lambda: len(sprotos) == 50 and all(p.lost.done() for p in sprotos))

    run(loop, main())


def test_tcp_reads_of_changing_sizes_arrive_whole_and_in_order(loop):
    # oxloop reads small messages through a scratch buffer and large ones straight
    # into a fresh bytes, guessing from the last read: every switch between the two
    # must keep the bytes and their order, and no chunk exceeds asyncio's max_size.
    sizes = [10, 5000, 100, 200_000, 3, 70_000, 1, 4096, 4097, 600_000, 2]
    payload = b''.join(bytes([i % 251]) * n for i, n in enumerate(sizes))
    chunks: list[int] = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            chunks.append(len(data))
            self.transport.write(data)

    async def main():
        server = await loop.create_server(Echo, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        got = bytearray()
        for i, n in enumerate(sizes):
            writer.write(bytes([i % 251]) * n)
            await writer.drain()
            while len(got) < sum(sizes[: i + 1]):
                got += await reader.read(1 << 20)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return bytes(got)

    assert run(loop, main(), 20) == payload
    assert sum(chunks) == len(payload)
    assert max(chunks) <= 256 * 1024
