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
from _integ import PYTHON, ServerProcess, assert_loop, free_port, run
from _tls import SERVER_CERT, SERVER_KEY, client_context
from oxl_asgi_app import BIG_BLOCK, BIG_SIZE, LIFESPAN_SHUTDOWN, SLOW_SECONDS, STREAM_CHUNKS, app
from websockets.asyncio.client import connect as ws_connect

# What uvicorn's loop=/--loop takes to run on each implementation.
UVICORN_LOOP = {'oxloop': 'oxloop:new_event_loop', 'asyncio': 'asyncio'}


@contextlib.asynccontextmanager
async def serving(**config) -> AsyncIterator[str]:
    """oxl_asgi_app served by uvicorn in the running loop; yields its base URL (with
    ``uds=``, an http://localhost URL to use over that socket)."""
    config.setdefault('log_level', 'warning')
    if 'uds' not in config:
        config.update(host='127.0.0.1', port=0)
    server = uvicorn.Server(uvicorn.Config(app, **config))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped the server
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1] if 'uds' not in config else None
    scheme = 'https' if 'ssl_certfile' in config else 'http'
    try:
        yield f'{scheme}://localhost:{port}' if port else 'http://localhost'
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


@pytest.mark.parametrize('http', ['h11', 'httptools'])
def test_big_response_to_a_slow_reader_and_an_abort(loop, http):
    async def main():
        async with serving(http=http) as url, httpx.AsyncClient(base_url=url) as client:
            async with client.stream('GET', '/big') as r:
                received = bytearray()
                async for chunk in r.aiter_bytes(len(BIG_BLOCK)):
                    received += chunk
                    if len(received) % (8 * len(BIG_BLOCK)) == 0:
                        await asyncio.sleep(0.002)
            assert received == BIG_BLOCK * (BIG_SIZE // len(BIG_BLOCK))
            async with client.stream('GET', '/big') as r:
                async for _chunk in r.aiter_raw():
                    break  # leaving the block closes the connection, the server still writing
            assert (await client.get('/loop')).status_code == 200

    run(loop, main())


def test_keep_alive_timeout(loop):
    """The server closes a connection idle for timeout_keep_alive; the client's next
    request then comes on a new connection."""

    async def main():
        async with serving(timeout_keep_alive=0.2) as url, httpx.AsyncClient(base_url=url) as client:
            first = {(await client.get('/client')).text for _ in range(3)}
            await asyncio.sleep(0.5)
            second = (await client.get('/client')).text
            assert len(first) == 1
            assert second not in first

    run(loop, main())


def test_tls(loop, loop_impl):
    async def main():
        async with (
            serving(ssl_certfile=SERVER_CERT, ssl_keyfile=SERVER_KEY) as url,
            httpx.AsyncClient(base_url=url, verify=client_context()) as client,
        ):
            assert_loop((await client.get('/loop')).text, loop_impl)
            body = bytes(range(256)) * 4096
            assert (await client.post('/echo', content=body)).content == body
            async with ws_connect(url.replace('https:', 'wss:') + '/ws', ssl=client_context()) as conn:
                await conn.send(body)
                assert await conn.recv() == body

    run(loop, main())


def test_unix_socket(loop, loop_impl, path):
    async def main():
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with serving(uds=path) as url, httpx.AsyncClient(base_url=url, transport=transport) as client:
            assert_loop((await client.get('/loop')).text, loop_impl)
            assert (await client.post('/echo', content=b'y' * 100000)).content == b'y' * 100000

    run(loop, main())


def test_many_concurrent_requests(loop):
    async def main():
        limits = httpx.Limits(max_connections=10)
        async with serving() as url, httpx.AsyncClient(base_url=url, limits=limits) as client:

            async def echo(i: int) -> bytes:
                return (await client.post('/echo', content=b'%d' % i * 100)).content

            assert await asyncio.gather(*(echo(i) for i in range(200))) == [b'%d' % i * 100 for i in range(200)]

    run(loop, main())


def test_graceful_shutdown_finishes_a_request_in_flight(loop):
    async def main():
        server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=0, log_level='warning'))
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as client:
            request = asyncio.ensure_future(client.get(f'http://127.0.0.1:{port}/slow'))
            await asyncio.sleep(SLOW_SECONDS / 3)  # the request is in the app
            server.should_exit = True
            await task  # stops listening, waits for the request
            assert request.done()
            assert request.result().text == 'done'
            with pytest.raises(httpx.ConnectError):
                await client.get(f'http://127.0.0.1:{port}/loop')

    run(loop, main())


