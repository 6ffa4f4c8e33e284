"""TCP (or Unix-socket) echo server on streams: asyncio.start_server, reader.read, writer.write + drain."""

from __future__ import annotations

import asyncio

from _serverlib import BACKLOG, parse_args, serve, sockname

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
    if args.unix:
        server = await asyncio.start_unix_server(echo, args.unix, backlog=BACKLOG)
    else:
        server = await asyncio.start_server(echo, args.host, args.port, backlog=BACKLOG)
    return sockname(server)


if __name__ == '__main__':
    args = parse_args(__doc__)
    serve(args, start)
