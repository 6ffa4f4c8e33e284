"""UDP echo server: loop.create_datagram_endpoint, datagram_received -> transport.sendto.

The socket is made here, with a 1 MiB receive buffer, and handed to the loop: with the
default (~208 KiB, and a 1 KiB datagram takes ~2.3 KiB of it) 100 clients that each
have one datagram in flight overflow it, and the kernel drops datagrams.
"""

from __future__ import annotations

import asyncio
import socket

from _serverlib import parse_args, serve

RCVBUF = 1 << 20


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def start(loop: asyncio.AbstractEventLoop) -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((args.host, args.port))
    sock.setblocking(False)
    transport, _ = await loop.create_datagram_endpoint(Echo, sock=sock)
    host, port = transport.get_extra_info('sockname')[:2]
    return f'{host}:{port}'


if __name__ == '__main__':
    args = parse_args(__doc__, unix=False)
    serve(args, start)
