"""aiohttp's server and client on the loop under test: HTTP, WebSocket, and web.run_app."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from _integ import LOOP_SOURCE, PYTHON, assert_loop, free_port, run
from oxl_aiohttp_app import CLEANED_UP, make_app
from oxl_asgi_app import STREAM_CHUNKS



@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[str]:
    """The app served on a loopback port of the running loop; yields its base URL."""
    runner = web.AppRunner(make_app())
    await runner.setup()
    try:
        site = web.TCPSite(runner, '127.0.0.1', 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f'http://{host}:{port}'
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


RUN_APP = """
import sys
from aiohttp import web
from oxl_aiohttp_app import make_app
web.run_app(make_app(), host='127.0.0.1', port=int(sys.argv[1]), loop=loop)
"""


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_run_app_in_child(loop, loop_impl, server_process, sig):
    port = free_port()
    server = server_process([PYTHON, '-c', LOOP_SOURCE[loop_impl] + RUN_APP, str(port)], port)

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f'http://127.0.0.1:{port}/loop') as r:
                return await r.text()

    assert_loop(run(loop, main()), loop_impl)
    assert server.stop(sig) == 0, server.output()
    assert CLEANED_UP in server.output()
