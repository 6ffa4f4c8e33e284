"""The aiohttp application of test_int_aiohttp.py: the same routes as oxl_asgi_app.

    GET  /loop    the module and name of the loop class running the request
    GET  /client  the client's port (one connection: the same port every time)
    POST /echo    the request body back
    GET  /stream  STREAM_CHUNKS, each written and drained on its own
    GET  /big     BIG_SIZE bytes of BIG_BLOCK, written and drained a block at a time
    GET  /slow    'done' after SLOW_SECONDS (a request in flight when the server stops)
    GET  /file    the file app[FILE] (web.FileResponse: loop.sendfile)
    GET  /ws      WebSocket: echoes text and binary; the text 'close <code>' closes with <code>

The app's cleanup writes CLEANED_UP to stderr, so that a test can see ``web.run_app``
shut down cleanly after a signal.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import WSMsgType, web
from oxl_asgi_app import BIG_BLOCK, BIG_SIZE, SLOW_SECONDS, STREAM_CHUNKS, loop_name

CLEANED_UP = 'oxl-aiohttp-app: cleaned up'
FILE = web.AppKey('file', str)


async def _loop(request: web.Request) -> web.Response:
    return web.Response(text=loop_name())


async def _client(request: web.Request) -> web.Response:
    return web.Response(text=str(request.transport.get_extra_info('peername')[1]))


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for chunk in STREAM_CHUNKS:
        await response.write(chunk)
    await response.write_eof()
    return response


async def _big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = BIG_SIZE
    await response.prepare(request)
    for _ in range(BIG_SIZE // len(BIG_BLOCK)):
        await response.write(BIG_BLOCK)
    await response.write_eof()
    return response


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.Response(text='done')


async def _file(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[FILE])


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT and message.data.startswith('close '):
            await ws.close(code=int(message.data.split()[1]))
        elif message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def _cleaned_up(app: web.Application) -> None:
    print(CLEANED_UP, file=sys.stderr, flush=True)


def make_app(file: str = '') -> web.Application:
    app = web.Application()
    app[FILE] = file
    app.router.add_get('/loop', _loop)
    app.router.add_get('/client', _client)
    app.router.add_post('/echo', _echo)
    app.router.add_get('/stream', _stream)
    app.router.add_get('/big', _big)
    app.router.add_get('/slow', _slow)
    app.router.add_get('/file', _file)
    app.router.add_get('/ws', _ws)
    app.on_cleanup.append(_cleaned_up)
    return app
