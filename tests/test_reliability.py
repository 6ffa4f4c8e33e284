"""Reliability: no fd or memory growth over many connections, large transfers arrive
intact, peer resets, half-close both ways, protocol errors, writes after close, and
closing a loop that still has live transports and servers."""

import asyncio
import gc
import hashlib
import logging
import os
import socket
import struct
import warnings
from typing import ClassVar

import pytest
from _net import DATA, EOF, LOST, MADE, PAUSE, RESUME, Recorder, capture_errors, open_fds, run, stream_pair, wait_until

MiB = 1024 * 1024


def rss() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


# ----- many connections ------------------------------------------------------------


class Closer(asyncio.Protocol):
    """Server side: closes on EOF (eof_received returns None) and counts the losses."""

    lost = 0
    errors: ClassVar[list] = []

    def connection_lost(self, exc):
        type(self).lost += 1
        if exc is not None:
            type(self).errors.append(exc)


class Client(asyncio.Protocol):
    def __init__(self):
        self.done = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.done.set_result(exc)


def test_reliability_10k_connect_close_cycles_leak_nothing(loop_factory):
    fds_before = open_fds()
    loop = loop_factory()

    class Counting(Closer):
        lost = 0
        errors: ClassVar[list] = []

    async def cycles(addr, n, concurrency=20):
        async def worker(k):
            for _ in range(k):
                tr, proto = await loop.create_connection(Client, *addr)
                tr.close()
                assert await proto.done is None

        start = Counting.lost
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
        await wait_until(lambda: Counting.lost - start == n, timeout=10)

    async def main():
        server = await loop.create_server(Counting, '127.0.0.1', 0)
        addr = server.sockets[0].getsockname()
        await cycles(addr, 1000)  # warm-up: allocator pools, caches
        gc.collect()
        fds_mid = open_fds()
        rss_mid = rss()
        await cycles(addr, 10_000)
        gc.collect()
        assert open_fds() == fds_mid
        growth = rss() - rss_mid
        assert growth < 8 * MiB, f'RSS grew by {growth / MiB:.1f} MiB over 10,000 connections'
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=45)
    assert Counting.errors == []
    loop.close()
    gc.collect()
    assert open_fds() == fds_before


def test_reliability_unix_connect_close_cycles_leak_nothing(loop_factory, path):
    fds_before = open_fds()
    loop = loop_factory()

    class Counting(Closer):
        lost = 0
        errors: ClassVar[list] = []

    async def main():
        server = await loop.create_unix_server(Counting, path)

        async def worker(k):
            for _ in range(k):
                tr, proto = await loop.create_unix_connection(Client, path)
                tr.write(b'x')
                tr.close()
                assert await proto.done is None

        await asyncio.gather(*(worker(100) for _ in range(20)))
        await wait_until(lambda: Counting.lost == 2000, timeout=10)
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)
    loop.close()
    gc.collect()
    assert open_fds() == fds_before


# ----- large transfers --------------------------------------------------------------


class Sink(Recorder):
    def __init__(self, eof_result=None):
        super().__init__(eof_result)
        self.count = 0
        self.digest = hashlib.sha256()

    def data_received(self, data):
        self._note(DATA)
        self.count += len(data)
        self.digest.update(data)


class Source(Recorder):
    """Writes while not paused; waits for resume_writing() otherwise."""

    def __init__(self):
        super().__init__()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.pauses = 0

    def pause_writing(self):
        super().pause_writing()
        self.pauses += 1
        self.can_write.clear()

    def resume_writing(self):
        super().resume_writing()
        self.can_write.set()

    async def send(self, total, chunk_size=256 * 1024):
        digest = hashlib.sha256()
        block = os.urandom(MiB)
        sent = 0
        i = 0
        while sent < total:
            if not self.can_write.is_set():
                await asyncio.wait_for(self.can_write.wait(), 10)
            # Vary the chunk so that reordering or duplication shows in the checksum.
            off = (i * 4099) % (len(block) - chunk_size)
            chunk = block[off : off + chunk_size - (i % 7)]
            chunk = chunk[: total - sent]
            self.transport.write(chunk)
            digest.update(chunk)
            sent += len(chunk)
            i += 1
        return digest.hexdigest()


