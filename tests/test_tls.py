"""TLS: certificate and hostname verification, ALPN, SNI, client certificates, bulk transfer
under flow control, close_notify ordering and truncation, start_tls (with read-ahead),
handshake and shutdown timeouts, garbage instead of TLS records, many connections, and the
TLS transport's API — each a real exchange over loopback (or a Unix socket), on oxloop and
on the stdlib loop.

The peer is either the loop under test itself, or a hand-driven TLS endpoint (``_tls.HandPeer``,
``SSLObject`` over ``MemoryBIO`` on a blocking socket in a thread) where a test needs a peer
that misbehaves on purpose (truncates, stays silent, sends junk between records).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import ssl
import time

import pytest
from _net import DATA, EOF, LOST, MADE, Recorder, capture_errors, open_fds, run, wait_until
from _tls import (
    CA,
    OTHER_CA,
    PEER_TIMEOUT,
    HandPeer,
    client_context,
    in_thread,
    server_context,
    subject_cn,
)

MiB = 1 << 20


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


async def tls_server(loop, factory=Recorder, ctx=None, **kw):
    """A TLS server on 127.0.0.1; returns (server, the protocols it made, (host, port))."""
    protos = []

    def make():
        p = factory()
        protos.append(p)
        return p

    server = await loop.create_server(make, '127.0.0.1', 0, ssl=ctx or server_context(), **kw)
    return server, protos, server.sockets[0].getsockname()[:2]


async def close_all(*protos):
    """Close every transport still open and wait for each connection_lost."""
    for p in protos:
        if p.transport is not None and not p.transport.is_closing():
            p.transport.close()
    for p in protos:
        if p.transport is not None:
            await asyncio.wait_for(asyncio.shield(p.lost), 5)


def listener(family=socket.AF_INET, path=None) -> socket.socket:
    """A listening blocking socket for a hand-driven peer (127.0.0.1, or ``path``)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(path if family == socket.AF_UNIX else ('127.0.0.1', 0))
    s.listen(16)
    s.settimeout(PEER_TIMEOUT)
    return s


def hand_server(lsock: socket.socket, script, ctx=None, handshake: bool = True):
    """Accept one connection on ``lsock`` as a hand-driven TLS server, complete the
    handshake, run ``script(peer)`` and close the raw socket; return the script's result.
    Blocking: run it with ``in_thread``."""
    conn, _ = lsock.accept()
    peer = HandPeer(conn, ctx or server_context(), server_side=True)
    try:
        if handshake:
            peer.handshake()
        return script(peer)
    finally:
        peer.close()


