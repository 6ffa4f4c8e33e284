"""Datagram endpoints: create_datagram_endpoint (local/remote addresses, family, reuse_port,
allow_broadcast, sock=, Unix datagram sockets) and the datagram transport API."""

import asyncio
import inspect
import logging
import os
import socket
from asyncio import selector_events

import pytest
from _net import LOST, MADE, DatagramRecorder, free_port, run

# Whether this version's stdlib sends empty datagrams (3.13+) or drops them.
SENDS_EMPTY = 'if not data:' not in inspect.getsource(selector_events._SelectorDatagramTransport.sendto)


class Echo(DatagramRecorder):
    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        self.transport.sendto(data.upper(), addr)


async def close_all(*transports):
    protos = [tr.get_protocol() for tr in transports]
    for tr in transports:
        tr.close()
    for proto in protos:
        await asyncio.wait_for(proto.lost, 5)


def test_udp_echo_roundtrip(loop):
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(Echo, local_addr=('127.0.0.1', 0))
        saddr = str_.get_extra_info('sockname')
        ctr, cproto = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=saddr)
        try:
            assert sproto.calls == [MADE]
            assert cproto.calls == [MADE]
            ctr.sendto(b'hello')
            ctr.sendto(b'world', saddr)
            got = await cproto.wait_datagrams(2)
            assert got == [(b'HELLO', saddr), (b'WORLD', saddr)]
            caddr = ctr.get_extra_info('sockname')
            assert sproto.datagrams == [(b'hello', caddr), (b'world', caddr)]
        finally:
            await close_all(ctr, str_)
        assert cproto.calls == [MADE, 'data', 'data', LOST]
        assert cproto.lost.result() is None

    run(loop, main())


def test_udp_extra_info(loop):
    async def main():
        str_, _ = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        saddr = str_.get_extra_info('sockname')
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=saddr)
        try:
            # CPython 3.11's selector datagram transport is not an asyncio.DatagramTransport.
            assert isinstance(str_, asyncio.BaseTransport)
            assert saddr[0] == '127.0.0.1'
            assert saddr[1] > 0
            assert str_.get_extra_info('peername') is None
            assert ctr.get_extra_info('peername') == saddr
            sock = ctr.get_extra_info('socket')
            assert sock.type == socket.SOCK_DGRAM
            assert sock.family == socket.AF_INET
            assert sock.getsockname() == ctr.get_extra_info('sockname')
            assert ctr.get_extra_info('nope', 42) == 42
            assert ctr.get_write_buffer_size() == 0
            assert not ctr.is_closing()
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_connected_sendto_checks_address(loop):
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        saddr = str_.get_extra_info('sockname')
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=saddr)
        try:
            with pytest.raises(ValueError, match=r'^Invalid address: must be None or '):
                ctr.sendto(b'x', ('127.0.0.1', saddr[1] + 1 if saddr[1] < 65535 else 1))
            with pytest.raises(TypeError, match="^data argument must be a bytes-like object, not 'str'$"):
                ctr.sendto('text')
            ctr.sendto(b'')  # sent since 3.13, dropped before
            ctr.sendto(bytearray(b'ba'))
            ctr.sendto(memoryview(b'mv'))
            await sproto.wait_datagrams(2)
            await asyncio.sleep(0.01)
            assert [d for d, _ in sproto.datagrams] == [b''] * SENDS_EMPTY + [b'ba', b'mv']
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_unconnected_sendto(loop):
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        saddr = str_.get_extra_info('sockname')
        ctr, cproto = await loop.create_datagram_endpoint(DatagramRecorder, family=socket.AF_INET)
        try:
            assert ctr.get_extra_info('peername') is None
            ctr.sendto(b'to', saddr)
            (data, caddr), *_ = await sproto.wait_datagrams(1)
            assert data == b'to'
            str_.sendto(b'fro', caddr)
            assert await cproto.wait_datagrams(1) == [(b'fro', saddr)]
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_ipv6(loop):
    async def main():
        str_, _ = await loop.create_datagram_endpoint(Echo, local_addr=('::1', 0), family=socket.AF_INET6)
        saddr = str_.get_extra_info('sockname')
        assert str_.get_extra_info('socket').family == socket.AF_INET6
        ctr, cproto = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=saddr[:2])
        try:
            ctr.sendto(b'six')
            ((data, addr),) = await cproto.wait_datagrams(1)
            assert data == b'SIX'
            assert addr[:2] == saddr[:2]
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_resolves_localhost(loop):
    async def main():
        str_, _ = await loop.create_datagram_endpoint(Echo, local_addr=('localhost', 0))
        port = str_.get_extra_info('sockname')[1]
        ctr, cproto = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=('localhost', port))
        try:
            assert ctr.get_extra_info('peername') == ('127.0.0.1', port)
            ctr.sendto(b'lh')
            assert (await cproto.wait_datagrams(1))[0][0] == b'LH'
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_reuse_port(loop):
    async def main():
        first, _ = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0), reuse_port=True)
        port = first.get_extra_info('sockname')[1]
        second, _ = await loop.create_datagram_endpoint(
            DatagramRecorder, local_addr=('127.0.0.1', port), reuse_port=True
        )
        try:
            for tr in (first, second):
                assert tr.get_extra_info('socket').getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            assert second.get_extra_info('sockname') == ('127.0.0.1', port)
            with pytest.raises(OSError):
                await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', port))
        finally:
            await close_all(first, second)

    run(loop, main())


