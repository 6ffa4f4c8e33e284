"""getaddrinfo / getnameinfo on loopback names (no network)."""

import asyncio
import socket

import pytest


@pytest.mark.parametrize(
    ('host', 'port', 'kwargs'),
    [
        ('127.0.0.1', 80, {}),
        ('127.0.0.1', 8080, {'type': socket.SOCK_STREAM}),
        ('127.0.0.1', '53', {'type': socket.SOCK_DGRAM, 'proto': socket.IPPROTO_UDP}),
        ('localhost', 80, {'family': socket.AF_INET, 'type': socket.SOCK_STREAM}),
        ('localhost', None, {'family': socket.AF_INET}),
        ('127.0.0.1', 0, {'flags': socket.AI_NUMERICHOST | socket.AI_PASSIVE}),
        (None, 8000, {'flags': socket.AI_PASSIVE, 'type': socket.SOCK_STREAM}),
        ('::1', 80, {'family': socket.AF_INET6, 'type': socket.SOCK_STREAM}),
    ],
    ids=['ipv4', 'stream', 'dgram-str-port', 'localhost', 'no-port', 'flags', 'passive', 'ipv6'],
)
def test_dns_getaddrinfo_matches_socket(loop, host, port, kwargs):
    try:
        expected = socket.getaddrinfo(host, port, **kwargs)
    except socket.gaierror as exc:
        pytest.skip(f'not resolvable on this host: {exc}')
    assert loop.run_until_complete(loop.getaddrinfo(host, port, **kwargs)) == expected


def test_dns_getaddrinfo_error(loop):
    with pytest.raises(socket.gaierror) as info:
        socket.getaddrinfo('not-an-address', 80, flags=socket.AI_NUMERICHOST)
    expected_errno = info.value.errno
    with pytest.raises(socket.gaierror) as info:
        loop.run_until_complete(loop.getaddrinfo('not-an-address', 80, flags=socket.AI_NUMERICHOST))
    assert info.value.errno == expected_errno


@pytest.mark.parametrize(
    ('sockaddr', 'flags'),
    [
        (('127.0.0.1', 80), 0),
        (('127.0.0.1', 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (('127.0.0.1', 53), socket.NI_DGRAM),
    ],
    ids=['default', 'numeric', 'dgram'],
)
def test_dns_getnameinfo_matches_socket(loop, sockaddr, flags):
    expected = socket.getnameinfo(sockaddr, flags)
    assert loop.run_until_complete(loop.getnameinfo(sockaddr, flags)) == expected


def test_dns_getaddrinfo_concurrent(loop):
    async def main():
        return await asyncio.gather(*(loop.getaddrinfo('127.0.0.1', p, type=socket.SOCK_STREAM) for p in range(20)))

    try:
        results = loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
    assert results == [socket.getaddrinfo('127.0.0.1', p, type=socket.SOCK_STREAM) for p in range(20)]
