"""TCP (or Unix-socket) echo server on asyncio.Protocol: data_received -> transport.write."""

from __future__ import annotations

import asyncio

from _serverlib import BACKLOG, parse_args, serve, sockname


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def start(loop: asyncio.AbstractEventLoop) -> str:
    if args.unix:
        server = await loop.create_unix_server(Echo, args.unix, backlog=BACKLOG)
    else:
        server = await loop.create_server(Echo, args.host, args.port, backlog=BACKLOG)
    return sockname(server)


if __name__ == '__main__':
    args = parse_args(__doc__)
    serve(args, start)
