"""hypercorn, gunicorn (uvicorn's workers and its own ASGI worker) and granian serving
oxl_asgi_app on the loop under test, each asked by httpx, then stopped by a signal."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
from _integ import PYTHON, ServerProcess, assert_loop, free_port, run
from _tls import SERVER_CERT, SERVER_KEY, client_context
from hypercorn.asyncio import serve
from hypercorn.config import Config
from oxl_asgi_app import BIG_BLOCK, BIG_SIZE, LIFESPAN_SHUTDOWN, STREAM_CHUNKS, app


async def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection('127.0.0.1', port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def _get_loop_name(port: int) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.get(f'http://127.0.0.1:{port}/loop')
        assert r.status_code == 200
        return r.text


@pytest.mark.parametrize('protocol', ['http1', 'h2c', 'h2-tls'])
def test_hypercorn_serve_in_loop(loop, loop_impl, protocol):
    """hypercorn.asyncio.serve(): the programmatic way, on whatever loop runs it. h2c is
    HTTP/2 with prior knowledge over plain TCP; h2-tls negotiates HTTP/2 by ALPN."""
    port = free_port()
    config = Config()
    config.bind = [f'127.0.0.1:{port}']
    config.loglevel = 'WARNING'
    http2 = protocol != 'http1'
    client_options: dict = {'http1': not http2, 'http2': http2}
    scheme = 'http'
    if protocol == 'h2-tls':
        config.certfile, config.keyfile = SERVER_CERT, SERVER_KEY
        client_options.update(http1=True, verify=client_context(alpn=['h2', 'http/1.1']))
        scheme = 'https'

    async def main():
        stop = asyncio.Event()
        task = asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait))
        try:
            await _wait_port(port)
            async with httpx.AsyncClient(base_url=f'{scheme}://localhost:{port}', **client_options) as client:
                r = await client.get('/loop')
                assert r.http_version == ('HTTP/2' if http2 else 'HTTP/1.1')
                assert_loop(r.text, loop_impl)
                body = bytes(range(256)) * 4096  # 1 MiB: past HTTP/2's initial flow-control windows
                assert (await client.post('/echo', content=body)).content == body
                async with client.stream('GET', '/stream') as r:
                    assert b''.join([chunk async for chunk in r.aiter_raw()]) == b''.join(STREAM_CHUNKS)
                async with client.stream('GET', '/big') as r:
                    assert await r.aread() == BIG_BLOCK * (BIG_SIZE // len(BIG_BLOCK))
                ports = {(await client.get('/client')).text for _ in range(3)}
                assert len(ports) == 1
        finally:
            stop.set()
            await task

    run(loop, main())


def test_hypercorn_cli_in_child(loop, loop_impl):
    """hypercorn's command line spawns a fresh worker interpreter, which imports the app
    module before it creates its loop: that module installs oxloop."""
    port = free_port()
    target = {'oxloop': 'oxl_app_installed:app', 'asyncio': 'oxl_asgi_app:app'}[loop_impl]
    with ServerProcess([PYTHON, '-m', 'hypercorn', '--bind', f'127.0.0.1:{port}', target], port) as server:
        assert_loop(run(loop, _get_loop_name(port)), loop_impl)
        assert server.stop(signal.SIGTERM) == 0, server.output()
        assert LIFESPAN_SHUTDOWN in server.output()


def test_gunicorn_uvicorn_worker_in_child(loop, loop_impl):
    """gunicorn with uvicorn-worker's UvicornWorker, its loop set by CONFIG_KWARGS."""
    port = free_port()
    worker = {'oxloop': 'OxloopUvicornWorker', 'asyncio': 'AsyncioUvicornWorker'}[loop_impl]
    argv = [PYTHON, '-m', 'gunicorn', '--bind', f'127.0.0.1:{port}', '--workers', '1']
    argv += ['--worker-class', f'oxl_gunicorn_workers.{worker}', 'oxl_asgi_app:app']
    with ServerProcess(argv, port) as server:
        assert_loop(run(loop, _get_loop_name(port)), loop_impl)
        assert server.stop(signal.SIGTERM) == 0, server.output()
        assert LIFESPAN_SHUTDOWN in server.output()


def test_gunicorn_asgi_worker_in_child(loop, loop_impl):
    """gunicorn's own ASGI worker: --asgi-loop asyncio calls asyncio.new_event_loop() in the
    forked worker, so a config file that installs oxloop in the master chooses it."""
    port = free_port()
    argv = [PYTHON, '-m', 'gunicorn', '--bind', f'127.0.0.1:{port}', '--workers', '1']
    argv += ['--worker-class', 'asgi', '--asgi-loop', 'asyncio']
    if loop_impl == 'oxloop':
        argv += ['--config', 'oxl_gunicorn_conf.py']
    with ServerProcess([*argv, 'oxl_asgi_app:app'], port) as server:
        assert_loop(run(loop, _get_loop_name(port)), loop_impl)
        assert server.stop(signal.SIGTERM) == 0, server.output()


GRANIAN_WITH_OXLOOP = 'import oxloop; oxloop.install(); from granian.cli import entrypoint; entrypoint()'


def test_granian_in_child(loop, loop_impl):
    """granian's --loop takes a fixed set of names; "asyncio" calls asyncio.new_event_loop()
    in the worker, which is forked (Linux, Python < 3.14) from a parent that installed oxloop."""
    port = free_port()
    launcher = ['-c', GRANIAN_WITH_OXLOOP] if loop_impl == 'oxloop' else ['-m', 'granian']
    args = ['--interface', 'asgi', '--loop', 'asyncio', '--host', '127.0.0.1', '--port', str(port), 'oxl_asgi_app:app']
    with ServerProcess([PYTHON, *launcher, *args], port) as server:
        assert_loop(run(loop, _get_loop_name(port)), loop_impl)
        assert server.stop(signal.SIGTERM) == 0, server.output()
        assert LIFESPAN_SHUTDOWN in server.output()
