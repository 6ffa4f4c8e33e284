"""The websockets library's own asyncio server and client on the loop under test."""

from __future__ import annotations

import pytest
import websockets
from _integ import run
from oxl_asgi_app import loop_name
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve


async def _echo(conn: ServerConnection) -> None:
    async for message in conn:
        if isinstance(message, str) and message.startswith('close '):
            await conn.close(code=int(message.split()[1]))
        elif message == 'loop':
            await conn.send(loop_name())
        else:
            await conn.send(message)


def test_echo_ping_and_close_codes(loop, loop_impl):
    async def main():
        async with serve(_echo, '127.0.0.1', 0, max_size=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f'ws://127.0.0.1:{port}', max_size=None) as conn:
                await conn.send('loop')
                assert (await conn.recv()).startswith({'oxloop': 'oxloop.', 'asyncio': 'asyncio.'}[loop_impl])
                payload = bytes(range(256)) * 16384  # 4 MiB in one message
                await conn.send(payload)
                assert await conn.recv() == payload
                fragments = [f'part-{i} ' for i in range(50)]
                await conn.send(iter(fragments))  # one message, sent as 50 frames
                assert await conn.recv() == ''.join(fragments)
                latency = await (await conn.ping())
                assert latency >= 0
                await conn.send('close 4005')
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await conn.recv()
                assert closed.value.rcvd.code == 4005

    run(loop, main())
