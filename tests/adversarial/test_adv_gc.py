"""The garbage collector may run at any allocation, including while a transport
object is being made: CPython 3.11 allocates the ``__dict__`` of a new object after
the object is tracked and before its Rust fields are written, so a collection there
traverses zeroed fields (oxloop's transports crashed on a NULL ``extra``). Every
transport kind is made with a collection due at each of the first allocations, in a
child interpreter (a crash must fail the test, not the run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import LOOP_SOURCE

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


def test_gc_at_every_allocation_while_transports_are_made(loop_impl):
    proc = subprocess.run(
        [sys.executable, '-c', LOOP_SOURCE[loop_impl] + _BODY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == 'ok'