def recv_until_eof(sock: socket.socket) -> bytes:
    """Raw bytes until EOF (or a reset) on a blocking socket."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b''.join(chunks)


# --- 1. verification --------------------------------------------------------------------------


@pytest.mark.parametrize('api', ['create_connection', 'open_connection'])
@pytest.mark.parametrize(
    ('ca', 'hostname', 'verify_code'),
    [(OTHER_CA, 'localhost', 20), (CA, 'wrong.example', 62)],
    ids=['wrong_ca', 'wrong_hostname'],
)
def test_tls_verification_failure_raises(loop, api, ca, hostname, verify_code):
    # 20: X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY; 62: X509_V_ERR_HOSTNAME_MISMATCH.
    async def main():
        server, sprotos, addr = await tls_server(loop)
        made = []

        def factory():
            p = Recorder()
            made.append(p)
            return p

        async with server:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                if api == 'create_connection':
                    await loop.create_connection(factory, *addr, ssl=client_context(ca=ca), server_hostname=hostname)
                else:
                    await asyncio.open_connection(*addr, ssl=client_context(ca=ca), server_hostname=hostname)
            assert info.value.verify_code == verify_code
            assert info.value.reason == 'CERTIFICATE_VERIFY_FAILED'
            if hostname == 'wrong.example':
                assert "certificate is not valid for 'wrong.example'" in info.value.verify_message
            # The client protocol never saw a connection.
            assert all(p.calls == [] for p in made)
            # The server's protocol was made for the connection, never connected.
            await wait_until(lambda: len(sprotos) == 1)
            await asyncio.sleep(0.05)
            assert sprotos[0].calls == []

    run(loop, main())


@pytest.mark.parametrize(
    ('host', 'hostname', 'sni'),
    [('127.0.0.1', 'localhost', 'localhost'), ('127.0.0.1', None, None), ('localhost', None, 'localhost')],
    ids=['explicit_hostname', 'ip_host_as_hostname', 'name_host_as_hostname'],
)
def test_tls_right_ca_and_hostname_accepted(loop, host, hostname, sni):
    # Without server_hostname, the host is checked against the certificate: 127.0.0.1 by
    # its IP SAN (an IP address is not sent as SNI), localhost by its DNS SAN.
    seen = []

    def sni_callback(sslobj, name, ctx):
        seen.append(name)

    async def main():
        sctx = server_context()
        sctx.sni_callback = sni_callback
        server, sprotos, (_, port) = await tls_server(loop, Echo, sctx)
        async with server:
            kw = {} if hostname is None else {'server_hostname': hostname}
            tr, proto = await loop.create_connection(Recorder, host, port, ssl=client_context(), **kw)
            try:
                tr.write(b'ping')
                assert await proto.read(4) == b'ping'
                assert subject_cn(tr.get_extra_info('peercert')) == 'localhost'
                assert seen == [sni]
            finally:
                await close_all(proto, *sprotos)

    run(loop, main())


@pytest.mark.parametrize('debug', [False, True], ids=['nodebug', 'debug'])
def test_tls_refused_handshake_server_side(loop, debug):
    # A client that refuses the server's certificate closes the connection during the
    # handshake: the server's protocol is made but never sees connection_made or
    # connection_lost; the error reaches the exception handler only in debug mode, as
    # 'Error on transport creation for incoming connection' (the stdlib loop's client
    # closes without sending its alert, so the server sees a reset; an alert would make
    # it an SSLError).
    loop.set_debug(debug)
    errors = capture_errors(loop)

    async def main():
        server, sprotos, addr = await tls_server(loop)
        async with server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(Recorder, *addr, ssl=client_context(ca=OTHER_CA), server_hostname='localhost')
            if debug:
                await wait_until(lambda: errors)
            else:
                await asyncio.sleep(0.2)
            assert len(sprotos) == 1
            assert sprotos[0].calls == []
        return errors

    errors = run(loop, main())
    if debug:
        assert len(errors) == 1, errors
        assert errors[0]['message'] == 'Error on transport creation for incoming connection'
        assert isinstance(errors[0]['exception'], (ConnectionResetError, ssl.SSLError))
    else:
        assert errors == []


# --- 2. ALPN and SNI ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('client_alpn', 'server_alpn', 'selected'),
    [(['h2', 'http/1.1'], ['spdy/3', 'http/1.1', 'h2'], 'http/1.1'), (['spdy/1'], ['h2'], None), (['h2'], None, None)],
    ids=['negotiated', 'no_overlap', 'server_without_alpn'],
)
def test_tls_alpn(loop, client_alpn, server_alpn, selected):
    # The server's preference wins (OpenSSL's server-side selection).
    async def main():
        server, sprotos, addr = await tls_server(loop, ctx=server_context(alpn=server_alpn))
        async with server:
            tr, proto = await loop.create_connection(
                Recorder, *addr, ssl=client_context(alpn=client_alpn), server_hostname='localhost'
            )
            try:
                await wait_until(lambda: sprotos and sprotos[0].transport is not None)
                assert tr.get_extra_info('ssl_object').selected_alpn_protocol() == selected
                assert sprotos[0].transport.get_extra_info('ssl_object').selected_alpn_protocol() == selected
            finally:
                await close_all(proto, *sprotos)

    run(loop, main())


def test_tls_sni_callback_sees_server_hostname_and_can_switch_context(loop):
    # The server's sni_callback sees the name the client set, and the context it installs
    # (here one that negotiates ALPN) is the one the handshake uses.
    seen = []
    alt = server_context(alpn=['h2'])

    def sni_callback(sslobj, name, ctx):
        seen.append((name, sslobj.server_side))
        if name == 'alt.localhost':
            sslobj.context = alt

    async def main():
        sctx = server_context()
        sctx.sni_callback = sni_callback
        server, sprotos, addr = await tls_server(loop, ctx=sctx)
        async with server:
            cctx = client_context(alpn=['h2'])
            cctx.check_hostname = False  # the certificate is for localhost
            for name, alpn in [('localhost', None), ('alt.localhost', 'h2')]:
                tr, proto = await loop.create_connection(Recorder, *addr, ssl=cctx, server_hostname=name)
                assert tr.get_extra_info('ssl_object').server_hostname == name
                assert tr.get_extra_info('ssl_object').selected_alpn_protocol() == alpn
                await close_all(proto)
            await wait_until(lambda: len(sprotos) == 2 and all(p.lost.done() for p in sprotos))
            assert seen == [('localhost', True), ('alt.localhost', True)]

    run(loop, main())


# --- 3. client certificates -------------------------------------------------------------------


def test_tls_client_certificate_accepted(loop):
    async def main():
        server, sprotos, addr = await tls_server(loop, Echo, server_context(require_client_cert=True))
        async with server:
            tr, proto = await loop.create_connection(
                Recorder, *addr, ssl=client_context(client_cert=True), server_hostname='localhost'
            )
            try:
                tr.write(b'who am i')
                assert await proto.read(8) == b'who am i'
                peercert = sprotos[0].transport.get_extra_info('peercert')
                assert subject_cn(peercert) == 'oxloop test client'
                assert dict(x[0] for x in peercert['issuer'])['commonName'] == 'oxloop test ca'
            finally:
                await close_all(proto, *sprotos)

    run(loop, main())


@pytest.mark.parametrize('version', ['TLSv1_2', 'TLSv1_3'])
def test_tls_client_certificate_missing_refused(loop, version):
    # TLS 1.2: the server checks the client's certificate before its Finished, so the
    # client's handshake fails. TLS 1.3: the client's handshake completes first and the
    # refusal arrives after it (the stdlib loop's server closes without an alert: the
    # client reads EOF; an alert would make it an SSLError). Either way the client never
    # reads application data, and the server's protocol never sees connection_made.
    loop.set_debug(True)
    errors = capture_errors(loop)

    async def main():
        handled = []

        async def handler(reader, writer):
            handled.append(writer)
            writer.write(b'secret')
            writer.close()

        server = await asyncio.start_server(handler, '127.0.0.1', 0, ssl=server_context(require_client_cert=True))
        async with server:
            cctx = client_context()
            cctx.maximum_version = getattr(ssl.TLSVersion, version)
            outcome = None
            try:
                reader, writer = await asyncio.open_connection(
                    *server.sockets[0].getsockname()[:2], ssl=cctx, server_hostname='localhost'
                )
            except (ConnectionError, ssl.SSLError) as exc:
                outcome = exc
            else:
                try:
                    assert writer.get_extra_info('ssl_object').version() == 'TLSv1.3'
                    writer.write(b'hello')
                    try:
                        outcome = await reader.read()
                    except (ConnectionError, ssl.SSLError) as exc:
                        outcome = exc
                finally:
                    writer.close()
                    try:
                        await writer.wait_closed()
                    except (ConnectionError, ssl.SSLError):
                        pass
            if version == 'TLSv1_2':
                assert isinstance(outcome, (ConnectionError, ssl.SSLError)), outcome
            else:
                assert outcome == b'' or isinstance(outcome, (ConnectionError, ssl.SSLError)), outcome
            await wait_until(lambda: errors)
            assert handled == []

    run(loop, main())
    assert [e['message'] for e in errors] == ['Error on transport creation for incoming connection']
    exc = errors[0]['exception']
    assert isinstance(exc, ssl.SSLError)
    assert exc.reason == 'PEER_DID_NOT_RETURN_A_CERTIFICATE'


# --- 4. bulk transfer under flow control ----------------------------------------------------------


BULK = 64 * MiB


@pytest.mark.timeout(60)
def test_tls_64mib_each_way_streams(loop):
    # The client writes 64 MiB with drain() while the server echoes with drain(); both
    # directions are checked by SHA-256.
    async def main():
        server_digest = hashlib.sha256()
        done = loop.create_future()

        async def handler(reader, writer):
            try:
                while data := await reader.read(256 * 1024):
                    server_digest.update(data)
                    writer.write(data)
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
            finally:
                done.set_result(None)

        server = await asyncio.start_server(handler, '127.0.0.1', 0, ssl=server_context())
        async with server:
            reader, writer = await asyncio.open_connection(
                *server.sockets[0].getsockname()[:2], ssl=client_context(), server_hostname='localhost'
            )
            block = os.urandom(MiB)
            sent = hashlib.sha256()

            async def send():
                for i in range(BULK // MiB):
                    chunk = bytes([i]) + block[1:]
                    sent.update(chunk)
                    writer.write(chunk)
                    await writer.drain()

            async def receive():
                digest, n = hashlib.sha256(), 0
                while n < BULK:
                    data = await reader.read(MiB)
                    assert data, f'EOF after {n} bytes'
                    digest.update(data)
                    n += len(data)
                return digest.hexdigest(), n

            _, (received, n) = await asyncio.gather(send(), receive())
            assert n == BULK
            assert server_digest.hexdigest() == sent.hexdigest()
            assert received == sent.hexdigest()
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(done, 5)

    run(loop, main(), timeout=50)


class FlowClient(asyncio.Protocol):
    """Writes only while not paused (the test's loop waits on ``writable``); hashes what
    comes back; stops reading once at each ``hold_at`` count of bytes received, until the
    test resumes it."""

    def __init__(self, total: int, hold_at: list[int]) -> None:
        loop = asyncio.get_running_loop()
        self.total = total
        self.hold_at = hold_at
        self.held = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.pauses = self.resumes = 0
        self.received = 0
        self.digest = hashlib.sha256()
        self.all_back = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        assert self.writable.is_set()
        self.pauses += 1
        self.writable.clear()

    def resume_writing(self):
        assert not self.writable.is_set()
        self.resumes += 1
        self.writable.set()

    def data_received(self, data):
        assert not self.held.is_set(), 'data_received while reading is paused'
        self.digest.update(data)
        self.received += len(data)
        if self.hold_at and self.received >= self.hold_at[0]:
            self.hold_at.pop(0)
            self.transport.pause_reading()
            self.held.set()
        if self.received >= self.total and not self.all_back.done():
            self.all_back.set_result(None)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class FlowEcho(Recorder):
    """Echoes; stops reading while its own writes are paused."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = self.resumes = 0
        self.received = 0

    def data_received(self, data):
        self.received += len(data)
        self.transport.write(data)

    def pause_writing(self):
        self.pauses += 1
        self.transport.pause_reading()

    def resume_writing(self):
        self.resumes += 1
        self.transport.resume_reading()


@pytest.mark.timeout(60)
def test_tls_64mib_each_way_protocol_flow_control(loop):
    # Protocol level: the client writes 256 KiB chunks only between resume_writing and
    # pause_writing; the echo server pauses reading while its writes are paused. Twice the
    # client stops reading (pause_reading on the TLS transport) until the server's writes
    # have been paused by the backlog, so both sides' pause_writing/resume_writing run.
    async def main():
        server, sprotos, addr = await tls_server(loop, FlowEcho)
        async with server:
            tr, client = await loop.create_connection(
                lambda: FlowClient(BULK, [8 * MiB, 32 * MiB]), *addr, ssl=client_context(), server_hostname='localhost'
            )

            async def release_reads():
                for _ in range(2):
                    await client.held.wait()
                    before = sprotos[0].pauses
                    assert not tr.is_reading()
                    await wait_until(lambda: sprotos[0].pauses > before, 10)
                    client.held.clear()
                    tr.resume_reading()
                    assert tr.is_reading()

            releaser = asyncio.ensure_future(release_reads())
            block = os.urandom(256 * 1024)
            sent = hashlib.sha256()
            max_buffered = 0
            for i in range(BULK // len(block)):
                await client.writable.wait()
                chunk = i.to_bytes(4, 'little') + block[4:]
                sent.update(chunk)
                tr.write(chunk)
                max_buffered = max(max_buffered, tr.get_write_buffer_size())
            await asyncio.wait_for(client.all_back, 40)
            await releaser
            assert client.received == BULK
            assert client.digest.hexdigest() == sent.hexdigest()
            assert sprotos[0].received == BULK
            assert client.pauses > 0
            await wait_until(lambda: client.resumes == client.pauses)
            assert sprotos[0].pauses >= 2
            await wait_until(lambda: sprotos[0].resumes == sprotos[0].pauses)
            # The app stopped adding while paused: the buffer never held much more than
            # the high-water mark plus one chunk.
            high = tr.get_write_buffer_limits()[1]
            assert max_buffered <= high + 2 * len(block), (max_buffered, high)
            tr.close()
            assert await asyncio.wait_for(client.lost, 5) is None
            await close_all(*sprotos)

    run(loop, main(), timeout=50)


# --- 5. close_notify ordering, abort, truncation ------------------------------------------------------


def test_tls_server_write_then_close_client_sees_data_eof_lost(loop):
    payload = os.urandom(300 * 1024)

    class WriteThenClose(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(payload)
            transport.close()

    async def main():
        server, sprotos, addr = await tls_server(loop, WriteThenClose)
        async with server:
            tr, proto = await loop.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
            assert await asyncio.wait_for(proto.lost, 5) is None
            assert proto.calls == [MADE, DATA, EOF, LOST]
            assert proto.data == payload
            # The closing side's eof_received runs when the peer's close_notify arrives.
            assert await asyncio.wait_for(sprotos[0].lost, 5) is None
            assert sprotos[0].calls == [MADE, EOF, LOST]

    run(loop, main())


def test_tls_close_sends_close_notify_after_the_data(loop):
    # Seen from a hand-driven client: all the data, then close_notify (a clean TLS EOF,
    # not a truncation), and the server's connection_lost(None) once the client answered.
    payload = os.urandom(200 * 1024)

    class WriteThenClose(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(payload)
            transport.close()

    def client(addr):
        peer = HandPeer.connect(addr)
        try:
            peer.handshake()
            data = peer.recv_exactly(len(payload))
            tail = peer.recv()  # b'' on close_notify; a truncation raises SSLEOFError
            peer.close_notify()
            return data, tail
        finally:
            peer.close()

    async def main():
        server, sprotos, addr = await tls_server(loop, WriteThenClose)
        async with server:
            data, tail = await in_thread(client, addr)
            assert data == payload
            assert tail == b''
            assert await asyncio.wait_for(sprotos[0].lost, 5) is None
            assert sprotos[0].calls == [MADE, EOF, LOST]

    run(loop, main())


@pytest.mark.parametrize('how', ['close', 'abort'])
def test_tls_abort_skips_close_notify(loop, how):
    # close() sends close_notify (the peer reads a clean EOF); abort() does not (the peer
    # sees the socket close in the middle of the TLS stream) and connection_lost(None)
    # follows at once, without waiting for the peer.
    lsock = listener()

    def script(peer):
        peer.send(b'ready')
        try:
            data = peer.recv()
        except ssl.SSLEOFError as exc:
            return exc
        peer.close_notify()  # the answer to the client's
        return data

    async def main():
        peer_task = asyncio.ensure_future(in_thread(hand_server, lsock, script))
        tr, proto = await loop.create_connection(
            Recorder, *lsock.getsockname(), ssl=client_context(), server_hostname='localhost'
        )
        assert await proto.read(5) == b'ready'
        getattr(tr, how)()
        assert tr.is_closing()
        if how == 'abort':
            assert await asyncio.wait_for(proto.lost, 1) is None
        result = await peer_task
        if how == 'close':
            assert result == b''
        else:
            assert isinstance(result, ssl.SSLEOFError)
        assert await asyncio.wait_for(proto.lost, 5) is None
        # After close(), the peer's close_notify still reaches eof_received.
        assert proto.calls == ([MADE, DATA, EOF, LOST] if how == 'close' else [MADE, DATA, LOST])

    try:
        run(loop, main())
    finally:
        lsock.close()


def test_tls_truncated_stream(loop):
    # The peer sends data, then closes its socket without close_notify. The stdlib loop
    # (asyncio.sslproto) treats the raw EOF like a clean one: the data, eof_received,
    # then connection_lost(None).
    lsock = listener()
    payload = os.urandom(50 * 1024)

    def script(peer):
        peer.send(payload)
        # the raw socket closes here, without close_notify

    async def main():
        peer_task = asyncio.ensure_future(in_thread(hand_server, lsock, script))
        tr, proto = await loop.create_connection(
            Recorder, *lsock.getsockname(), ssl=client_context(), server_hostname='localhost'
        )
        await peer_task
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.data == payload
        assert proto.calls == [MADE, DATA, EOF, LOST]

    try:
        run(loop, main())
    finally:
        lsock.close()
