"""Helpers shared by the network tests: protocol recorders, connected pairs, bounded waits.

Not a test module (no ``test_`` prefix); the network test files import it by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

TIMEOUT = 10.0

# The transports' call sequence, recorded by name; consecutive data_received calls merge.
MADE, DATA, EOF, LOST, PAUSE, RESUME = 'made', 'data', 'eof', 'lost', 'pause', 'resume'


def here_and_on_the_stdlib(loop: asyncio.AbstractEventLoop, scenario, *args, timeout: float = TIMEOUT):
    """``scenario(*args)`` on ``loop`` and on a fresh stdlib loop (its exception handler
    silenced), each bounded by ``timeout``: (got, expected)."""
    from conftest import new_loop

    got = loop.run_until_complete(asyncio.wait_for(scenario(*args), timeout))
    reference = new_loop('asyncio')
    try:
        reference.set_exception_handler(lambda lp, ctx: None)
        expected = reference.run_until_complete(asyncio.wait_for(scenario(*args), timeout))
    finally:
        reference.close()
    return got, expected


def run(loop: asyncio.AbstractEventLoop, coro, timeout: float = TIMEOUT):
    """run_until_complete() with a deadline."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def wait_until(pred, timeout: float = 5.0) -> None:
    """Poll ``pred()`` until it is true; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.001)


def open_fds() -> set[int]:
    """The fds open in this process (the listing's own fd excluded)."""
    fds = {int(name) for name in os.listdir('/proc/self/fd')}
    return {fd for fd in fds if is_open(fd)}


def is_open(fd: int) -> bool:
    """Whether ``fd`` is an open file descriptor of this process."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def capture_errors(loop: asyncio.AbstractEventLoop) -> list[dict]:
    """Route the loop's exception handler into a list of contexts."""
    contexts: list[dict] = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    return contexts


def free_port(family: int = socket.AF_INET, type_: int = socket.SOCK_STREAM) -> tuple[socket.socket, int]:
    """A bound, not listening socket and its port: connecting to it is refused while it
    stays open (nothing listens), and nothing else can take the port."""
    host = '::1' if family == socket.AF_INET6 else '127.0.0.1'
    s = socket.socket(family, type_)
    s.bind((host, 0))
    return s, s.getsockname()[1]


class Recorder(asyncio.Protocol):
    """A Protocol that records its call sequence and the bytes it receives."""

    def __init__(self, eof_result=None) -> None:
        loop = asyncio.get_running_loop()
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport = None
        self.eof_result = eof_result
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.lost_exc = None

    def _note(self, name: str) -> None:
        if not (name == DATA and self.calls and self.calls[-1] == DATA):
            self.calls.append(name)

    def connection_made(self, transport) -> None:
        self._note(MADE)
        self.transport = transport
        if not self.made.done():
            self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes), type(data)
        self._note(DATA)
        self.data += data

    def eof_received(self):
        self._note(EOF)
        if not self.eof.done():
            self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc) -> None:
        self._note(LOST)
        self.lost_exc = exc
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self._note(PAUSE)

    def resume_writing(self) -> None:
        self._note(RESUME)

    async def read(self, n: int, timeout: float = 5.0) -> bytes:
        """Wait until at least ``n`` bytes arrived; return all received so far."""
        await wait_until(lambda: len(self.data) >= n or self.lost.done(), timeout)
        return bytes(self.data)


class DatagramRecorder(asyncio.DatagramProtocol):
    """A DatagramProtocol that records datagrams and errors."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.calls: list[str] = []
        self.datagrams: list[tuple[bytes, object]] = []
        self.errors: list[Exception] = []
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport) -> None:
        self.calls.append(MADE)
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr) -> None:
        self.calls.append(DATA)
        self.datagrams.append((data, addr))

    def error_received(self, exc) -> None:
        self.calls.append('error')
        self.errors.append(exc)

    def connection_lost(self, exc) -> None:
        self.calls.append(LOST)
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_datagrams(self, n: int, timeout: float = 5.0) -> list:
        await wait_until(lambda: len(self.datagrams) >= n, timeout)
        return self.datagrams


@contextlib.asynccontextmanager
async def stream_pair(loop, kind: str, path: str | None = None, client=Recorder, server=Recorder):
    """A connected (client protocol, server protocol) pair over TCP ('tcp') or a Unix
    socket ('unix', at ``path``); both transports are aborted and the server closed after."""
    accepted: list = []

    def factory():
        proto = server()
        accepted.append(proto)
        return proto

    if kind == 'tcp':
        srv = await loop.create_server(factory, '127.0.0.1', 0)
        connect = loop.create_connection(client, *srv.sockets[0].getsockname()[:2])
    else:
        srv = await loop.create_unix_server(factory, path)
        connect = loop.create_unix_connection(client, path)
    protos = []
    try:
        _, cproto = await connect
        protos.append(cproto)
        await wait_until(lambda: accepted and accepted[0].transport is not None)
        protos.append(accepted[0])
        yield cproto, accepted[0]
    finally:
        protos.extend(p for p in accepted if p not in protos)
        for p in protos:
            if p.transport is not None and not p.lost.done():
                p.transport.abort()
        srv.close()
        for p in protos:
            if p.transport is not None:
                await asyncio.wait_for(asyncio.shield(p.lost), 5)
        await srv.wait_closed()