def test_reliability_64mib_stream_intact(loop, kind, path):
    total = 64 * MiB

    async def main():
        async with stream_pair(loop, kind, path, client=Source, server=Sink) as (client, server):
            expected = await client.send(total)
            client.transport.write_eof()
            await asyncio.wait_for(server.eof, 20)
            assert server.count == total
            assert server.digest.hexdigest() == expected
            assert client.pauses >= 1  # flow control was exercised
            assert client.calls.count(LOST) == 0

    run(loop, main(), timeout=50)


def test_reliability_64mib_pipe_intact(loop):
    total = 64 * MiB
    r, w = os.pipe()
    rf = open(r, 'rb', buffering=0)  # noqa: SIM115
    wf = open(w, 'wb', buffering=0)  # noqa: SIM115

    async def main():
        _, sink = await loop.connect_read_pipe(Sink, rf)
        wtr, source = await loop.connect_write_pipe(Source, wf)
        expected = await source.send(total)
        wtr.close()
        assert await asyncio.wait_for(sink.lost, 20) is None
        assert await asyncio.wait_for(source.lost, 5) is None
        assert sink.count == total
        assert sink.digest.hexdigest() == expected
        assert source.pauses >= 1
        assert sink.calls == [MADE, DATA, EOF, LOST]

    try:
        run(loop, main(), timeout=50)
    finally:
        rf.close()
        wf.close()


# ----- resets and half-close ---------------------------------------------------------


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    sock.close()


def test_reliability_peer_reset_server_side(loop):
    contexts = capture_errors(loop)
    accepted = []

    def factory():
        p = Recorder()
        accepted.append(p)
        return p

    async def main():
        async with await loop.create_server(factory, '127.0.0.1', 0) as server:
            cli = socket.socket()
            cli.setblocking(False)
            try:
                await loop.sock_connect(cli, server.sockets[0].getsockname())
                await wait_until(lambda: accepted and accepted[0].transport is not None)
                await loop.sock_sendall(cli, b'before reset')
                assert await accepted[0].read(12) == b'before reset'
            finally:
                _reset(cli)
            exc = await asyncio.wait_for(accepted[0].lost, 5)
            assert isinstance(exc, ConnectionResetError)
            assert accepted[0].calls == [MADE, DATA, LOST]
            assert accepted[0].transport.is_closing()

    run(loop, main())
    assert contexts == []  # an OSError is not reported to the exception handler


def test_reliability_peer_reset_client_side(loop):
    contexts = capture_errors(loop)
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen()
    lsock.setblocking(False)

    async def main():
        _, proto = await loop.create_connection(Recorder, *lsock.getsockname())
        conn, _ = await loop.sock_accept(lsock)
        _reset(conn)
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, ConnectionResetError)
        assert proto.calls == [MADE, LOST]

    try:
        run(loop, main())
    finally:
        lsock.close()
    assert contexts == []


def test_reliability_peer_reset_while_writing(loop):
    contexts = capture_errors(loop)
    lsock = socket.socket()
    lsock.bind(('127.0.0.1', 0))
    lsock.listen()
    lsock.setblocking(False)

    async def main():
        tr, proto = await loop.create_connection(Recorder, *lsock.getsockname())
        conn, _ = await loop.sock_accept(lsock)
        tr.write(b'x' * (8 * MiB))
        assert tr.get_write_buffer_size() > 0
        _reset(conn)
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
        assert proto.calls[0] == MADE
        assert proto.calls[-1] == LOST
        assert proto.calls.count(LOST) == 1
        assert tr.get_write_buffer_size() == 0

    try:
        run(loop, main())
    finally:
        lsock.close()
    assert contexts == []


