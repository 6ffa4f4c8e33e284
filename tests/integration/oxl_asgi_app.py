"""The ASGI application every server in tests/integration serves (plain ASGI, no framework).

    GET  /loop    the module and name of the loop class running the request
    GET  /client  the client's port (one connection: the same port every time)
    POST /echo    the request body back
    GET  /stream  STREAM_CHUNKS chunks, each sent as its own ASGI message
    GET  /big     BIG_SIZE bytes of BIG_BLOCK, a block per message (a slow client pushes back)
    GET  /slow    'done' after SLOW_SECONDS (a request in flight when the server stops)
    WS   /ws      echoes text and binary messages; the text 'close <code>' closes with <code>

Lifespan shutdown writes LIFESPAN_SHUTDOWN to stderr, so that a test can see the server
stopped cleanly after a signal.
"""

from __future__ import annotations

import asyncio
import sys

LIFESPAN_SHUTDOWN = 'oxl-asgi-app: lifespan shutdown'
STREAM_CHUNKS = [b'chunk-%d;' % i * 100 for i in range(20)]
BIG_BLOCK = bytes(range(256)) * 256  # 64 KiB
BIG_SIZE = 16 * 1024 * 1024
SLOW_SECONDS = 0.3


def loop_name() -> str:
    cls = type(asyncio.get_running_loop())
    return f'{cls.__module__}.{cls.__qualname__}'


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message['type'] == 'lifespan.startup':
            await send({'type': 'lifespan.startup.complete'})
        elif message['type'] == 'lifespan.shutdown':
            print(LIFESPAN_SHUTDOWN, file=sys.stderr, flush=True)
            await send({'type': 'lifespan.shutdown.complete'})
            return


async def _respond(send, body: bytes, status: int = 200) -> None:
    headers = [(b'content-type', b'application/octet-stream'), (b'content-length', str(len(body)).encode())]
    await send({'type': 'http.response.start', 'status': status, 'headers': headers})
    await send({'type': 'http.response.body', 'body': body})


async def _http(scope, receive, send) -> None:
    path = scope['path']
    if path == '/loop':
        await _respond(send, loop_name().encode())
    elif path == '/client':
        await _respond(send, str(scope['client'][1]).encode())
    elif path == '/echo':
        body = bytearray()
        while True:
            message = await receive()
            body += message.get('body', b'')
            if not message.get('more_body'):
                break
        await _respond(send, bytes(body))
    elif path == '/stream':
        await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'text/plain')]})
        for chunk in STREAM_CHUNKS:
            await send({'type': 'http.response.body', 'body': chunk, 'more_body': True})
            await asyncio.sleep(0)
        await send({'type': 'http.response.body', 'body': b''})
    elif path == '/slow':
        await asyncio.sleep(SLOW_SECONDS)
        await _respond(send, b'done')
    elif path == '/big':
        headers = [(b'content-length', str(BIG_SIZE).encode())]
        await send({'type': 'http.response.start', 'status': 200, 'headers': headers})
        for _ in range(BIG_SIZE // len(BIG_BLOCK)):
            await send({'type': 'http.response.body', 'body': BIG_BLOCK, 'more_body': True})
        await send({'type': 'http.response.body', 'body': b''})
    else:
        await _respond(send, b'not found', 404)


async def _websocket(receive, send) -> None:
    message = await receive()
    assert message['type'] == 'websocket.connect'
    await send({'type': 'websocket.accept'})
    while True:
        message = await receive()
        if message['type'] == 'websocket.disconnect':
            return
        text = message.get('text')
        if text is not None and text.startswith('close '):
            await send({'type': 'websocket.close', 'code': int(text.split()[1])})
            return
        if text is not None:
            await send({'type': 'websocket.send', 'text': text})
        else:
            await send({'type': 'websocket.send', 'bytes': message['bytes']})


async def app(scope, receive, send) -> None:
    if scope['type'] == 'lifespan':
        await _lifespan(receive, send)
    elif scope['type'] == 'http':
        await _http(scope, receive, send)
    elif scope['type'] == 'websocket':
        await _websocket(receive, send)
