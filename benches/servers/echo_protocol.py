"""TCP (or Unix-socket) echo server on asyncio.Protocol: data_received -> transport.write.

With --certfile/--keyfile, over TLS (create_server(ssl=...)): the same Protocol."""

from __future__ import annotations

import asyncio

from _serverlib import BACKLOG, parse_args, serve, server_ssl_context, sockname


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def start(loop: asyncio.AbstractEventLoop) -> str:
    ctx = server_ssl_context(args)
    if args.unix:
        server = await loop.create_unix_server(Echo, args.unix, backlog=BACKLOG, ssl=ctx)
    else:
        server = await loop.create_server(Echo, args.host, args.port, backlog=BACKLOG, ssl=ctx)
    return sockname(server)


if __name__ == '__main__':
    args = parse_args(__doc__, tls=True)
    serve(args, start)