async def _get_loop_name(port: int) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.get(f'http://127.0.0.1:{port}/loop')
        return r.text


# Programs that run uvicorn on a loop (docs/servers.md shows the oxloop ones): with
# Config(loop=...) and Server.run(), or Server.serve() run by oxloop.run / asyncio.run.
PROGRAMS = {
    ('config-loop', 'oxloop'): """
import sys
import uvicorn

config = uvicorn.Config('oxl_asgi_app:app', port=int(sys.argv[1]), loop='oxloop:new_event_loop')
uvicorn.Server(config).run()
""",
    ('config-loop', 'asyncio'): """
import sys
import uvicorn

config = uvicorn.Config('oxl_asgi_app:app', port=int(sys.argv[1]), loop='asyncio')
uvicorn.Server(config).run()
""",
    ('serve', 'oxloop'): """
import sys
import oxloop
import uvicorn

config = uvicorn.Config('oxl_asgi_app:app', port=int(sys.argv[1]))
oxloop.run(uvicorn.Server(config).serve())
""",
    ('serve', 'asyncio'): """
import sys
import asyncio
import uvicorn

config = uvicorn.Config('oxl_asgi_app:app', port=int(sys.argv[1]))
asyncio.run(uvicorn.Server(config).serve())
""",
}


@pytest.mark.parametrize('program', ['config-loop', 'serve'])
def test_program_in_child(loop, loop_impl, program):
    port = free_port()
    with ServerProcess([PYTHON, '-c', PROGRAMS[program, loop_impl], str(port)], port) as server:
        assert_loop(run(loop, _get_loop_name(port)), loop_impl)
        # uvicorn re-raises the signal it caught once it has shut down: the program ends in
        # a KeyboardInterrupt, and an uncaught KeyboardInterrupt ends the process by SIGINT.
        assert server.stop(signal.SIGINT) == -signal.SIGINT, server.output()
        assert LIFESPAN_SHUTDOWN in server.output()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_cli_in_child(loop, loop_impl, sig):
    port = free_port()
    argv = [PYTHON, '-m', 'uvicorn', '--port', str(port), '--loop', UVICORN_LOOP[loop_impl], 'oxl_asgi_app:app']
    with ServerProcess(argv, port) as server:
        assert_loop(run(loop, _get_loop_name(port)), loop_impl)
        # The signal is re-raised after the shutdown; uvicorn's main() turns the
        # KeyboardInterrupt of SIGINT into exit code 0.
        assert server.stop(sig) == (0 if sig == signal.SIGINT else -sig), server.output()
        assert LIFESPAN_SHUTDOWN in server.output()


def test_cli_workers_in_child(loop, loop_impl):
    """--workers 2: uvicorn spawns fresh worker interpreters; --loop's import string
    reaches them (an oxloop.install() in the parent would not)."""
    port = free_port()
    argv = [PYTHON, '-m', 'uvicorn', '--port', str(port), '--workers', '2', '--loop', UVICORN_LOOP[loop_impl]]
    with ServerProcess([*argv, 'oxl_asgi_app:app'], port) as server:

        async def main():
            async with httpx.AsyncClient() as client:
                # New connections, so that both workers are likely asked.
                return {
                    (await client.get(f'http://127.0.0.1:{port}/loop', headers={'connection': 'close'})).text
                    for _ in range(10)
                }

        for name in run(loop, main()):
            assert_loop(name, loop_impl)
        assert server.stop(signal.SIGTERM) == 0, server.output()
        assert server.output().count(LIFESPAN_SHUTDOWN) == 2
