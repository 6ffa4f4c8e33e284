"""``get_extra_info`` of a socket transport (issue 11): oxloop reads the socket's
addresses from the kernel when the transport is made, as asyncio's ``__init__`` does,
but builds the Python objects (the ``TransportSocket``, the address tuples) only when
they are first asked for. What a user sees must be asyncio's: the same values, asked
before or after the connection is closed, the same keys in the same order."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest

TIMEOUT = 5.0


async def _connection(loop: asyncio.AbstractEventLoop, family: str):
    """A (client transport, server transport, cleanup) over TCP (IPv4/IPv6) or Unix."""
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if not accepted.done():
                accepted.set_result(transport)  # type: ignore[arg-type]

    tmp = None
    if family == 'unix':
        tmp = tempfile.mkdtemp()
        path = os.path.join(tmp, 's')
        server = await loop.create_unix_server(Server, path)
        client, _ = await loop.create_unix_connection(asyncio.Protocol, path)
    else:
        host = '127.0.0.1' if family == 'ipv4' else '::1'
        server = await loop.create_server(Server, host, 0)
        port = server.sockets[0].getsockname()[1]
        client, _ = await loop.create_connection(asyncio.Protocol, host, port)
    served = await asyncio.wait_for(accepted, TIMEOUT)

    async def cleanup() -> None:
        client.close()
        served.close()
        server.close()
        await server.wait_closed()
        if tmp is not None:
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
            os.rmdir(tmp)

    return client, served, cleanup


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(('::1', 0))
        return True
    except OSError:
        return False


FAMILIES = ['ipv4', 'unix'] + (['ipv6'] if _has_ipv6() else [])


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('when', ['open', 'closed'])
def test_addresses_match_the_socket_before_and_after_close(loop, family, when):
    async def main() -> None:
        client, served, cleanup = await _connection(loop, family)
        csock = client.get_extra_info('socket')
        expected = {
            'client': (csock.getsockname(), csock.getpeername()),
        }
        ssock = served.get_extra_info('socket')
        expected['served'] = (ssock.getsockname(), ssock.getpeername() if family != 'unix' else '')
        if when == 'closed':
            client.close()
            served.close()
            await asyncio.sleep(0.01)
        got = {
            'client': (client.get_extra_info('sockname'), client.get_extra_info('peername')),
            'served': (served.get_extra_info('sockname'), served.get_extra_info('peername')),
        }
        await cleanup()
        assert got == expected

    loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))


@pytest.mark.parametrize('family', FAMILIES)
def test_first_asked_after_close(loop, family):
    """Nothing asked while open: the values are still those of the open socket, and
    the socket wrapper is a TransportSocket over the (now closed) socket."""

    async def main() -> tuple[object, object, int, str]:
        client, _served, cleanup = await _connection(loop, family)
        client.close()
        await asyncio.sleep(0.01)
        sockname = client.get_extra_info('sockname')
        peername = client.get_extra_info('peername')
        wrapper = client.get_extra_info('socket')
        await cleanup()
        return sockname, peername, wrapper.fileno(), type(wrapper).__name__

    sockname, peername, fileno, wrapper_type = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert wrapper_type == 'TransportSocket'
    assert fileno == -1
    if family == 'ipv4':
        assert sockname[0] == '127.0.0.1' and isinstance(sockname[1], int)
        assert peername[0] == '127.0.0.1'
    elif family == 'ipv6':
        assert sockname[0] == '::1' and len(sockname) == 4
    else:
        assert sockname == '' and isinstance(peername, str) and peername.endswith('/s')


@pytest.mark.parametrize('family', FAMILIES)
def test_extra_keys_and_order_are_asyncios(loop, family):
    async def main() -> tuple[list[str], list[str], object]:
        client, served, cleanup = await _connection(loop, family)
        keys = (list(client._extra), list(served._extra))  # type: ignore[attr-defined]
        missing = client.get_extra_info('no such key', 'default')
        await cleanup()
        return keys[0], keys[1], missing

    client_keys, served_keys, missing = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert client_keys == ['socket', 'sockname', 'peername']
    assert served_keys == ['peername', 'socket', 'sockname']
    assert missing == 'default'


def test_connect_accepted_socket_of_an_unconnected_peer(loop):
    """getpeername() fails (ENOTCONN) on a socket that is not connected: None, as
    asyncio stores when the call raises."""

    async def main() -> tuple[object, object]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(('127.0.0.1', 0))
        sock.setblocking(False)
        expected = sock.getsockname()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock)
        try:
            return transport.get_extra_info('peername'), transport.get_extra_info('sockname') == expected
        finally:
            transport.close()

    peer, same = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert peer is None
    assert same
