"""get_extra_info and transport._extra made on first use (issue 11, PendingExtra in
src/transports/base.rs): the dict asyncio's transports hold is one object a user may
read and mutate, names are looked up as a dict looks them up, and the values are
those the socket had when the transport was made, whatever happened to the peer
since. Every test runs on both loops; where the answer depends on the interpreter
the same scenario runs on a fresh stdlib loop and the answers are compared.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys

import pytest
from _net import here_and_on_the_stdlib
from conftest import new_loop

TIMEOUT = 5.0


async def _tcp_pair(host: str = '127.0.0.1'):
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            if not accepted.done():
                accepted.set_result(transport)

    server = await loop.create_server(Server, host, 0)
    port = server.sockets[0].getsockname()[1]
    client, _ = await loop.create_connection(asyncio.Protocol, host, port)
    served = await accepted

    async def cleanup():
        client.close()
        served.close()
        server.close()
        await server.wait_closed()

    return client, served, cleanup


@pytest.mark.parametrize('side', ['client', 'served'])
def test_extra_dict_is_one_object_and_user_keys_are_seen(loop, side):
    async def main():
        client, served, cleanup = await _tcp_pair()
        t = client if side == 'client' else served
        d1 = t._extra
        d1['mine'] = 42
        d2 = t._extra
        got = (
            d1 is d2,
            t.get_extra_info('mine'),
            t.get_extra_info('peername') == d1['peername'],
            t.get_extra_info('socket') is d1['socket'],
            t.get_extra_info('socket') is t.get_extra_info('socket'),
            list(d1)[-1],
        )
        await cleanup()
        return got

    got = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert got == (True, 42, True, True, True, 'mine')


@pytest.mark.parametrize('side', ['client', 'served'])
def test_user_overrides_an_address_before_it_was_ever_asked(loop, side):
    """A key written into _extra before get_extra_info ever built it wins."""

    async def main():
        client, served, cleanup = await _tcp_pair()
        t = client if side == 'client' else served
        t._extra['peername'] = 'overridden'
        got = (t.get_extra_info('peername'), list(t._extra))
        del t._extra['sockname']
        got += (t.get_extra_info('sockname', 'gone'),)
        await cleanup()
        return got

    got, expected = here_and_on_the_stdlib(loop, main, timeout=TIMEOUT)
    assert got == expected
    assert got[0] == 'overridden'
    assert got[2] == 'gone'


@pytest.mark.parametrize('side', ['client', 'served'])
def test_first_question_decides_nothing_about_the_key_order(loop, side):
    async def main():
        client, served, cleanup = await _tcp_pair()
        t = client if side == 'client' else served
        t.get_extra_info('peername')
        keys = list(t._extra)
        await cleanup()
        return keys

    got, expected = here_and_on_the_stdlib(loop, main, timeout=TIMEOUT)
    assert got == expected


@pytest.mark.parametrize('name', [[], {}, {1}])
def test_unhashable_name_raises_as_a_dict_does(loop, name):
    async def main():
        client, served, cleanup = await _tcp_pair()
        out = []
        for t in (client, served):
            try:
                t.get_extra_info(name)
            except TypeError as exc:
                out.append(str(exc))
            else:
                out.append('no error')
        await cleanup()
        return out

    got, expected = here_and_on_the_stdlib(loop, main, timeout=TIMEOUT)
    assert got == expected
    assert got[0].startswith('unhashable type')


def test_default_argument_forms(loop):
    async def main():
        client, served, cleanup = await _tcp_pair()
        out = []
        for t in (client, served):
            out.append(t.get_extra_info('nope'))
            out.append(t.get_extra_info('nope', 7))
            out.append(t.get_extra_info('nope', default=8))
            out.append(t.get_extra_info(name='nope', default=9))
            out.append(t.get_extra_info('peername', 'unused') == t.get_extra_info('peername'))
            try:
                t.get_extra_info()
            except TypeError:
                out.append('TypeError')
        await cleanup()
        return out

    got, expected = here_and_on_the_stdlib(loop, main, timeout=TIMEOUT)
    assert got == expected


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='abstract Unix namespace is Linux only')
@pytest.mark.parametrize('client_bound', [False, True])
def test_abstract_namespace_unix_server(loop, client_bound):
    tag = os.getpid()

    async def main(suffix):
        lp = asyncio.get_running_loop()
        name = f'\0oxl-adv-{tag}-{suffix}'
        accepted: asyncio.Future = lp.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        server = await lp.create_unix_server(Server, name)
        csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if client_bound:
            csock.bind(f'\0oxl-adv-{tag}-{suffix}-c')
        csock.setblocking(False)
        await lp.sock_connect(csock, name)
        client, _ = await lp.create_unix_connection(asyncio.Protocol, sock=csock)
        served = await accepted
        out = [
            served.get_extra_info('peername'),
            served.get_extra_info('sockname'),
            client.get_extra_info('peername'),
            client.get_extra_info('sockname'),
            list(served._extra),
        ]
        client.close()
        served.close()
        await asyncio.sleep(0.01)
        out.append(served.get_extra_info('peername'))
        server.close()
        await server.wait_closed()
        return out

    got = loop.run_until_complete(asyncio.wait_for(main('first'), TIMEOUT))
    reference = new_loop('asyncio')
    try:
        expected = reference.run_until_complete(asyncio.wait_for(main('second'), TIMEOUT))
    finally:
        reference.close()

    def norm(v):
        if isinstance(v, (str, bytes)):
            return v.replace(b'first', b'second') if isinstance(v, bytes) else v.replace('first', 'second')
        return v

    assert [norm(v) if not isinstance(v, list) else v for v in got] == expected


def _linger_zero_close(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    s.close()


def test_connect_accepted_socket_whose_peer_reset_already(loop):
    """The peer sent RST before the transport was made: the addresses asyncio reads
    in __init__ and the connection's end are asyncio's."""

    async def main():
        lp = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(('127.0.0.1', 0))
        listener.listen()
        peer = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        listener.close()
        _linger_zero_close(peer)
        await asyncio.sleep(0.02)
        conn.setblocking(False)
        lost: asyncio.Future = lp.create_future()
        calls: list[str] = []

        class P(asyncio.Protocol):
            def data_received(self, data):
                calls.append('data')

            def eof_received(self):
                calls.append('eof')

            def connection_lost(self, exc):
                calls.append('lost')
                lost.set_result(type(exc).__name__)

        t, _ = await lp.connect_accepted_socket(P, conn)
        names = (t.get_extra_info('peername'), type(t.get_extra_info('sockname')).__name__)
        exc = await lost
        after = t.get_extra_info('peername')
        return names, exc, calls, after

    got, expected = here_and_on_the_stdlib(loop, main, timeout=TIMEOUT)
    assert got == expected


def test_peer_reset_before_the_server_transport_is_asked(loop):
    """An accepted connection whose peer resets at once: its peername, asked only
    after connection_lost, is the peer's address (asyncio read it at accept)."""

    async def main():
        lp = asyncio.get_running_loop()
        lost: asyncio.Future = lp.create_future()
        transports = []

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                transports.append(transport)

            def connection_lost(self, exc):
                lost.set_result(type(exc).__name__)

        server = await lp.create_server(P, '127.0.0.1', 0)
        peer = socket.create_connection(server.sockets[0].getsockname())
        peer_addr = peer.getsockname()
        _linger_zero_close(peer)
        exc = await lost
        t = transports[0]
        got = (t.get_extra_info('peername') == peer_addr, exc, t.get_extra_info('socket').fileno())
        server.close()
        await server.wait_closed()
        return got

    got, expected = here_and_on_the_stdlib(loop, main, timeout=TIMEOUT)
    assert got == expected
