"""TCP (or Unix-socket) echo server on streams: asyncio.start_server, reader.read, writer.write + drain.

With --certfile/--keyfile, over TLS (start_server(ssl=...)): the same coroutine."""

from __future__ import annotations

import asyncio

from _serverlib import BACKLOG, parse_args, serve, server_ssl_context, sockname

READ_SIZE = 65536


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def start(loop: asyncio.AbstractEventLoop) -> str:
    ctx = server_ssl_context(args)
    if args.unix:
        server = await asyncio.start_unix_server(echo, args.unix, backlog=BACKLOG, ssl=ctx)
    else:
        server = await asyncio.start_server(echo, args.host, args.port, backlog=BACKLOG, ssl=ctx)
    return sockname(server)


if __name__ == '__main__':
    args = parse_args(__doc__, tls=True)
    serve(args, start)