def test_reliability_half_close_client_eof_server_keeps_writing(loop, kind, path):
    reply = os.urandom(4 * MiB)

    async def main():
        async with stream_pair(loop, kind, path, server=lambda: Recorder(eof_result=True)) as (client, server):
            client.transport.write(b'request')
            client.transport.write_eof()
            await asyncio.wait_for(server.eof, 5)
            assert server.data == b'request'
            for i in range(0, len(reply), 100_000):
                server.transport.write(reply[i : i + 100_000])
                await asyncio.sleep(0)
            server.transport.close()
            assert await asyncio.wait_for(client.lost, 10) is None
            assert client.data == reply
            assert client.calls == [MADE, DATA, EOF, LOST]
            assert await asyncio.wait_for(server.lost, 5) is None
            assert server.calls == [MADE, DATA, EOF, LOST]

    run(loop, main())


def test_reliability_half_close_server_eof_client_keeps_writing(loop, kind, path):
    request = os.urandom(4 * MiB)

    async def main():
        async with stream_pair(loop, kind, path, client=lambda: Recorder(eof_result=True)) as (client, server):
            server.transport.write(b'greeting')
            server.transport.write_eof()
            await asyncio.wait_for(client.eof, 5)
            assert client.data == b'greeting'
            assert not client.transport.is_closing()
            client.transport.write(request)
            client.transport.write_eof()
            await asyncio.wait_for(server.eof, 10)
            assert server.data == request
            # The server returned None from eof_received: it closes. The client stopped
            # reading at its EOF, so it stays open until it closes itself.
            assert await asyncio.wait_for(server.lost, 5) is None
            await asyncio.sleep(0.02)
            assert not client.lost.done()
            assert not client.transport.is_closing()
            client.transport.close()
            assert await asyncio.wait_for(client.lost, 5) is None
            assert [c for c in client.calls if c not in (PAUSE, RESUME)] == [MADE, DATA, EOF, LOST]

    run(loop, main())


# ----- protocol errors and writes after close -------------------------------------


def test_reliability_data_received_error(loop, kind, path):
    contexts = capture_errors(loop)
    boom = ZeroDivisionError('boom')

    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise boom

    async def main():
        async with stream_pair(loop, kind, path, server=Failing) as (client, server):
            client.transport.write(b'trigger')
            assert await asyncio.wait_for(server.lost, 5) is boom
            assert server.calls == [MADE, DATA, LOST]
            assert server.transport.is_closing()
            # The failing side is closed; its peer sees EOF.
            assert await asyncio.wait_for(client.lost, 5) is None
            assert client.calls == [MADE, EOF, LOST]
            assert len(contexts) == 1
            ctx = contexts[0]
            assert ctx['message'] == 'Fatal error: protocol.data_received() call failed.'
            assert ctx['exception'] is boom
            assert ctx['transport'] is server.transport
            assert ctx['protocol'] is server

    run(loop, main())


def test_reliability_data_received_error_drops_pending_writes(loop, kind, path):
    contexts = capture_errors(loop)

    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(b'y' * (8 * MiB))
            raise ValueError('late')

    async def main():
        async with stream_pair(loop, kind, path, server=Failing) as (client, server):
            client.transport.pause_reading()
            client.transport.write(b'go')
            exc = await asyncio.wait_for(server.lost, 5)
            assert isinstance(exc, ValueError)
            assert server.transport.get_write_buffer_size() == 0
            client.transport.resume_reading()
            await asyncio.wait_for(client.lost, 5)
            assert len(client.data) < 8 * MiB

    run(loop, main())
    assert len(contexts) == 1


def test_reliability_writes_after_close_dropped_and_logged(loop, kind, path, caplog):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = client.transport
            tr.write(b'before')
            assert await server.read(6) == b'before'
            tr.close()
            with caplog.at_level(logging.WARNING, logger='asyncio'):
                for _ in range(4):
                    tr.write(b'dropped')
                assert not [r for r in caplog.records if r.name == 'asyncio']
                tr.write(b'dropped')  # the 5th write after close logs
                assert [r.getMessage() for r in caplog.records if r.name == 'asyncio'] == [
                    'socket.send() raised exception.'
                ]
                tr.write(b'dropped')
                tr.write(b'dropped')
            assert await asyncio.wait_for(client.lost, 5) is None
            await asyncio.wait_for(server.lost, 5)
            assert server.data == b'before'
            assert tr.get_write_buffer_size() == 0

    run(loop, main())
    records = [r for r in caplog.records if r.name == 'asyncio']
    assert [r.getMessage() for r in records] == ['socket.send() raised exception.'] * 3
    assert all(r.levelno == logging.WARNING for r in records)