def test_udp_reuse_address_is_not_accepted(loop):
    async def main():
        with pytest.raises(TypeError):
            await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0), reuse_address=True)

    run(loop, main())


def test_udp_allow_broadcast(loop):
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        saddr = str_.get_extra_info('sockname')
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=saddr, allow_broadcast=True)
        try:
            sock = ctr.get_extra_info('socket')
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
            # With allow_broadcast the socket is not connected, but sendto() defaults to remote_addr.
            assert ctr.get_extra_info('peername') is None
            ctr.sendto(b'bcast')
            assert (await sproto.wait_datagrams(1))[0][0] == b'bcast'
            with pytest.raises(ValueError, match=r'^Invalid address: must be None or '):
                ctr.sendto(b'x', ('127.0.0.1', 9))
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_sock(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(('127.0.0.1', 0))

    async def main():
        tr, proto = await loop.create_datagram_endpoint(DatagramRecorder, sock=sock)
        try:
            assert sock.gettimeout() == 0
            assert tr.get_extra_info('sockname') == sock.getsockname()
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                peer.bind(('127.0.0.1', 0))
                peer.sendto(b'raw', sock.getsockname())
                ((data, addr),) = await proto.wait_datagrams(1)
                assert (data, addr) == (b'raw', peer.getsockname())
            finally:
                peer.close()
        finally:
            await close_all(tr)
        assert sock.fileno() == -1

    try:
        run(loop, main())
    finally:
        sock.close()


def test_udp_argument_errors(loop):
    async def main():
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket()
        try:
            # 3.13 refuses stream sockets only, in other words.
            expected = (
                'A datagram socket'
                if 'SOCK_STREAM' in inspect.getsource(asyncio.BaseEventLoop.create_datagram_endpoint)
                else 'A UDP Socket'
            )
            with pytest.raises(ValueError, match=f'^{expected} was expected, got '):
                await loop.create_datagram_endpoint(DatagramRecorder, sock=tcp)
            with pytest.raises(ValueError) as info:
                await loop.create_datagram_endpoint(DatagramRecorder, sock=udp, local_addr=('127.0.0.1', 0))
            assert str(info.value) == (
                'socket modifier keyword arguments can not be used when sock is specified. '
                "(local_addr=('127.0.0.1', 0))"
            )
            with pytest.raises(ValueError, match=r'\(reuse_port=True\)$'):
                await loop.create_datagram_endpoint(DatagramRecorder, sock=udp, reuse_port=True)
            with pytest.raises(ValueError, match='^unexpected address family$'):
                await loop.create_datagram_endpoint(DatagramRecorder)
            with pytest.raises(TypeError, match='^2-tuple is expected$'):
                await loop.create_datagram_endpoint(DatagramRecorder, local_addr='127.0.0.1')
            with pytest.raises(TypeError, match='^string is expected$'):
                await loop.create_datagram_endpoint(
                    DatagramRecorder, family=socket.AF_UNIX, local_addr=('127.0.0.1', 0)
                )
        finally:
            udp.close()
            tcp.close()

    run(loop, main())


def test_udp_bind_in_use(loop):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(('127.0.0.1', 0))

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_datagram_endpoint(DatagramRecorder, local_addr=busy.getsockname())
        assert info.value.errno == 98

    try:
        run(loop, main())
    finally:
        busy.close()


def test_udp_unix_datagram(loop, tmp_dir):
    spath = os.path.join(tmp_dir, 'server')
    cpath = os.path.join(tmp_dir, 'client')

    async def main():
        str_, sproto = await loop.create_datagram_endpoint(Echo, local_addr=spath, family=socket.AF_UNIX)
        ctr, cproto = await loop.create_datagram_endpoint(
            DatagramRecorder, local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX
        )
        try:
            assert str_.get_extra_info('sockname') == spath
            assert ctr.get_extra_info('peername') == spath
            ctr.sendto(b'unix dgram')
            assert await cproto.wait_datagrams(1) == [(b'UNIX DGRAM', spath)]
            assert sproto.datagrams == [(b'unix dgram', cpath)]
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_unix_datagram_removes_stale_socket(loop, tmp_dir):
    spath = os.path.join(tmp_dir, 'stale')
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old.bind(spath)
    old.close()

    async def main():
        tr, proto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=spath, family=socket.AF_UNIX)
        try:
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                peer.sendto(b'hi', spath)
                assert (await proto.wait_datagrams(1))[0][0] == b'hi'
            finally:
                peer.close()
        finally:
            await close_all(tr)

    run(loop, main())


