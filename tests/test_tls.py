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
import ctypes
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
    WireTap,
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


def listener() -> socket.socket:
    """A listening blocking socket on 127.0.0.1 for a hand-driven peer."""
    s = socket.create_server(('127.0.0.1', 0))
    s.settimeout(PEER_TIMEOUT)
    return s


def hand_server(lsock: socket.socket, script):
    """Accept one connection on ``lsock`` as a hand-driven TLS server, complete the
    handshake, run ``script(peer)`` and close the raw socket; return the script's result.
    Blocking: run it with ``in_thread``."""
    conn, _ = lsock.accept()
    peer = HandPeer(conn, server_context(), server_side=True)
    try:
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
                await loop.create_connection(
                    Recorder, *addr, ssl=client_context(ca=OTHER_CA), server_hostname='localhost'
                )
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


# --- the user's context, and never plaintext ------------------------------------------------------


def test_tls_context_settings_honoured(loop, tmp_dir):
    # The user's contexts decide: TLS 1.2 only and one cipher suite on the client (the
    # server agrees to both), the client's keylog file written, and a server that
    # demands TLS 1.3 refusing that client.
    keylog = os.path.join(tmp_dir, 'keylog')
    suite = 'ECDHE-ECDSA-AES128-GCM-SHA256'

    async def main():
        server, sprotos, addr = await tls_server(loop, Echo)
        async with server:
            cctx = client_context()
            cctx.maximum_version = ssl.TLSVersion.TLSv1_2
            cctx.set_ciphers(suite)
            cctx.keylog_filename = keylog
            tr, proto = await loop.create_connection(Recorder, *addr, ssl=cctx, server_hostname='localhost')
            try:
                tr.write(b'settings')
                assert await proto.read(8) == b'settings'
                for t in (tr, sprotos[0].transport):
                    assert t.get_extra_info('cipher')[:2] == (suite, 'TLSv1.2')
            finally:
                await close_all(proto, *sprotos)

        sctx = server_context()
        sctx.minimum_version = ssl.TLSVersion.TLSv1_3
        server, sprotos, addr = await tls_server(loop, Echo, sctx)
        async with server:
            with pytest.raises((ConnectionError, ssl.SSLError)):
                await loop.create_connection(Recorder, *addr, ssl=cctx, server_hostname='localhost')
            await wait_until(lambda: sprotos)
            await asyncio.sleep(0.05)
            assert sprotos[0].calls == []

    run(loop, main())


class UpgradeOnCommand(Recorder):
    """A plaintext server protocol that answers 'STARTTLS\\r\\n' with 'GO\\r\\n' and upgrades to
    TLS (server side) with an Echo app protocol."""

    def data_received(self, data):
        super().data_received(data)
        if self.data == b'STARTTLS\r\n':
            self.transport.pause_reading()
            self.transport.write(b'GO\r\n')
            self.app = Echo()
            self.upgrade = asyncio.ensure_future(
                asyncio.get_running_loop().start_tls(self.transport, self.app, server_context(), server_side=True)
            )
            # start_tls does not call connection_made: the app protocol gets its transport
            # here (the test's client writes only once the upgrade is done).
            self.upgrade.add_done_callback(lambda f: setattr(self.app, 'transport', f.result()))


