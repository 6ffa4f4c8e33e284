"""TCP echo server on the loop's socket API: loop.sock_accept, then one task per
connection doing loop.sock_recv / loop.sock_sendall."""

from __future__ import annotations

import asyncio
import socket

from _serverlib import BACKLOG, parse_args, serve

READ_SIZE = 65536


async def echo(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    with conn:
        try:
            while True:
                data = await loop.sock_recv(conn, READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def accept_forever(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        # The transports set TCP_NODELAY on their own; a raw socket needs it set here.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(echo(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def start(loop: asyncio.AbstractEventLoop) -> str:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    global acceptor  # keep a strong reference to the task
    acceptor = loop.create_task(accept_forever(loop, listener))
    host, port = listener.getsockname()[:2]
    return f'{host}:{port}'


acceptor: asyncio.Task[None] | None = None

if __name__ == '__main__':
    args = parse_args(__doc__, unix=False)
    serve(args, start)