def test_udp_unix_datagram_sock(loop):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def main():
        tr, proto = await loop.create_datagram_endpoint(DatagramRecorder, sock=a)
        try:
            b.send(b'pair')
            assert (await proto.wait_datagrams(1))[0][0] == b'pair'
            assert tr.get_extra_info('socket').family == socket.AF_UNIX
        finally:
            await close_all(tr)

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_udp_connection_refused_to_error_received(loop):
    closed, port = free_port(type_=socket.SOCK_DGRAM)
    closed.close()

    async def main():
        tr, proto = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=('127.0.0.1', port))
        try:
            for _ in range(50):
                tr.sendto(b'anyone?')
                if proto.errors:
                    break
                await asyncio.sleep(0.02)
            assert proto.errors
            assert isinstance(proto.errors[0], ConnectionRefusedError)
            # error_received() does not close the endpoint.
            assert not tr.is_closing()
            assert not proto.lost.done()
        finally:
            await close_all(tr)
        assert proto.lost.result() is None

    run(loop, main())


def test_udp_close_and_abort(loop):
    async def main():
        a, pa = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        b, pb = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        a.close()
        assert a.is_closing()
        assert pa.calls == [MADE]
        b.abort()
        assert b.is_closing()
        assert await asyncio.wait_for(pa.lost, 5) is None
        assert await asyncio.wait_for(pb.lost, 5) is None
        a.close()
        await asyncio.sleep(0.01)
        assert pa.calls == [MADE, LOST]
        assert pb.calls == [MADE, LOST]

    run(loop, main())


def test_udp_send_after_close_warns_after_threshold(loop, caplog):
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        ctr, cproto = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=str_.get_extra_info('sockname'))
        ctr.close()
        await asyncio.wait_for(cproto.lost, 5)
        with caplog.at_level(logging.WARNING, logger='asyncio'):
            for _ in range(4):
                ctr.sendto(b'dropped')
            assert not [r for r in caplog.records if r.name == 'asyncio']
            ctr.sendto(b'dropped')
        await asyncio.sleep(0.02)
        assert sproto.datagrams == []
        await close_all(str_)

    run(loop, main())
    records = [r for r in caplog.records if r.name == 'asyncio']
    assert [r.getMessage() for r in records] == ['socket.send() raised exception.']
    assert records[0].levelno == logging.WARNING


def test_udp_datagram_protocol_methods_optional(loop):
    class Bare(asyncio.DatagramProtocol):
        pass

    async def main():
        str_, _ = await loop.create_datagram_endpoint(Bare, local_addr=('127.0.0.1', 0))
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=str_.get_extra_info('sockname'))
        ctr.sendto(b'ignored')
        await asyncio.sleep(0.02)
        str_.close()
        await close_all(ctr)
        await asyncio.sleep(0.01)

    run(loop, main())