@pytest.mark.parametrize('how', ['ssl', 'start_tls'])
def test_tls_never_plaintext_on_the_wire(loop, how):
    # A relay records every byte between client and server: what the applications wrote
    # (write with bytes, bytearray and memoryview; writelines; both directions) never
    # appears on the wire, and every byte after the plaintext STARTTLS exchange is a TLS
    # record.
    marker = b'CLEARTEXT-' + os.urandom(6).hex().encode()
    chunks = [marker * 100, bytearray(marker * 1000), memoryview(marker * 10_000)]
    prefix = {'ssl': (b'', b''), 'start_tls': (b'STARTTLS\r\n', b'GO\r\n')}[how]

    async def main():
        if how == 'ssl':
            server, sprotos, addr = await tls_server(loop, Echo)
        else:
            sprotos = []
            server = await loop.create_server(lambda: sprotos.append(UpgradeOnCommand()) or sprotos[-1], '127.0.0.1', 0)
            addr = server.sockets[0].getsockname()[:2]
        async with server:
            tap = WireTap(addr)
            if how == 'ssl':
                tr, proto = await loop.create_connection(
                    Recorder, *tap.addr, ssl=client_context(), server_hostname='localhost'
                )
                sapp = sprotos[0]
            else:
                plain_tr, plain = await loop.create_connection(Recorder, *tap.addr)
                plain_tr.write(b'STARTTLS\r\n')
                assert await plain.read(4) == b'GO\r\n'
                proto = Recorder()
                tr = await loop.start_tls(plain_tr, proto, client_context(), server_hostname='localhost')
                proto.transport = tr
                await asyncio.wait_for(sprotos[0].upgrade, 5)
                sapp = sprotos[0].app
            for chunk in chunks:
                tr.write(chunk)
            tr.writelines([marker, bytearray(marker), memoryview(marker)])
            total = sum(len(c) for c in chunks) + 3 * len(marker)
            assert await proto.read(total) == b''.join(bytes(c) for c in chunks) + marker * 3
            sapp.transport.write(marker * 5)
            assert (await proto.read(total + 5 * len(marker)))[total:] == marker * 5
            tr.close()
            await asyncio.wait_for(proto.lost, 5)
            await asyncio.wait_for(sapp.lost, 5)
            return await asyncio.to_thread(tap.wait)

    up, down = run(loop, main())
    for wire, plain in zip((up, down), prefix, strict=True):
        assert wire.startswith(plain)
        assert marker not in wire
        # Every byte after the plaintext belongs to a TLS record: walk the record headers.
        i = len(plain)
        while i < len(wire):
            assert wire[i] in (0x14, 0x15, 0x16, 0x17), (i, wire[i : i + 5])
            assert wire[i + 1] == 3, (i, wire[i : i + 5])
            i += 5 + int.from_bytes(wire[i + 3 : i + 5], 'big')
        assert i == len(wire)
    assert len(up) > sum(len(c) for c in chunks)


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
    # The client writes 64 MiB in 1 MiB writes, each followed by drain(), while the server
    # echoes with drain(); both directions are checked by SHA-256.
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

            high = writer.transport.get_write_buffer_limits()[1]
            waited = 0

            async def send():
                nonlocal waited
                for i in range(BULK // MiB):
                    chunk = bytes([i]) + block[1:]
                    sent.update(chunk)
                    writer.write(chunk)
                    if writer.transport.get_write_buffer_size() > high:
                        waited += 1
                    await writer.drain()
                    # drain() returns once the transport is below its high-water mark.
                    assert writer.transport.get_write_buffer_size() <= high

            async def receive():
                digest, n = hashlib.sha256(), 0
                while n < BULK:
                    data = await reader.read(MiB)
                    assert data, f'EOF after {n} bytes'
                    digest.update(data)
                    n += len(data)
                return digest.hexdigest(), n

            _, (received, n) = await asyncio.gather(send(), receive())
            assert waited > 0  # drain() did wait
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
                    await wait_until(lambda before=before: sprotos[0].pauses > before, 10)
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
            _, proto = await loop.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
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
        _, proto = await loop.create_connection(
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


# --- 6. start_tls ------------------------------------------------------------------------------


class LineReader(asyncio.BufferedProtocol):
    """A plaintext BufferedProtocol that reads exactly one ``line`` (asking for no more
    bytes than the line still needs, as a careful STARTTLS server does), then pauses
    reading: whatever the peer sent after the line stays unread for start_tls."""

    def __init__(self, line: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.line = line
        self.buf = bytearray(len(line))
        self.got = 0
        self.transport = None
        self.done = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return memoryview(self.buf)[self.got :]

    def buffer_updated(self, nbytes):
        self.got += nbytes
        if self.got == len(self.line):
            self.transport.pause_reading()
            self.done.set_result(bytes(self.buf))

    def eof_received(self):
        if not self.done.done():
            self.done.set_exception(EOFError(bytes(self.buf[: self.got])))

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


class BufferedRecorder(asyncio.BufferedProtocol):
    """A BufferedProtocol that records its calls; data arrives through small buffers."""

    def __init__(self, size: int = 1000) -> None:
        loop = asyncio.get_running_loop()
        self.buf = bytearray(size)
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport = None
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.calls.append(MADE)
        self.transport = transport

    def get_buffer(self, sizehint):
        # A memoryview: the stdlib's sslproto fills ``buf[offset:]`` when a buffer spans
        # records, which for a bytearray is a copy (the bytes after the first record are lost).
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        if not self.calls or self.calls[-1] != DATA:
            self.calls.append(DATA)
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.calls.append(EOF)

    def connection_lost(self, exc):
        self.calls.append(LOST)
        self.lost.set_result(exc)

    async def read(self, n: int, timeout: float = 5.0) -> bytes:
        await wait_until(lambda: len(self.data) >= n or self.lost.done(), timeout)
        return bytes(self.data)


def test_tls_start_tls_server_side_with_client_hello_read_ahead(loop):
    # The client sends 'STARTTLS\r\n' and its ClientHello in one segment, then, once the
    # handshake is done, application data at once (it may share a segment with its
    # Finished). The server read only the line in plaintext: start_tls must find the
    # ClientHello that followed it, lose nothing, and deliver the data intact.
    payload = os.urandom(100 * 1024)

    def client(addr):
        sock = socket.create_connection(addr, timeout=PEER_TIMEOUT)
        peer = HandPeer(sock, client_context(), server_side=False, server_hostname='localhost')
        try:
            try:
                peer.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = peer.outgoing.read()
            assert hello[:1] == b'\x16'  # a handshake record
            sock.sendall(b'STARTTLS\r\n' + hello)
            peer.handshake()
            peer.send(payload)
            echoed = peer.recv_exactly(len(payload))
            peer.close_notify()
            return echoed, peer.obj.version()
        finally:
            peer.close()

    async def main():
        readers = []

        def factory():
            p = LineReader(b'STARTTLS\r\n')
            readers.append(p)
            return p

        server = await loop.create_server(factory, '127.0.0.1', 0)
        async with server:
            client_task = asyncio.ensure_future(in_thread(client, server.sockets[0].getsockname()[:2]))
            await wait_until(lambda: readers)
            plain = readers[0]
            assert await asyncio.wait_for(plain.done, 5) == b'STARTTLS\r\n'
            # start_tls does not call connection_made (the app protocol is expected to
            # have its transport already), and data may reach it before start_tls returns.
            app = Recorder()
            tls = await loop.start_tls(plain.transport, app, server_context(), server_side=True)
            assert tls.get_protocol() is app
            tls.write(await app.read(len(payload)))
            echoed, version = await client_task
            assert echoed == payload
            assert version == 'TLSv1.3'
            assert bytes(app.data) == payload
            assert await asyncio.wait_for(app.lost, 5) is None
            assert app.calls == [DATA, EOF, LOST]
            tls.close()

    run(loop, main())


@pytest.mark.parametrize('app', ['Protocol', 'BufferedProtocol'])
def test_tls_start_tls_both_sides(loop, app):
    # A plaintext exchange, then both ends upgrade (client: start_tls with server_hostname;
    # server: server_side=True) and exchange data both ways; the client's app protocol
    # after the upgrade is a Protocol or a BufferedProtocol (get_buffer/buffer_updated).
    payload = os.urandom(64 * 1024)
    reply = os.urandom(80 * 1024)

    class PlainServer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if self.data == b'STARTTLS\r\n':
                self.transport.pause_reading()
                self.transport.write(b'GO\r\n')
                self.app = Recorder()
                self.upgrade = asyncio.ensure_future(
                    asyncio.get_running_loop().start_tls(self.transport, self.app, server_context(), server_side=True)
                )

    async def main():
        protos = []

        def factory():
            p = PlainServer()
            protos.append(p)
            return p

        server = await loop.create_server(factory, '127.0.0.1', 0)
        async with server:
            tr, plain = await loop.create_connection(Recorder, *server.sockets[0].getsockname()[:2])
            tr.write(b'STARTTLS\r\n')
            assert await plain.read(4) == b'GO\r\n'
            cproto = Recorder() if app == 'Protocol' else BufferedRecorder()
            tls = await loop.start_tls(tr, cproto, client_context(), server_hostname='localhost')
            assert tls.get_protocol() is cproto
            assert tls.get_extra_info('ssl_object').version() == 'TLSv1.3'
            assert subject_cn(tls.get_extra_info('peercert')) == 'localhost'
            stls = await asyncio.wait_for(protos[0].upgrade, 5)
            sapp = protos[0].app
            assert stls.get_protocol() is sapp
            assert stls.get_extra_info('peercert') is None
            tls.write(payload)
            stls.write(reply)
            assert await cproto.read(len(reply)) == reply
            assert await sapp.read(len(payload)) == payload
            tls.close()
            assert await asyncio.wait_for(cproto.lost, 5) is None
            assert cproto.calls == [DATA, EOF, LOST]
            assert await asyncio.wait_for(sapp.lost, 5) is None
            assert sapp.calls == [DATA, EOF, LOST]
            stls.close()
            # The plaintext protocols saw only the plaintext, and were told nothing more.
            assert plain.data == b'GO\r\n'
            assert protos[0].data == b'STARTTLS\r\n'
            assert plain.calls == [MADE, DATA]
            assert protos[0].calls == [MADE, DATA]

    run(loop, main())


def test_tls_start_tls_streams_client(loop):
    # StreamWriter.start_tls (3.11+) against a hand-driven server that greets in plaintext.
    lsock = listener()

    def server():
        conn, _ = lsock.accept()
        conn.settimeout(PEER_TIMEOUT)
        try:
            conn.sendall(b'220 ready\r\n')
            line = b''
            while not line.endswith(b'\r\n'):
                line += conn.recv(1)
            assert line == b'STARTTLS\r\n', line
            conn.sendall(b'220 go ahead\r\n')
            peer = HandPeer(conn, server_context(), server_side=True)
            peer.handshake()
            data = peer.recv_exactly(5)
            peer.send(data.upper() + b'\r\n')
            peer.recv()  # the client's close_notify
            peer.close_notify()
            return data
        finally:
            conn.close()

    async def main():
        peer_task = asyncio.ensure_future(in_thread(server))
        reader, writer = await asyncio.open_connection(*lsock.getsockname())
        assert await reader.readline() == b'220 ready\r\n'
        writer.write(b'STARTTLS\r\n')
        assert await reader.readline() == b'220 go ahead\r\n'
        await writer.start_tls(client_context(), server_hostname='localhost')
        assert writer.get_extra_info('ssl_object') is not None
        writer.write(b'hello')
        assert await reader.readline() == b'HELLO\r\n'
        writer.close()
        await writer.wait_closed()
        assert await peer_task == b'hello'

    try:
        run(loop, main())
    finally:
        lsock.close()


# --- 7. handshake and shutdown timeouts --------------------------------------------------------------


def test_tls_client_handshake_timeout(loop):
    # A server that accepts (the kernel does, from the backlog) and never answers.
    lsock = listener()

    async def main():
        start = loop.time()
        with pytest.raises(ConnectionAbortedError) as info:
            await loop.create_connection(
                Recorder,
                *lsock.getsockname(),
                ssl=client_context(),
                server_hostname='localhost',
                ssl_handshake_timeout=0.3,
            )
        elapsed = loop.time() - start
        assert 0.29 <= elapsed < 3, elapsed
        assert str(info.value) == 'SSL handshake is taking longer than 0.3 seconds: aborting the connection'
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(PEER_TIMEOUT)
            hello = recv_until_eof(conn)  # the client closed its end
            assert hello[:1] == b'\x16'  # its ClientHello, and nothing after the timeout

    try:
        run(loop, main())
    finally:
        lsock.close()


@pytest.mark.parametrize('sends', ['nothing', 'half_a_hello'])
def test_tls_server_handshake_timeout(loop, sends):
    # A client that connects and sends nothing (or a ClientHello cut short): the server's
    # handshake times out, the connection is closed, the protocol never sees
    # connection_made; in debug mode the handler hears of a ConnectionAbortedError.
    loop.set_debug(True)
    errors = capture_errors(loop)

    def client(addr):
        with socket.create_connection(addr, timeout=PEER_TIMEOUT) as sock:
            if sends == 'half_a_hello':
                obj = client_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname='localhost')
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                hello = out.read()
                sock.sendall(hello[: len(hello) // 2])
            start = time.monotonic()
            data = recv_until_eof(sock)
            return data, time.monotonic() - start

    async def main():
        server, sprotos, addr = await tls_server(loop, ssl_handshake_timeout=0.3)
        async with server:
            data, elapsed = await in_thread(client, addr)
            assert data == b'' or data[:1] == b'\x15', data  # nothing, or an alert
            assert 0.2 <= elapsed < 3, elapsed
            await wait_until(lambda: errors)
            assert len(sprotos) == 1
            assert sprotos[0].calls == []

    run(loop, main())
    assert [e['message'] for e in errors] == ['Error on transport creation for incoming connection']
    exc = errors[0]['exception']
    assert isinstance(exc, ConnectionAbortedError)
    assert str(exc) == 'SSL handshake is taking longer than 0.3 seconds: aborting the connection'


@pytest.mark.parametrize('side', ['client', 'server'])
def test_tls_shutdown_timeout(loop, side):
    # close() sends close_notify and waits for the peer's; a peer that never answers gets
    # the connection dropped after ssl_shutdown_timeout: connection_lost(TimeoutError).
    def silent(peer):
        peer.send(b'x')  # the handshake is over: what comes next is read raw
        return peer.wait_raw_eof()  # reads the close_notify, never answers it

    async def close_and_check(proto, peer_task):
        await proto.read(1)
        start = loop.time()
        proto.transport.close()
        exc = await asyncio.wait_for(proto.lost, 5)
        elapsed = loop.time() - start
        assert 0.25 <= elapsed < 3, elapsed
        assert isinstance(exc, TimeoutError), exc
        assert str(exc) == 'SSL shutdown timed out'
        raw = await peer_task
        assert raw[:1] in (b'\x15', b'\x17'), raw  # the close_notify (TLS 1.3: an encrypted record)

    async def client_side():
        lsock = listener()
        try:
            peer_task = asyncio.ensure_future(in_thread(hand_server, lsock, silent))
            _, proto = await loop.create_connection(
                Recorder,
                *lsock.getsockname(),
                ssl=client_context(),
                server_hostname='localhost',
                ssl_shutdown_timeout=0.3,
            )
        finally:
            lsock.close()
        await close_and_check(proto, peer_task)

    async def server_side():
        server, sprotos, addr = await tls_server(loop, ssl_shutdown_timeout=0.3)

        def client():
            peer = HandPeer.connect(addr)
            try:
                peer.handshake()
                return silent(peer)
            finally:
                peer.close()

        async with server:
            peer_task = asyncio.ensure_future(in_thread(client))
            await wait_until(lambda: sprotos and sprotos[0].transport is not None)
            await close_and_check(sprotos[0], peer_task)

    run(loop, client_side() if side == 'client' else server_side())


# --- 8. garbage instead of TLS records ------------------------------------------------------------


JUNK = {
    'http_request': b'GET / HTTP/1.1\r\nHost: localhost\r\n\r\n',
    'zeros': b'\x00' * 64,
    'bad_handshake_record': b'\x16\x03\x01\x00\x08garbage!',
}


@pytest.mark.parametrize('junk', JUNK.values(), ids=JUNK.keys())
def test_tls_garbage_before_handshake(loop, junk):
    # Bytes that are not a ClientHello: the handshake fails (an SSLError, reported to the
    # handler in debug mode), the connection is closed, nothing reaches the protocol, and
    # nothing is sent back in the clear.
    loop.set_debug(True)
    errors = capture_errors(loop)

    def client(addr):
        with socket.create_connection(addr, timeout=PEER_TIMEOUT) as sock:
            sock.sendall(junk)
            return recv_until_eof(sock)

    async def main():
        server, sprotos, addr = await tls_server(loop, Echo)
        async with server:
            answer = await in_thread(client, addr)
            assert answer == b'' or answer[:1] == b'\x15', answer  # nothing, or an alert
            await wait_until(lambda: errors)
            assert len(sprotos) == 1
            assert sprotos[0].calls == []
            # The server still serves.
            tr, proto = await loop.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
            tr.write(b'still here')
            assert await proto.read(10) == b'still here'
            await close_all(proto, *sprotos)

    run(loop, main())
    assert [e['message'] for e in errors] == ['Error on transport creation for incoming connection']
    assert isinstance(errors[0]['exception'], ssl.SSLError), errors[0]['exception']


def test_tls_plaintext_client_gets_nothing(loop):
    # A plaintext client of the same loop: its bytes never reach the server's protocol,
    # and it reads nothing back but perhaps an alert before the connection closes.
    async def main():
        server, sprotos, addr = await tls_server(loop, Echo)
        async with server:
            tr, proto = await loop.create_connection(Recorder, *addr)
            tr.write(b'hello in the clear\r\n')
            assert await asyncio.wait_for(proto.lost, 5) is None
            assert proto.data == b'' or proto.data[:1] == b'\x15', proto.data
            assert b'hello' not in proto.data
            await wait_until(lambda: sprotos)
            await asyncio.sleep(0.05)
            assert sprotos[0].calls == []

    run(loop, main())


JUNK_RECORDS = {
    'not_a_record': b'junk junk junk junk',
    'bad_mac_record': b'\x17\x03\x03\x00\x20' + bytes(range(32)),
}


@pytest.mark.parametrize('junk', JUNK_RECORDS.values(), ids=JUNK_RECORDS.keys())
def test_tls_garbage_after_handshake(loop, junk):
    # A hand-driven client completes the handshake, sends a good record, then junk: the
    # server's protocol gets the good data, never the junk, and connection_lost(SSLError).
    def client(addr):
        peer = HandPeer.connect(addr)
        try:
            peer.handshake()
            peer.send(b'good')
            assert peer.recv_exactly(4) == b'good'
            peer.send_raw(junk)
            return peer.wait_raw_eof()
        finally:
            peer.close()

    async def main():
        server, sprotos, addr = await tls_server(loop, Echo)
        async with server:
            await in_thread(client, addr)
            exc = await asyncio.wait_for(sprotos[0].lost, 5)
            assert isinstance(exc, ssl.SSLError), exc
            assert sprotos[0].data == b'good'
            assert sprotos[0].calls == [MADE, DATA, LOST]

    run(loop, main())


# --- 9. many connections -------------------------------------------------------------------------


def rss_after_trim() -> int:
    """The process's resident size once glibc has returned its free memory to the kernel
    (thousands of freed 256 KiB TLS read buffers otherwise keep hundreds of MiB resident
    on every loop, the stdlib's included)."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def live_objects() -> tuple[int, int]:
    """(objects the GC tracks, SSLObjects among them)."""
    gc.collect()
    objs = gc.get_objects()
    return len(objs), sum(1 for o in objs if isinstance(o, ssl.SSLObject))


@pytest.mark.timeout(60)
def test_tls_many_connections_no_fd_or_memory_growth(loop):
    # 2,000 TLS connections (batches of 50 at a time) against one server, each a
    # handshake, a round trip and a close: afterwards no more fds than before, no
    # SSLObject alive, no more than 200 more objects tracked by the GC (a leak
    # of one object per connection would be 2,000), and the RSS grown by a bounded amount.
    ctx = client_context()

    async def one(addr):
        tr, proto = await loop.create_connection(Recorder, *addr, ssl=ctx, server_hostname='localhost')
        tr.write(b'ping')
        assert await proto.read(4) == b'ping'
        tr.close()
        assert await asyncio.wait_for(proto.lost, 5) is None

    async def batch(addr, n):
        for _ in range(n // 50):
            await asyncio.gather(*(one(addr) for _ in range(50)))

    async def main():
        server, sprotos, addr = await tls_server(loop, Echo)
        async with server:
            await batch(addr, 200)  # warm-up: caches, free lists, the allocator's arenas
            await wait_until(lambda: all(p.lost.done() for p in sprotos))
            sprotos.clear()
            await asyncio.sleep(0)
            before = len(open_fds()), *live_objects(), rss_after_trim()
            start = time.monotonic()
            await batch(addr, 2000)
            elapsed = time.monotonic() - start
            await wait_until(lambda: len(sprotos) == 2000 and all(p.lost.done() for p in sprotos))
            assert all(p.lost.result() is None for p in sprotos)
            assert all(p.calls == [MADE, DATA, EOF, LOST] for p in sprotos)
            sprotos.clear()
            await asyncio.sleep(0)
            after = len(open_fds()), *live_objects(), rss_after_trim()
            return before, after, elapsed

    (fds, objs, sslobjs, mem), (fds2, objs2, sslobjs2, mem2), elapsed = run(loop, main(), timeout=55)
    assert fds2 <= fds + 2, (fds, fds2)
    assert sslobjs2 <= sslobjs, (sslobjs, sslobjs2)
    assert objs2 - objs < 200, (objs, objs2)
    grown = mem2 - mem
    assert grown < 16 * MiB, f'RSS grew by {grown / MiB:.1f} MiB over 2,000 connections ({elapsed:.1f} s)'


# --- 10. the TLS transport's API ----------------------------------------------------------------------


async def tls_pair(loop, kind, path, client=Recorder, server=Recorder, cctx=None, sctx=None):
    """(server, client transport, client protocol, server protocol) over TCP or a Unix socket."""
    protos = []

    def make():
        p = server()
        protos.append(p)
        return p

    cctx = cctx or client_context()
    sctx = sctx or server_context()
    if kind == 'tcp':
        srv = await loop.create_server(make, '127.0.0.1', 0, ssl=sctx)
        tr, proto = await loop.create_connection(
            client, *srv.sockets[0].getsockname()[:2], ssl=cctx, server_hostname='localhost'
        )
    else:
        srv = await loop.create_unix_server(make, path, ssl=sctx)
        tr, proto = await loop.create_unix_connection(client, path, ssl=cctx, server_hostname='localhost')
    await wait_until(lambda: protos and protos[0].transport is not None)
    return srv, tr, proto, protos[0]


def test_tls_get_extra_info(loop, kind, path):
    async def main():
        cctx, sctx = client_context(), server_context()
        srv, tr, proto, sproto = await tls_pair(loop, kind, path, cctx=cctx, sctx=sctx)
        async with srv:
            try:
                family = socket.AF_INET if kind == 'tcp' else socket.AF_UNIX
                for side, t, ctx in (('client', tr, cctx), ('server', sproto.transport, sctx)):
                    assert t.get_extra_info('sslcontext') is ctx, side
                    obj = t.get_extra_info('ssl_object')
                    assert isinstance(obj, ssl.SSLObject), side
                    assert obj.server_side == (side == 'server')
                    assert obj.version() == 'TLSv1.3'
                    cipher = t.get_extra_info('cipher')
                    assert cipher == obj.cipher(), side
                    assert isinstance(cipher, tuple) and len(cipher) == 3 and cipher[1] == 'TLSv1.3', cipher
                    assert t.get_extra_info('compression') == obj.compression(), side
                    sock = t.get_extra_info('socket')
                    assert sock.family == family, side
                    assert sock.fileno() >= 0, side
                    assert t.get_extra_info('sockname') == sock.getsockname(), side
                    assert t.get_extra_info('peername') == sock.getpeername(), side
                    assert t.get_extra_info('no-such-key') is None
                    assert t.get_extra_info('no-such-key', 'dflt') == 'dflt'
                peercert = tr.get_extra_info('peercert')
                assert peercert == tr.get_extra_info('ssl_object').getpeercert()
                assert subject_cn(peercert) == 'localhost'
                assert ('DNS', 'localhost') in peercert['subjectAltName']
                assert sproto.transport.get_extra_info('peercert') is None  # no client certificate asked
                if kind == 'tcp':
                    assert tr.get_extra_info('peername') == sproto.transport.get_extra_info('sockname')
                    assert tr.get_extra_info('sockname') == sproto.transport.get_extra_info('peername')
                else:
                    assert tr.get_extra_info('peername') == path
                    assert sproto.transport.get_extra_info('sockname') == path
            finally:
                await close_all(proto, sproto)

    run(loop, main())


def test_tls_transport_api(loop):
    async def main():
        srv, tr, proto, sproto = await tls_pair(loop, 'tcp', None)
        async with srv:
            try:
                assert isinstance(tr, asyncio.Transport)
                assert isinstance(tr, asyncio.ReadTransport)
                assert isinstance(tr, asyncio.WriteTransport)
                assert isinstance(sproto.transport, asyncio.Transport)
                assert tr.get_protocol() is proto
                assert sproto.transport.get_protocol() is sproto
                # TLS has no half-close in asyncio: can_write_eof() is False and
                # write_eof() raises NotImplementedError (the stdlib's sslproto, 3.11-3.13).
                assert tr.can_write_eof() is False
                with pytest.raises(NotImplementedError):
                    tr.write_eof()
                assert tr.get_write_buffer_limits() == (128 * 1024, 512 * 1024)  # sslproto's defaults
                tr.set_write_buffer_limits(high=1000)
                assert tr.get_write_buffer_limits() == (250, 1000)
                assert tr.get_write_buffer_size() == 0
                # set_protocol: what arrives next goes to the new protocol.
                other = Recorder()
                tr.set_protocol(other)
                assert tr.get_protocol() is other
                sproto.transport.write(b'to the other one')
                assert await other.read(16) == b'to the other one'
                assert proto.data == b''
                # writelines goes through TLS too.
                tr.writelines([b'a', bytearray(b'b'), memoryview(b'c')])
                assert await sproto.read(3) == b'abc'
                assert not tr.is_closing()
                tr.close()
                assert tr.is_closing()
                assert await asyncio.wait_for(other.lost, 5) is None
                assert proto.calls == [MADE]  # the old protocol heard nothing more
                assert other.calls == [DATA, EOF, LOST]
            finally:
                await close_all(sproto)

    run(loop, main())


def test_tls_pause_reading(loop):
    # pause_reading() on a TLS transport: nothing is delivered until resume_reading(), and
    # then everything, in order.
    async def main():
        srv, tr, proto, sproto = await tls_pair(loop, 'tcp', None)
        async with srv:
            try:
                assert tr.is_reading()
                tr.pause_reading()
                assert not tr.is_reading()
                payload = os.urandom(300 * 1024)
                sproto.transport.write(payload)
                await asyncio.sleep(0.2)
                assert proto.data == b''
                tr.resume_reading()
                assert tr.is_reading()
                assert await proto.read(len(payload)) == payload
            finally:
                await close_all(proto, sproto)

    run(loop, main())


def test_tls_buffered_protocol_client(loop, kind, path):
    # A BufferedProtocol as the TLS client's protocol: 1 MiB arrives through a 1000-byte
    # buffer, in order, then eof_received and connection_lost(None).
    payload = os.urandom(MiB)

    class SendAndClose(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(payload)
            transport.close()

    async def main():
        srv, _, proto, sproto = await tls_pair(loop, kind, path, client=BufferedRecorder, server=SendAndClose)
        async with srv:
            assert await asyncio.wait_for(proto.lost, 5) is None
            assert bytes(proto.data) == payload
            assert proto.calls == [MADE, DATA, EOF, LOST]
            assert await asyncio.wait_for(sproto.lost, 5) is None

    run(loop, main())


def test_tls_unix_roundtrip(loop, path):
    async def main():
        srv, tr, proto, sproto = await tls_pair(loop, 'unix', path, server=Echo)
        async with srv:
            try:
                tr.write(b'over a unix socket')
                assert await proto.read(18) == b'over a unix socket'
                assert sproto.data == b'over a unix socket'
            finally:
                await close_all(proto, sproto)

    run(loop, main())


def test_tls_connect_accepted_socket(loop):
    # The server side of a TLS connection from a socket accepted outside the loop.
    lsock = listener()

    async def main():
        client = asyncio.ensure_future(
            loop.create_connection(Recorder, *lsock.getsockname(), ssl=client_context(), server_hostname='localhost')
        )
        conn, _ = await in_thread(lsock.accept)
        str_, sproto = await loop.connect_accepted_socket(Echo, conn, ssl=server_context())
        tr, proto = await client
        try:
            assert sproto.calls == [MADE]
            assert isinstance(str_.get_extra_info('ssl_object'), ssl.SSLObject)
            assert str_.get_extra_info('ssl_object').server_side
            tr.write(b'accepted elsewhere')
            assert await proto.read(18) == b'accepted elsewhere'
        finally:
            await close_all(proto, sproto)

    try:
        run(loop, main())
    finally:
        lsock.close()
