"""Helpers shared by the TLS tests: the test certificates, contexts built from them, and a
TLS peer driven by hand (``ssl.SSLObject`` over two ``ssl.MemoryBIO``) on a blocking socket.

Not a test module (no ``test_`` prefix); tests/test_tls.py and
tests/adversarial/test_adv_tls.py import it by name. The certificates live in tests/certs/
(see its README.md): a CA, a server certificate for ``localhost`` and 127.0.0.1 signed by
it, a client certificate signed by it, and a second, unrelated CA.

The hand-driven peer runs in a thread (``asyncio.to_thread``), so the loop under test is
only ever on one side of a connection and the other side behaves the same on every loop.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import threading

CERTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'certs')
CA = os.path.join(CERTS, 'ca.pem')
OTHER_CA = os.path.join(CERTS, 'other-ca.pem')
SERVER_CERT = os.path.join(CERTS, 'server.pem')
SERVER_KEY = os.path.join(CERTS, 'server.key')
CLIENT_CERT = os.path.join(CERTS, 'client.pem')
CLIENT_KEY = os.path.join(CERTS, 'client.key')

# Blocking operations of the hand-driven peer give up after this many seconds.
PEER_TIMEOUT = 10.0


def server_context(*, require_client_cert: bool = False, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A server context with the 'localhost' certificate; with ``require_client_cert``,
    clients must present a certificate signed by the test CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(SERVER_CERT, SERVER_KEY)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(CA)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_context(*, ca: str = CA, client_cert: bool = False, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client context that trusts ``ca`` and checks the hostname (the defaults of
    PROTOCOL_TLS_CLIENT); with ``client_cert``, it presents the test client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if client_cert:
        ctx.load_cert_chain(CLIENT_CERT, CLIENT_KEY)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def subject_cn(peercert: dict) -> str:
    """The commonName of a ``getpeercert()`` dict."""
    for rdn in peercert['subject']:
        for key, value in rdn:
            if key == 'commonName':
                return value
    raise KeyError('commonName')


class HandPeer:
    """One end of a TLS connection over a blocking socket, driven by hand through
    ``SSLObject`` + ``MemoryBIO`` so that a test can do what a well-behaved TLS library
    will not: send raw bytes between records, close the socket without close_notify.

    Every method blocks (socket timeout ``PEER_TIMEOUT``): call them from a thread.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool, server_hostname=None):
        sock.settimeout(PEER_TIMEOUT)
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname)
        self.eof = False  # the raw socket reached EOF

    @classmethod
    def connect(cls, addr, ctx: ssl.SSLContext | None = None, server_hostname='localhost') -> HandPeer:
        """A client peer connected to ``addr`` (TCP or Unix), handshake not done yet."""
        family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(PEER_TIMEOUT)
        sock.connect(addr)
        return cls(sock, ctx or client_context(), server_side=False, server_hostname=server_hostname)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read once from the socket into the incoming BIO; False at EOF."""
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError('EOF during the handshake') from None
                continue
            self._flush()
            return

    def send(self, data: bytes) -> None:
        """Send ``data`` as TLS application data."""
        view = memoryview(data)
        while view:
            n = self.obj.write(view)
            view = view[n:]
            self._flush()

    def send_raw(self, data: bytes) -> None:
        """Send ``data`` on the socket as is, outside any TLS record."""
        self.sock.sendall(data)

    def recv(self, n: int = 65536) -> bytes:
        """Application data, at most ``n`` bytes; b'' on close_notify. An EOF of the raw
        socket without close_notify raises ``ssl.SSLEOFError``."""
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLZeroReturnError:
                return b''

    def recv_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.recv(n - len(buf))
            if not chunk:
                raise EOFError(f'EOF after {len(buf)} of {n} bytes')
            buf += chunk
        return bytes(buf)

    def close_notify(self) -> None:
        """Send close_notify (without waiting for the peer's)."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._flush()

    def wait_raw_eof(self) -> bytes:
        """Read raw bytes until the peer closes the socket; return them (TLS records, undecrypted)."""
        chunks = []
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        self.eof = True
        return b''.join(chunks)

    def close(self) -> None:
        """Close the raw socket (no close_notify unless close_notify() was called)."""
        self.sock.close()


async def in_thread(fn, *args):
    """Run a blocking peer step in a thread, bounded in time."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), PEER_TIMEOUT + 5)


class WireTap:
    """A TCP relay on 127.0.0.1 that records every byte it forwards: connect to ``addr``
    instead of ``upstream``. Serves one connection, in a thread; ``wait()`` returns the
    bytes seen (client to server, server to client) once both directions ended."""

    def __init__(self, upstream) -> None:
        self.upstream = upstream
        self.lsock = socket.create_server(('127.0.0.1', 0))
        self.lsock.settimeout(PEER_TIMEOUT)
        self.addr = self.lsock.getsockname()
        self.seen = {'up': bytearray(), 'down': bytearray()}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            client, _ = self.lsock.accept()
            server = socket.create_connection(self.upstream, timeout=PEER_TIMEOUT)
            with client, server:
                pairs = {client: (server, 'up'), server: (client, 'down')}
                open_ = {client, server}
                while open_:
                    ready, _, _ = select.select(list(open_), [], [], PEER_TIMEOUT)
                    if not ready:
                        raise TimeoutError('the relay saw nothing for too long')
                    for s in ready:
                        dst, direction = pairs[s]
                        try:
                            data = s.recv(65536)
                        except ConnectionResetError:
                            data = b''
                        if data:
                            self.seen[direction] += data
                            dst.sendall(data)
                        else:
                            open_.discard(s)
                            try:
                                dst.shutdown(socket.SHUT_WR)
                            except OSError:
                                pass
        except BaseException as exc:  # noqa: BLE001 - handed to the test by wait()
            self.error = exc
        finally:
            self.lsock.close()

    def wait(self) -> tuple[bytes, bytes]:
        self.thread.join(PEER_TIMEOUT + 5)
        assert not self.thread.is_alive(), 'the relay did not finish'
        if self.error is not None:
            raise self.error
        return bytes(self.seen['up']), bytes(self.seen['down'])
