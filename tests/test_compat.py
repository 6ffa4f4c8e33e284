"""The compat seam, and the loop API that differs between CPython versions.

oxloop reaches the stdlib's private names only through ``oxloop._compat`` (Python) and
``src/py.rs`` (Rust); these tests check that each of them exists with the shape oxloop
relies on, on the running interpreter, and that nothing else reaches them. The API
tests run on both loops; a feature the running interpreter's stdlib loop lacks is
skipped (or must be refused by both loops alike).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from _net import run

ROOT = Path(__file__).resolve().parent.parent


def _shape_ok(obj: object, shape: object) -> bool:
    if shape == 'class':
        return isinstance(obj, type)
    if shape == 'callable':
        return callable(obj)
    if shape == 'number':
        return isinstance(obj, (int, float))
    # The parameters it starts with; any others have defaults.
    assert isinstance(shape, tuple)
    params = list(inspect.signature(obj).parameters.values())  # type: ignore[arg-type]
    return [p.name for p in params[: len(shape)]] == list(shape) and all(
        p.default is not p.empty for p in params[len(shape) :]
    )


def test_compat_python_names_exist_with_their_shape():
    from oxloop import _compat

    missing = []
    for owner, name, shape in _compat.NAMES:
        obj = getattr(owner, name, None)
        if obj is None or not _shape_ok(obj, shape):
            missing.append(f'{getattr(owner, "__name__", owner)}.{name}: {shape}')
    assert missing == []


def test_compat_rust_names_resolve():
    from oxloop import _oxloop

    names = dict(_oxloop._compat_names())
    assert len(names) >= 25
    for name, obj in names.items():
        assert obj is not None, name
    # The classes that native objects report as their __class__, and the base of
    # isinstance checks, must be classes.
    for name in (
        'asyncio.futures.Future',
        'asyncio.tasks.Task',
        'asyncio.events.Handle',
        'asyncio.events.TimerHandle',
        'asyncio.selector_events._SelectorSocketTransport',
        'asyncio.selector_events._SelectorDatagramTransport',
        'asyncio.unix_events._UnixReadPipeTransport',
        'asyncio.unix_events._UnixWritePipeTransport',
        'asyncio.protocols.BufferedProtocol',
        '_socket.socket',
    ):
        assert isinstance(names[name], type), name
    for name in ('asyncio.base_events.Server._attach', 'asyncio.base_events.Server._detach'):
        from oxloop import _compat

        expected = ['self', 'transport'] if _compat.PY313 else ['self']
        assert list(inspect.signature(names[name]).parameters) == expected


def test_compat_loop_has_the_state_of_this_versions_stdlib_loop():
    # Loop.__init__ does not call the stdlib's: every attribute those set must exist.
    import oxloop

    ref = asyncio.SelectorEventLoop()
    lp = oxloop.new_event_loop()
    try:
        assert sorted(k for k in vars(ref) if not hasattr(lp, k)) == []
    finally:
        ref.close()
        lp.close()


# Private modules of asyncio, and the version checks, allowed only in the seam.
_PY_PRIVATE = re.compile(
    r'\b(?:base_events|selector_events|unix_events|format_helpers|coroutines|trsock|constants|_socket)\b'
    r'|\b(?:events|tasks|futures)\._|sys\.version_info'
)
_RS_PRIVATE = re.compile(r'"asyncio\.|"_socket"|version_info')


def test_compat_private_names_only_in_the_seam():
    found = []
    for path in sorted((ROOT / 'python' / 'oxloop').glob('*.py')):
        if path.name == '_compat.py':
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split('#', 1)[0]
            if _PY_PRIVATE.search(code.replace('``', '')) and not code.lstrip().startswith(('"', "'")):
                found.append(f'{path.name}:{n}: {line.strip()}')
    for path in sorted((ROOT / 'src').rglob('*.rs')):
        if path.name == 'py.rs':
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split('//', 1)[0]
            if _RS_PRIVATE.search(code):
                found.append(f'{path.relative_to(ROOT)}:{n}: {line.strip()}')
    assert found == []


# ----- task factories and naming --------------------------------------------------------


async def _nop() -> None:
    pass


def _factory_names(lp: asyncio.AbstractEventLoop) -> list[object]:
    """Names of tasks made through a task factory, with and without a name, and what a
    factory whose tasks have no set_name() gives."""

    class Bare(asyncio.Future):
        def __init__(self, coro, loop):
            super().__init__(loop=loop)
            coro.close()

    def result(make):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                task = make()
            except Exception as exc:  # noqa: BLE001 - the outcome is compared
                return type(exc).__name__
        if isinstance(task, asyncio.Task):
            lp.run_until_complete(task)
            return task.get_name()
        task.cancel()
        return [type(w.message).__name__ for w in caught]

    out = []
    lp.set_task_factory(lambda loop, coro, **kw: asyncio.Task(coro, loop=loop, **kw))
    out.append(result(lambda: lp.create_task(_nop(), name='given')))
    name = result(lambda: lp.create_task(_nop()))
    out.append(re.sub(r'\d+', 'N', name) if isinstance(name, str) else name)
    lp.set_task_factory(lambda loop, coro, **kw: Bare(coro, loop))
    out.append(result(lambda: lp.create_task(_nop(), name='given')))
    out.append(result(lambda: lp.create_task(_nop())))
    return out


def test_compat_task_factory_naming_as_this_versions_stdlib(loop):
    ref = asyncio.new_event_loop()
    try:
        expected = _factory_names(ref)
    finally:
        ref.close()
    assert _factory_names(loop) == expected
    assert expected[0] == 'given'


@pytest.mark.skipif(not hasattr(asyncio, 'eager_task_factory'), reason='eager tasks are CPython 3.12+')
def test_compat_eager_task_factory(loop):
    order = []

    async def child(tag):
        order.append(f'{tag} start')
        await asyncio.sleep(0)
        order.append(f'{tag} end')
        return tag

    async def main():
        loop.set_task_factory(asyncio.eager_task_factory)
        t = loop.create_task(child('a'), name='eager')
        order.append('created')
        assert t.get_name() == 'eager'
        assert asyncio.current_task() is not t
        done = loop.create_task(_nop())  # completes eagerly: done at once
        assert done.done()
        return await t

    assert run(loop, main()) == 'a'
    assert order == ['a start', 'created', 'a end']


def test_compat_create_task_eager_start_as_this_versions_stdlib(loop):
    # create_task(eager_start=) exists where the stdlib's create_task takes it.
    params = inspect.signature(asyncio.BaseEventLoop.create_task).parameters
    supported = 'eager_start' in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    order = []

    async def child():
        order.append('child')

    async def main():
        if not supported:
            coro = child()
            with pytest.raises(TypeError):
                loop.create_task(coro, eager_start=True)
            coro.close()
            return
        t = loop.create_task(child(), eager_start=True)
        order.append('created')
        await t

    run(loop, main())
    assert order == ([] if not supported else ['child', 'created'])


# ----- loop API added by later versions -------------------------------------------------


@pytest.mark.skipif(not hasattr(asyncio.Server, 'close_clients'), reason='Server.close_clients is CPython 3.13+')
@pytest.mark.parametrize('method', ['close_clients', 'abort_clients'])
def test_compat_server_close_and_abort_clients(loop, method):
    lost = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        server = await loop.create_server(Proto, '127.0.0.1', 0)
        addr = server.sockets[0].getsockname()
        clients = [await asyncio.open_connection(*addr) for _ in range(2)]
        while len(server._clients) < 2:
            await asyncio.sleep(0.001)
        server.close()
        getattr(server, method)()
        await asyncio.wait_for(server.wait_closed(), 5)
        for reader, writer in clients:
            assert await asyncio.wait_for(reader.read(), 5) == b''
            writer.close()
            await writer.wait_closed()

    run(loop, main())
    assert lost == [None, None]


@pytest.mark.skipif(
    'timeout' not in inspect.signature(asyncio.BaseEventLoop.shutdown_default_executor).parameters,
    reason='shutdown_default_executor(timeout=) is CPython 3.12+',
)
def test_compat_shutdown_default_executor_timeout(loop):
    # 3.12 applies the timeout only to the join after the executor has shut down;
    # 3.13 stops waiting and warns.
    source = inspect.getsource(asyncio.BaseEventLoop.shutdown_default_executor)
    gives_up = 'timeouts.timeout(timeout)' in source
    release = threading.Event()

    async def main():
        loop.run_in_executor(None, release.wait, 5)
        await asyncio.sleep(0)
        loop.call_later(0.5, release.set)
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            await loop.shutdown_default_executor(timeout=0.1)
        elapsed = time.monotonic() - started
        release.set()
        return [str(w.message) for w in caught], elapsed

    messages, elapsed = run(loop, main())
    if gives_up:
        assert len(messages) == 1
        assert 'within 0.1 seconds' in messages[0]
        assert elapsed < 0.4
    else:
        assert messages == []
        assert elapsed >= 0.4


@pytest.mark.skipif(
    not hasattr(asyncio.BaseEventLoop, '_run_forever_setup'), reason='_run_forever_setup is CPython 3.13+'
)
def test_compat_run_forever_setup_and_cleanup(loop):
    # How loops integrating a GUI loop drive asyncio's: setup, their own iterations, cleanup.
    ran = []
    loop.call_soon(ran.append, 1)
    loop._run_forever_setup()
    try:
        assert asyncio.get_running_loop() is loop
        assert loop.is_running()
        loop._run_once()
    finally:
        loop._run_forever_cleanup()
    assert ran == [1]
    assert not loop.is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


@pytest.mark.skipif(sys.version_info < (3, 12), reason='create_connection(all_errors=) is CPython 3.12+')
def test_compat_create_connection_all_errors(loop):
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        ports.append(s.getsockname()[1])
        s.close()
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, '', ('127.0.0.1', p)) for p in ports]

    async def getaddrinfo(*args, **kwargs):
        return infos

    async def main():
        loop.getaddrinfo = getaddrinfo
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(asyncio.Protocol, 'localhost', 1, all_errors=True)
        assert len(info.value.exceptions) == 2
        assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)

    run(loop, main())


@pytest.mark.skipif(
    'keep_alive' not in inspect.signature(asyncio.BaseEventLoop.create_server).parameters,
    reason='create_server(keep_alive=) is CPython 3.13+',
)
def test_compat_start_server_keep_alive(loop):
    async def main():
        server = await asyncio.start_server(lambda r, w: None, '127.0.0.1', 0, keep_alive=True)
        async with server:
            assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)

    run(loop, main())
