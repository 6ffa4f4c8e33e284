"""aiohttp's server and client on the loop under test: HTTP, WebSocket, and web.run_app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from _integ import PYTHON, ServerProcess, assert_loop, free_port, run
from _tls import client_context, server_context
from aiohttp import web
from oxl_aiohttp_app import CLEANED_UP, make_app
from oxl_asgi_app import BIG_BLOCK, BIG_SIZE, SLOW_SECONDS, STREAM_CHUNKS


@contextlib.asynccontextmanager
async def serving(*, file: str = '', ssl_context: ssl.SSLContext | None = None, path: str = '') -> AsyncIterator[str]:
    """The app served by the running loop on a loopback port (over TLS with
    ``ssl_context``) or on the Unix socket ``path``; yields its base URL."""
    runner = web.AppRunner(make_app(file))
    await runner.setup()
    try:
        if path:
            await web.UnixSite(runner, path).start()
            yield 'http://localhost'
        else:
            await web.TCPSite(runner, '127.0.0.1', 0, ssl_context=ssl_context).start()
            port = runner.addresses[0][1]
            # 'localhost' (the certificate's name) goes through aiohttp's resolver and
            # happy eyeballs; the server listens on 127.0.0.1 only.
            yield f'https://localhost:{port}' if ssl_context else f'http://127.0.0.1:{port}'
    finally:
        await runner.cleanup()


def test_http_get_post_keepalive(loop, loop_impl):
    async def main():
        async with serving() as url, aiohttp.ClientSession() as session:
            async with session.get(f'{url}/loop') as r:
                assert_loop(await r.text(), loop_impl)
            ports = set()
            for _ in range(5):
                async with session.get(f'{url}/client') as r:
                    assert r.status == 200
                    ports.add(await r.text())
            body = bytes(range(256)) * 4096  # 1 MiB: several reads and writes each way
            async with session.post(f'{url}/echo', data=body) as r:
                assert r.status == 200
                assert await r.read() == body
            async with session.get(f'{url}/missing') as r:
                assert r.status == 404
            return ports

    ports = run(loop, main())
    assert len(ports) == 1, f'keep-alive: five requests came from {len(ports)} connections'


def test_http_streams(loop):
    async def upload():
        for chunk in STREAM_CHUNKS:
            yield chunk

    async def main():
        async with serving() as url, aiohttp.ClientSession() as session:
            async with session.get(f'{url}/stream') as r:
                assert r.headers.get('Transfer-Encoding') == 'chunked'
                received = [chunk async for chunk in r.content.iter_any()]
            async with session.post(f'{url}/echo', data=upload()) as r:
                echoed = await r.read()
            return received, echoed

    received, echoed = run(loop, main())
    assert b''.join(received) == b''.join(STREAM_CHUNKS)
    assert echoed == b''.join(STREAM_CHUNKS)


def test_websocket_echo_and_close_codes(loop):
    async def main():
        async with serving() as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(f'{url}/ws') as ws:
                await ws.send_str('hello')
                assert await ws.receive_str() == 'hello'
                payload = bytes(range(256)) * 1024
                await ws.send_bytes(payload)
                assert await ws.receive_bytes() == payload
                await ws.send_str('close 4001')  # the server closes with 4001
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.CLOSE
                assert message.data == 4001
            assert ws.close_code == 4001
            async with session.ws_connect(f'{url}/ws') as ws:
                await ws.send_str('x')
                assert await ws.receive_str() == 'x'
                assert await ws.close(code=4002)  # the client closes; the server answers
                assert ws.closed

    run(loop, main())


def test_big_response_to_a_slow_reader_and_an_abort(loop):
    """16 MiB written block by block to a client that reads slowly: the server's writes
    wait for the client (flow control); then a client that aborts halfway."""

    async def main():
        async with serving() as url, aiohttp.ClientSession() as session:
            async with session.get(f'{url}/big') as r:
                received = bytearray()
                async for chunk in r.content.iter_chunked(len(BIG_BLOCK)):
                    received += chunk
                    if len(received) % (8 * len(BIG_BLOCK)) == 0:
                        await asyncio.sleep(0.002)
            assert received == BIG_BLOCK * (BIG_SIZE // len(BIG_BLOCK))
            async with session.get(f'{url}/big') as r:
                await r.content.readexactly(1024 * 1024)
                r.close()  # drops the connection with the server still writing
            async with session.get(f'{url}/loop') as r:
                assert r.status == 200

    run(loop, main())


def test_file_response(loop, tmp_dir):
    """web.FileResponse: the whole file and a range of it (loop.sendfile with an offset)."""
    file = os.path.join(tmp_dir, 'data')
    data = os.urandom(3 * 1024 * 1024)
    with open(file, 'wb') as f:
        f.write(data)

    async def main():
        async with serving(file=file) as url, aiohttp.ClientSession() as session:
            async with session.get(f'{url}/file') as r:
                assert await r.read() == data
            async with session.get(f'{url}/file', headers={'Range': 'bytes=1000000-1999999'}) as r:
                assert r.status == 206
                assert await r.read() == data[1000000:2000000]

    run(loop, main())


def test_tls_http_and_websocket(loop, loop_impl):
    async def main():
        connector = aiohttp.TCPConnector(ssl=client_context())
        async with serving(ssl_context=server_context()) as url, aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f'{url}/loop') as r:
                assert_loop(await r.text(), loop_impl)
            body = os.urandom(1024 * 1024)
            async with session.post(f'{url}/echo', data=body) as r:
                assert await r.read() == body
            async with session.ws_connect(f'{url}/ws') as ws:
                await ws.send_bytes(body)
                assert await ws.receive_bytes() == body
                await ws.send_str('close 4003')
                assert (await ws.receive()).data == 4003

    run(loop, main())


def test_unix_socket(loop, loop_impl, path):
    async def main():
        connector = aiohttp.UnixConnector(path)
        async with serving(path=path) as url, aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f'{url}/loop') as r:
                assert_loop(await r.text(), loop_impl)
            async with session.post(f'{url}/echo', data=b'x' * 100000) as r:
                assert await r.read() == b'x' * 100000

    run(loop, main())


def test_many_concurrent_requests(loop):
    """200 requests at once through a pool of 10 connections."""

    async def main():
        connector = aiohttp.TCPConnector(limit=10)
        async with serving() as url, aiohttp.ClientSession(connector=connector) as session:

            async def echo(i: int) -> bytes:
                async with session.post(f'{url}/echo', data=b'%d' % i * 100) as r:
                    return await r.read()

            results = await asyncio.gather(*(echo(i) for i in range(200)))
            assert results == [b'%d' % i * 100 for i in range(200)]

    run(loop, main())


def test_graceful_shutdown_finishes_a_request_in_flight(loop):
    async def main():
        runner = web.AppRunner(make_app())
        await runner.setup()
        await web.TCPSite(runner, '127.0.0.1', 0).start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:

            async def slow() -> str:
                async with session.get(f'http://127.0.0.1:{port}/slow') as r:
                    return await r.text()

            request = asyncio.ensure_future(slow())
            await asyncio.sleep(SLOW_SECONDS / 3)  # the request is in the handler
            await runner.cleanup()  # stops listening, waits for the handler
            assert request.done()
            assert request.result() == 'done'
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f'http://127.0.0.1:{port}/loop')

    run(loop, main())


# web.run_app with the loop to run on (docs/servers.md shows the oxloop one).
RUN_APP = {
    'oxloop': """
import sys
import oxloop
from aiohttp import web
from oxl_aiohttp_app import make_app

web.run_app(make_app(), host='127.0.0.1', port=int(sys.argv[1]), loop=oxloop.new_event_loop())
""",
    'asyncio': """
import sys
import asyncio
from aiohttp import web
from oxl_aiohttp_app import make_app

web.run_app(make_app(), host='127.0.0.1', port=int(sys.argv[1]), loop=asyncio.new_event_loop())
""",
}


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_run_app_in_child(loop, loop_impl, sig):
    port = free_port()
    with ServerProcess([PYTHON, '-c', RUN_APP[loop_impl], str(port)], port) as server:

        async def main():
            async with aiohttp.ClientSession() as session, session.get(f'http://127.0.0.1:{port}/loop') as r:
                return await r.text()

        assert_loop(run(loop, main()), loop_impl)
        assert server.stop(sig) == 0, server.output()
        assert CLEANED_UP in server.output()
