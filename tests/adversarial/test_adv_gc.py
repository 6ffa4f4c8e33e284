"""The garbage collector may run at any allocation, including while a transport
object is being made: CPython 3.11 allocates the ``__dict__`` of a new object after
the object is tracked and before its Rust fields are written, so a collection there
traverses zeroed fields (oxloop's transports crashed on a NULL ``extra``). Every
transport kind is made with a collection due at each of the first allocations, in a
child interpreter (a crash must fail the test, not the run)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import warnings
import weakref

import pytest
from conftest import LOOP_SOURCE, new_loop

_BODY = textwrap.dedent(
    """
    import gc, os, socket, ssl

    CERT = os.path.join(os.path.dirname(__import__('test').__file__), 'certdata', 'keycert.pem')
    if not os.path.exists(CERT):
        CERT = os.path.join(os.path.dirname(__import__('test').__file__), 'keycert.pem')

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def collecting(make):
        # A collection at every allocation, starting at each of three phases (a
        # collection resets the count, so one phase alone may step over the
        # allocation that matters).
        made = []
        for phase in range(3):
            gc.collect()
            gc.set_threshold(1)
            junk = [[] for _ in range(phase)]
            try:
                made.append(await make())
            finally:
                gc.set_threshold(700)
            del junk
        return made

    async def stream():
        a, b = socket.socketpair()
        tr, _ = await loop.connect_accepted_socket(Echo, a)
        b.send(b'x')
        await asyncio.sleep(0.01)
        tr.close()
        b.close()

    async def datagram():
        dtr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0))
        dtr.close()

    async def pipes():
        r, w = os.pipe()
        rtr, _ = await loop.connect_read_pipe(asyncio.Protocol, os.fdopen(r, 'rb', 0))
        wtr, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, 'wb', 0))
        rtr.close()
        wtr.close()

    async def main():
        await collecting(stream)
        await collecting(datagram)
        await collecting(pipes)
        await collecting(tls)

    async def tls():
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(CERT)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.check_hostname = False
        cctx.verify_mode = ssl.CERT_NONE
        server = await loop.create_server(Echo, '127.0.0.1', 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port, ssl=cctx)
        writer.write(b'ping')
        assert await reader.readexactly(4) == b'ping'
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    loop.close()
    gc.collect()
    print('ok')
    """
)


def _run_child(loop_impl: str, body: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``body`` in a child interpreter with ``loop`` made; it must exit 0 printing 'ok'."""
    proc = subprocess.run(
        [sys.executable, '-c', LOOP_SOURCE[loop_impl] + body],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == 'ok'
    return proc


def test_gc_at_every_allocation_while_transports_are_made(loop_impl):
    _run_child(loop_impl, _BODY, timeout=120)


_UNCLOSED_AT_EXIT = textwrap.dedent(
    """
    import socket

    async def main():
        global kept
        kept = []
        for _ in range(3):
            a, b = socket.socketpair()
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
            kept.append((transport, b))

    loop.run_until_complete(main())
    print('ok')
    """
)


def test_unclosed_transports_freed_at_interpreter_exit_print_no_errors(loop_impl):
    """Transports left open in module globals are freed while the interpreter shuts
    down (oxloop's are in no reference cycle): their ResourceWarning must not turn into
    an ImportError from a destructor that imports too late."""
    proc = _run_child(loop_impl, _UNCLOSED_AT_EXIT, timeout=60)
    assert 'Error' not in proc.stderr, proc.stderr[-2000:]


# --------------------------------------------------------------------------------------
# Handles and the collector. oxloop takes a queued handle out of the collector's lists
# while the loop holds it (issue 11: a thousand queued handles were walked on every
# collection); these check that a cycle through a handle is still collected once the
# loop lets it go, and that nothing a queued handle holds is collected meanwhile.


class _Holder:
    """An object in a cycle with the handle of its own callback (obj -> handle ->
    bound method -> obj), as code that keeps its timer handle makes."""

    def __init__(self) -> None:
        self.handle: object = None
        self.ran = 0

    def method(self) -> None:
        self.ran += 1


def _collected(ref: weakref.ref) -> bool:
    for _ in range(3):
        gc.collect()
    return ref() is None


@pytest.mark.parametrize('how', ['call_soon', 'call_later', 'call_at', 'call_soon_threadsafe'])
def test_cycle_through_a_handle_that_ran_is_collected(loop, how):
    holder = _Holder()
    if how == 'call_soon':
        holder.handle = loop.call_soon(holder.method)
    elif how == 'call_later':
        holder.handle = loop.call_later(0, holder.method)
    elif how == 'call_at':
        holder.handle = loop.call_at(loop.time(), holder.method)
    else:
        holder.handle = loop.call_soon_threadsafe(holder.method)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert holder.ran == 1
    ref = weakref.ref(holder)
    del holder
    assert _collected(ref)


@pytest.mark.parametrize('how', ['call_soon', 'call_later'])
def test_cycle_through_a_pending_handle_is_collected_after_close(loop_factory, how):
    lp = loop_factory()
    holder = _Holder()
    holder.handle = lp.call_soon(holder.method) if how == 'call_soon' else lp.call_later(3600, holder.method)
    lp.close()
    ref = weakref.ref(holder)
    del holder
    assert _collected(ref)


def test_a_queued_callback_survives_collections(loop):
    """What only a queued handle holds (a callback whose object is in a cycle of its
    own) stays alive and intact through collections until it runs."""

    class Cyclic:
        def __init__(self) -> None:
            self.me = self
            self.payload = list(range(10))

    seen = []

    def record(c: Cyclic) -> None:
        seen.append(sum(c.me.payload))

    for _ in range(50):
        loop.call_soon(record, Cyclic())
        loop.call_later(0, record, Cyclic())
    for _ in range(3):
        gc.collect()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == [45] * 100


def test_an_unreferenced_loop_with_pending_callbacks_is_collected(loop_impl):
    """An unclosed loop that nothing references is collected (after asyncio's
    ResourceWarning), pending callbacks and all: its handles point back at it."""
    lp = new_loop(loop_impl)
    holder = _Holder()
    lp.call_soon(holder.method)
    lp.call_later(3600, holder.method)
    ref = weakref.ref(lp)
    holder_ref = weakref.ref(holder)
    del holder
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ResourceWarning)
        del lp
        assert _collected(ref)
    assert _collected(holder_ref)
