"""README's "Coming from uvloop" section: its snippets run, and what it says differs does.

The snippets are taken from README.md itself and run in a child interpreter on oxloop, and
again with every ``oxloop`` name replaced by ``uvloop``'s (the mapping table is right only
if both run). Each claim is checked on the stdlib loop (the reference), oxloop and uvloop,
with what README says each one does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import uvloop

README = Path(__file__).resolve().parent.parent / 'README.md'
IMPLS = ('asyncio', 'oxloop', 'uvloop')


def factory(impl: str):
    if impl == 'oxloop':
        import oxloop  # imported lazily, as in conftest: collection works before the extension is built

        return oxloop.new_event_loop
    return {'asyncio': asyncio.new_event_loop, 'uvloop': uvloop.new_event_loop}[impl]


def section_snippets() -> list[str]:
    text = README.read_text()
    match = re.search(r'^## Coming from uvloop\n(.*?)(?=^## )', text, re.MULTILINE | re.DOTALL)
    assert match, 'README.md has no "## Coming from uvloop" section'
    return re.findall(r'^```python\n(.*?)^```', match.group(1), re.MULTILINE | re.DOTALL)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


def run(impl: str, coro_fn, timeout: float = 10):
    """Run ``coro_fn(loop)`` to completion on a fresh loop of ``impl``."""

    async def main():
        return await asyncio.wait_for(coro_fn(asyncio.get_running_loop()), timeout)

    with asyncio.Runner(loop_factory=factory(impl)) as runner:
        return runner.run(main())


def test_section_has_snippets():
    assert section_snippets()


@pytest.mark.parametrize('name', ['oxloop', 'uvloop'])
def test_snippets_run(run_python, name: str):
    for snippet in section_snippets():
        code = snippet.replace('oxloop', name)
        result = run_python(code, timeout=30)
        assert result.returncode == 0, f'{name}:\n{code}\n{result.stderr}'


def test_oxloop_install_does_not_warn():
    import oxloop

    with warnings.catch_warnings():
        warnings.simplefilter('error')
        oxloop.install()  # the autouse fixture puts the previous policy back


def test_uvloop_install_warns_from_312():
    if sys.version_info >= (3, 12):
        with pytest.warns(DeprecationWarning, match='uvloop.install'):
            uvloop.install()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            uvloop.install()


@pytest.mark.parametrize('how', [('-X', 'dev'), ('-W', 'default')])
def test_debug_mode_reports_a_slow_callback(run_python, impl: str, how: tuple[str, ...]):
    """``-X dev`` and PYTHONASYNCIODEBUG (given with an unrelated -W) turn debug mode on;
    the slow callback is named with its definition only off uvloop."""
    code = f"""
        import asyncio, logging, time
        logging.basicConfig(format='%(message)s')

        def slow():
            time.sleep(0.06)

        async def main():
            loop = asyncio.get_running_loop()
            print(loop.get_debug())
            loop.slow_callback_duration = 0.05
            loop.call_soon(slow)
            await asyncio.sleep(0.01)

        import {impl}
        with asyncio.Runner(loop_factory={impl}.new_event_loop) as runner:
            runner.run(main())
    """
    env = {} if how[0] == '-X' else {'PYTHONASYNCIODEBUG': '1'}
    result = run_python(code, args=how, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['True']
    line = next(x for x in result.stderr.splitlines() if x.startswith('Executing <Handle'))
    assert re.search(r' took \d+\.\d+ seconds$', line), line
    assert ('slow() at ' in line) is (impl != 'uvloop')


def test_loop_time_resolution(impl: str):
    async def readings(loop):
        out = []
        for _ in range(20):
            out.append(loop.time())
            end = time.monotonic() + 0.0003
            while time.monotonic() < end:  # time passes inside one callback
                pass
        return out

    whole_ms = [abs(t * 1000 - round(t * 1000)) < 1e-6 for t in run(impl, readings)]
    # uvloop's clock is whole milliseconds; monotonic() readings almost never are.
    assert all(whole_ms) if impl == 'uvloop' else not all(whole_ms)


@pytest.mark.parametrize('impl', ['asyncio', 'oxloop'])
def test_timers_never_fire_before_their_deadline(impl: str):
    async def early(loop):
        count = 0
        for _ in range(20):
            start = time.monotonic()
            await asyncio.sleep(0.0105)
            count += time.monotonic() - start < 0.0105
        return count

    assert run(impl, early) == 0


def test_handles_are_asyncio_classes(impl: str):
    async def handles(loop):
        h, th = loop.call_soon(print), loop.call_later(10, print)
        h.cancel()
        th.cancel()
        return isinstance(h, asyncio.Handle), isinstance(th, asyncio.TimerHandle)

    expected = (False, False) if impl == 'uvloop' else (True, True)
    assert run(impl, handles) == expected


def test_extra_info_socket(impl: str):
    async def sock_type(loop):
        srv = await loop.create_server(asyncio.Protocol, '127.0.0.1', 0)
        tr, _ = await loop.create_connection(asyncio.Protocol, *srv.sockets[0].getsockname()[:2])
        kind = type(tr.get_extra_info('socket')).__name__
        tr.close()
        srv.close()
        await srv.wait_closed()
        return kind

    assert run(impl, sock_type) == ('PseudoSocket' if impl == 'uvloop' else 'TransportSocket')


def test_subprocess_pipe_extra_info(impl: str):
    async def pipe(loop):
        tr, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, sys.executable, '-c', 'pass', stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        pipe = tr.get_pipe_transport(0).get_extra_info('pipe')
        tr.close()
        await asyncio.sleep(0.05)  # let the transport report the exit before the loop closes
        return pipe

    pipe = run(impl, pipe)
    assert (pipe is None) if impl == 'uvloop' else hasattr(pipe, 'fileno')


def test_set_default_executor_refuses_a_process_pool(impl: str):
    async def refused(loop):
        with concurrent.futures.ProcessPoolExecutor(1) as pool:
            try:
                loop.set_default_executor(pool)
            except TypeError:
                return True
            loop._default_executor = None  # uvloop took it: don't let the runner shut it down twice
            return False

    assert run(impl, refused) is (impl != 'uvloop')


def test_private_attributes(impl: str):
    async def attrs(loop):
        return [
            a for a in ('_ready', '_scheduled', '_selector', '_transports', '_default_executor') if hasattr(loop, a)
        ]

    assert len(run(impl, attrs)) == (0 if impl == 'uvloop' else 5)


def test_protocol_factory_runs_without_a_task(impl: str):
    async def factory_task(loop):
        seen = []

        def factory():
            seen.append(asyncio.current_task())
            return asyncio.Protocol()

        srv = await loop.create_server(factory, '127.0.0.1', 0)
        _, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        while not seen:
            await asyncio.sleep(0.01)
        w.close()
        srv.close()
        await srv.wait_closed()
        return seen[0]

    task = run(impl, factory_task)
    assert (task is not None) if impl == 'asyncio' else (task is None)


def _blocks_the_loop(impl: str, call) -> bool:
    """Whether ``call(loop, sock, peer)`` on a blocking socket keeps a 20 ms timer from running
    until a thread makes it return (0.3 s later)."""

    async def main(loop):
        a, b = socket.socketpair()
        ls = socket.create_server(('127.0.0.1', 0))
        a.setblocking(True)
        ls.setblocking(True)
        fired = []
        loop.call_later(0.02, fired.append, True)

        def unblock():
            time.sleep(0.3)
            b.send(b'x')
            socket.create_connection(ls.getsockname()).close()

        thread = threading.Thread(target=unblock)
        thread.start()
        try:
            await call(loop, a, ls)
            return not fired
        finally:
            thread.join(5)  # before the sockets it uses are closed
            for s in (a, b, ls):
                s.close()

    return run(impl, main)


def test_sock_recv_on_a_blocking_socket(impl: str):
    assert _blocks_the_loop(impl, lambda loop, a, ls: loop.sock_recv(a, 1)) is (impl == 'asyncio')


@pytest.mark.parametrize('method', ['sock_recv_into', 'sock_accept'])
def test_other_sock_methods_on_a_blocking_socket(impl: str, method: str):
    async def call(loop, a, ls):
        if method == 'sock_recv_into':
            await loop.sock_recv_into(a, bytearray(1))
        else:
            conn, _ = await loop.sock_accept(ls)
            conn.close()

    assert _blocks_the_loop(impl, call) is (impl != 'uvloop')


def test_call_soon_of_a_non_callable(impl: str):
    async def refused(loop):
        try:
            loop.call_soon(1).cancel()
        except TypeError:
            return True
        return False

    assert run(impl, refused) is (impl == 'oxloop')