def test_udp_large_datagram(loop):
    payload = os.urandom(60000)

    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=str_.get_extra_info('sockname'))
        try:
            ctr.sendto(payload)
            assert (await sproto.wait_datagrams(1))[0][0] == payload
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_many_peers_get_their_own_addresses(loop):
    # Each reply goes to the address its datagram came from, whichever peer sent last.
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(Echo, local_addr=('127.0.0.1', 0))
        saddr = str_.get_extra_info('sockname')
        clients = [await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0)) for _ in range(3)]
        try:
            for round_ in range(3):
                for i, (ctr, _) in enumerate(clients):
                    ctr.sendto(b'c%d r%d' % (i, round_), saddr)
            for i, (_ctr, cproto) in enumerate(clients):
                got = await cproto.wait_datagrams(3)
                assert [d for d, _ in got] == [b'C%d R%d' % (i, r) for r in range(3)]
                assert all(a == saddr for _, a in got)
            senders = {a for _, a in sproto.datagrams}
            assert senders == {ctr.get_extra_info('sockname') for ctr, _ in clients}
        finally:
            await close_all(str_, *(ctr for ctr, _ in clients))

    run(loop, main())


@pytest.mark.parametrize('kind', [bytearray, memoryview])
def test_udp_sendto_accepts_bytes_like(loop, kind):
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        try:
            ctr.sendto(kind(b'mutable'), str_.get_extra_info('sockname'))
            ctr.sendto(kind(b''), str_.get_extra_info('sockname'))  # empty: sent since 3.13
            got = await sproto.wait_datagrams(1)
            assert got[0][0] == b'mutable'
            await asyncio.sleep(0.05)
            assert [d for d, _ in sproto.datagrams] == [b'mutable'] + [b''] * SENDS_EMPTY
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_sendto_resolves_host_names(loop):
    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        try:
            ctr.sendto(b'by name', ('localhost', str_.get_extra_info('sockname')[1]))
            got = await sproto.wait_datagrams(1)
            assert got == [(b'by name', ctr.get_extra_info('sockname'))]
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_sendto_bad_address_is_a_fatal_error(loop):
    async def main():
        errors = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        ctr, cproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        ctr.sendto(b'x', 'not an address')
        exc = await asyncio.wait_for(cproto.lost, 5)
        assert isinstance(exc, TypeError)
        assert ctr.is_closing()
        assert [ctx['message'] for ctx in errors] == ['Fatal write error on datagram transport']
        assert errors[0]['exception'] is exc
        assert errors[0]['transport'] is ctr

    run(loop, main())


def test_udp_unbound_unix_sender_address(loop, tmp_dir):
    spath = os.path.join(tmp_dir, 'server')

    async def main():
        str_, sproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=spath, family=socket.AF_UNIX)
        anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            anon.sendto(b'anonymous', spath)
            got = await sproto.wait_datagrams(1)
            # What socket.recvfrom reports for an unbound sender.
            assert got == [(b'anonymous', '')] or got == [(b'anonymous', None)]
        finally:
            anon.close()
            await close_all(str_)

    run(loop, main())


def test_udp_pause_reading_in_connection_made(loop):
    # Reading starts after connection_made(); pausing there must hold it off.
    class Paused(DatagramRecorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        str_, sproto = await loop.create_datagram_endpoint(Paused, local_addr=('127.0.0.1', 0))
        ctr, _ = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=str_.get_extra_info('sockname'))
        try:
            assert not str_.is_reading()
            ctr.sendto(b'held')
            await asyncio.sleep(0.1)
            assert sproto.datagrams == []
            str_.resume_reading()
            assert await sproto.wait_datagrams(1) == [(b'held', ctr.get_extra_info('sockname'))]
        finally:
            await close_all(ctr, str_)

    run(loop, main())


def test_udp_callbacks_scheduled_by_datagram_received_run_before_the_next(loop):
    # asyncio delivers one datagram per iteration, so a callback scheduled in
    # datagram_received runs before the next datagram arrives to the protocol.
    order = []

    class Scheduler(DatagramRecorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            order.append(data)
            loop.call_soon(order.append, b'cb-' + data)

    async def main():
        str_, sproto = await loop.create_datagram_endpoint(Scheduler, local_addr=('127.0.0.1', 0))
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            str_.pause_reading()
            for i in range(4):
                raw.sendto(b'%d' % i, str_.get_extra_info('sockname'))
            await asyncio.sleep(0.05)  # all four are queued on the socket
            str_.resume_reading()
            await sproto.wait_datagrams(4)
            await asyncio.sleep(0)
            assert order == [x for i in range(4) for x in (b'%d' % i, b'cb-%d' % i)]
        finally:
            raw.close()
            await close_all(str_)

    run(loop, main())