def test_reliability_writes_after_connection_lost_dropped(loop, kind, path, caplog):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            server.transport.close()
            await asyncio.wait_for(client.lost, 5)
            with caplog.at_level(logging.WARNING, logger='asyncio'):
                for _ in range(6):
                    client.transport.write(b'to nobody')
            assert client.calls == [MADE, EOF, LOST]

    run(loop, main())
    records = [r for r in caplog.records if r.name == 'asyncio']
    assert [r.getMessage() for r in records] == ['socket.send() raised exception.'] * 2


# ----- closing a loop with live transports -----------------------------------------


def test_reliability_loop_close_with_live_transports_leaks_nothing(loop_impl, path):
    fds_before = open_fds()
    # A loop of our own, dropped below: since 3.13 the stdlib loop keeps its Unix
    # servers' sockets (_unix_server_sockets) for as long as it lives.
    if loop_impl == 'oxloop':
        import oxloop

        loop = oxloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    keep = {}

    async def main(rf, wf):
        tcp = await loop.create_server(Recorder, '127.0.0.1', 0)
        unix = await loop.create_unix_server(Recorder, path)
        transports = []
        for _ in range(3):
            transports.append((await loop.create_connection(Recorder, *tcp.sockets[0].getsockname()))[0])
            transports.append((await loop.create_unix_connection(Recorder, path))[0])
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0))
        rpipe, _ = await loop.connect_read_pipe(Recorder, rf)
        wpipe, _ = await loop.connect_write_pipe(Recorder, wf)
        transports[0].write(b'x' * (8 * MiB))  # one with a pending write buffer
        await asyncio.sleep(0.01)
        keep['objs'] = [tcp, unix, udp, rpipe, wpipe, *transports]

    r, w = os.pipe()
    # The pipe files are left to the transports.
    run(loop, main(open(r, 'rb', buffering=0), open(w, 'wb', buffering=0)))  # noqa: SIM115
    assert len(open_fds()) > len(fds_before)
    loop.close()
    loop = None  # (the cell main() closes over: drop the loop)

    def release():
        keep.clear()
        gc.collect()

    with warnings.catch_warnings():
        # The warnings recorded below hold their sources (a server's transports, and
        # through them its sockets) until they are dropped: those warn then.
        warnings.simplefilter('ignore', ResourceWarning)
        with pytest.warns(ResourceWarning):
            release()
        gc.collect()
    assert open_fds() == fds_before


def test_reliability_loop_close_after_closing_everything(loop_factory):
    fds_before = open_fds()
    loop = loop_factory()

    async def main():
        async with await loop.create_server(Recorder, '127.0.0.1', 0) as server:
            protos = []
            for _ in range(5):
                _, proto = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
                protos.append(proto)
            for p in protos:
                p.transport.close()
            for p in protos:
                await asyncio.wait_for(p.lost, 5)

    run(loop, main())
    loop.close()
    gc.collect()
    assert open_fds() == fds_before


class BackpressureEcho(asyncio.Protocol):
    """Echoes everything; stops reading while its own writes are paused (the proxy pattern)."""

    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class SourceSink(Source):
    """A Source that also hashes what comes back."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.digest = hashlib.sha256()

    def data_received(self, data):
        self._note(DATA)
        self.count += len(data)
        self.digest.update(data)


def test_reliability_echo_with_backpressure_both_ways(loop, kind, path):
    total = 32 * MiB

    async def main():
        async with stream_pair(loop, kind, path, client=SourceSink, server=BackpressureEcho) as (client, server):
            expected = await client.send(total)
            await wait_until(lambda: client.count == total, timeout=20)
            assert client.digest.hexdigest() == expected
            assert client.pauses >= 1
            assert not server.lost.done()

    run(loop, main(), timeout=40)
