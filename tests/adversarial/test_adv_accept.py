"""The accept path fed what users get wrong: exits from protocol factories in the
middle of an accept batch, odd backlogs, and accepted sockets collected in cycles.
Each test runs on both loops and compares with the stdlib's loop."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import warnings

import pytest
from _net import open_fds, run, wait_until

BATCH = 8


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_adv_accept_exit_from_factory_mid_batch_leaks_nothing(loop, exc_type):
    # The whole batch is in the accept queue before the loop looks: the first
    # factory call raises, the rest of the batch must still be owned and served.
    gc.collect()  # garbage of earlier tests may hold fds
    fds_before = open_fds()
    calls = []
    made = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise exc_type()
        return Proto()

    server = run(loop, loop.create_server(factory, '127.0.0.1', 0, backlog=BATCH * 2))
    addr = server.sockets[0].getsockname()
    clients = [socket.create_connection(addr) for _ in range(BATCH)]
    with warnings.catch_warnings():
        # The connection whose factory raised is dropped unclosed, on both loops.
        warnings.simplefilter('ignore', ResourceWarning)
        with pytest.raises(exc_type):
            loop.run_forever()
        # The rest of the batch is served when the loop runs again, as asyncio's
        # queued _accept_connection2 tasks are.
        run(loop, wait_until(lambda: len(made) == BATCH - 1))
        assert len(calls) == BATCH
        for tr in made:
            tr.close()
        server.close()
        run(loop, server.wait_closed())
        for c in clients:
            c.close()
        loop.close()
        del made[:], server
        gc.collect()
    assert open_fds() - fds_before == set()  # (the loop's own fds are closed too)


@pytest.mark.parametrize('backlog', [0, -1])
def test_adv_accept_non_positive_backlog_accepts_nothing(loop, backlog):
    # listen() takes any int (the kernel caps it); asyncio's accept loop is
    # `for _ in range(backlog)`: nothing is accepted, and nothing is reported.
    errors = []
    calls = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def factory():
        calls.append(1)
        return asyncio.Protocol()

    async def main():
        server = await loop.create_server(factory, '127.0.0.1', 0, backlog=backlog)
        async with server:
            with socket.create_connection(server.sockets[0].getsockname()):
                await asyncio.sleep(0.1)

    run(loop, main())
    assert calls == []
    assert errors == []


def test_adv_accept_unclosed_transport_in_a_cycle_closes_its_socket(loop):
    # The server side's transport and protocol reference each other and are left
    # unclosed: the GC collects them with the accepted socket. The transport's
    # finalizer must close that socket (a ResourceWarning), not fail on it.
    gc.collect()  # garbage of earlier tests may hold fds
    fds_before = open_fds()
    unraisable = []
    made = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport  # the cycle
            made.append(1)

    async def main():
        server = await loop.create_server(Proto, '127.0.0.1', 0)
        client = socket.create_connection(server.sockets[0].getsockname())
        await wait_until(lambda: made)
        server.close()
        return client

    client = run(loop, main())
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            loop.close()
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    client.close()
    assert [u.exc_type for u in unraisable] == []
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert open_fds() - fds_before == set()  # (the loop's own fds are closed too)


def test_adv_accept_sockets_are_plain_sockets(loop):
    # What the protocol gets is a working socket.socket: dup(), makefile() and the
    # fd's lifetime behave as on a socket from socket.accept().
    got = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            got.append(transport)

    async def main():
        server = await loop.create_server(Proto, '127.0.0.1', 0)
        async with server:
            client = socket.create_connection(server.sockets[0].getsockname())
            await wait_until(lambda: got)
            tsock = got[0].get_extra_info('socket')
            assert tsock.family == socket.AF_INET
            assert tsock.type == socket.SOCK_STREAM
            dup = tsock.dup()
            try:
                assert type(dup) is socket.socket
                dup.sendall(b'ping')
            finally:
                dup.close()
            assert client.recv(4) == b'ping'
            got[0].close()
            await asyncio.sleep(0.01)
            assert client.recv(1) == b''
            client.close()

    run(loop, main())
