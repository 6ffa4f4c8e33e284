"""uvicorn serving oxl_asgi_app, driven by httpx (HTTP) and websockets (WebSocket).

In the test's loop (``Server.serve()``), with ``Config(loop=...)`` + ``Server.run()`` in a
child process, and from the command line (``uvicorn --loop ...``). ``loop=``/``--loop``
takes "auto", "asyncio", "uvloop", "none" or an import string ``module:attr`` of a
zero-argument loop factory (uvicorn.Config.get_loop_factory): ``oxloop:new_event_loop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
import websockets
from _integ import PYTHON, assert_loop, free_port, run
from oxl_asgi_app import LIFESPAN_SHUTDOWN, STREAM_CHUNKS, app
from websockets.asyncio.client import connect as ws_connect

# What uvicorn's loop=/--loop takes to run on each implementation.
UVICORN_LOOP = {'oxloop': 'oxloop:new_event_loop', 'asyncio': 'asyncio'}


@contextlib.asynccontextmanager
async def serving(**config) -> AsyncIterator[str]:
    """oxl_asgi_app served by uvicorn in the running loop; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=0, log_level='warning', **config))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped the server
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f'http://127.0.0.1:{port}'
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize('http', ['h11', 'httptools'])
def test_http(loop, loop_impl, http):
    async def upload():
        for chunk in STREAM_CHUNKS:
            yield chunk

    async def main():
        async with serving(http=http) as url, httpx.AsyncClient(base_url=url) as client:
            assert_loop((await client.get('/loop')).text, loop_impl)
            ports = {(await client.get('/client')).text for _ in range(5)}
            assert len(ports) == 1, f'keep-alive: five requests came from {len(ports)} connections'
            body = bytes(range(256)) * 4096  # 1 MiB: several reads and writes each way
            r = await client.post('/echo', content=body)
            assert r.status_code == 200
            assert r.content == body
            r = await client.post('/echo', content=upload())  # chunked upload
            assert r.content == b''.join(STREAM_CHUNKS)
            async with client.stream('GET', '/stream') as r:
                assert r.headers['transfer-encoding'] == 'chunked'
                received = [chunk async for chunk in r.aiter_raw()]
            assert b''.join(received) == b''.join(STREAM_CHUNKS)
            assert (await client.get('/missing')).status_code == 404

    run(loop, main())


@pytest.mark.parametrize('ws', ['websockets-sansio', 'wsproto'])
def test_websocket(loop, ws):
    async def main():
        async with serving(ws=ws) as url:
            ws_url = url.replace('http:', 'ws:') + '/ws'
            async with ws_connect(ws_url) as conn:
                await conn.send('hello')
                assert await conn.recv() == 'hello'
                payload = bytes(range(256)) * 1024
                await conn.send(payload)
                assert await conn.recv() == payload
                await conn.send('close 4001')  # the server closes with 4001
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await conn.recv()
                assert closed.value.rcvd.code == 4001
            async with ws_connect(ws_url) as conn:
                await conn.send('x')
                assert await conn.recv() == 'x'
                await conn.close(code=4002)  # the client closes; the server answers
                assert conn.close_code == 4002

    run(loop, main())


async def _get_loop_name(port: int) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.get(f'http://127.0.0.1:{port}/loop')
        return r.text


SERVER_RUN = """
import sys
import uvicorn
config = uvicorn.Config('oxl_asgi_app:app', port=int(sys.argv[1]), loop=sys.argv[2])
uvicorn.Server(config).run()
"""


def test_config_loop_in_child(loop, loop_impl, server_process):
    port = free_port()
    server = server_process([PYTHON, '-c', SERVER_RUN, str(port), UVICORN_LOOP[loop_impl]], port)
    assert_loop(run(loop, _get_loop_name(port)), loop_impl)
    # uvicorn re-raises the signal it caught once it has shut down: Server.run() ends in
    # a KeyboardInterrupt, and an uncaught KeyboardInterrupt ends the process by SIGINT.
    assert server.stop(signal.SIGINT) == -signal.SIGINT, server.output()
    assert LIFESPAN_SHUTDOWN in server.output()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_cli_in_child(loop, loop_impl, server_process, sig):
    port = free_port()
    argv = [PYTHON, '-m', 'uvicorn', '--port', str(port), '--loop', UVICORN_LOOP[loop_impl], 'oxl_asgi_app:app']
    server = server_process(argv, port)
    assert_loop(run(loop, _get_loop_name(port)), loop_impl)
    # The signal is re-raised after the shutdown; uvicorn's main() turns the
    # KeyboardInterrupt of SIGINT into exit code 0.
    assert server.stop(sig) == (0 if sig == signal.SIGINT else -sig), server.output()
    assert LIFESPAN_SHUTDOWN in server.output()
