"""oxloop.metrics(loop): counters, lag and callback timing of an oxloop loop.

Metrics are oxloop's own API; on the stdlib loop each test checks that it is refused
with a TypeError (the stdlib loop keeps no such counters), so that nothing pretends
to measure a loop it cannot see into.
"""

from __future__ import annotations

import asyncio
import socket
import time

import oxloop
import pytest
from _net import run


def _refused_on_the_stdlib(loop, loop_impl) -> bool:
    if loop_impl == 'oxloop':
        return False
    with pytest.raises(TypeError, match='oxloop loops only'):
        oxloop.metrics(loop)
    with pytest.raises(TypeError, match='oxloop loops only'):
        oxloop.time_callbacks(loop)
    return True


def test_metrics_count_iterations_and_callbacks(loop, loop_impl):
    if _refused_on_the_stdlib(loop, loop_impl):
        return
    before = oxloop.metrics(loop)
    for _ in range(50):
        loop.call_soon(lambda: None)
    cancelled = loop.call_soon(lambda: None)
    cancelled.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    after = oxloop.metrics(loop)
    assert after.callbacks - before.callbacks == 51  # the 50 and stop(); not the cancelled one
    assert after.iterations > before.iterations


def test_metrics_lag_sees_a_late_timer(loop, loop_impl):
    if _refused_on_the_stdlib(loop, loop_impl):
        return

    async def main():
        fired = loop.create_future()
        loop.call_later(0.01, fired.set_result, None)
        time.sleep(0.08)  # noqa: ASYNC251 - blocks the loop past the timer's deadline, on purpose
        await fired

    run(loop, main())
    lag = oxloop.metrics(loop).lag
    assert lag.samples >= 1
    assert 0.05 <= lag.max < 5
    assert lag.p50 <= lag.p90 <= lag.p99 <= lag.max


def test_metrics_slow_callbacks_only_while_timing(loop, loop_impl):
    if _refused_on_the_stdlib(loop, loop_impl):
        return

    def slow():
        time.sleep(0.02)

    loop.call_soon(slow)
    loop.call_soon(loop.stop)
    loop.run_forever()
    off = oxloop.metrics(loop).slow_callbacks
    assert (off.timing, off.over_1ms, off.over_10ms) == (False, 0, 0)

    oxloop.time_callbacks(loop)
    loop.call_soon(slow)
    loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    on = oxloop.metrics(loop).slow_callbacks
    assert (on.timing, on.over_1ms, on.over_10ms, on.over_100ms, on.over_1s) == (True, 1, 1, 0, 0)

    oxloop.time_callbacks(loop, False)
    loop.call_soon(slow)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert oxloop.metrics(loop).slow_callbacks == on.__class__(False, 1, 1, 0, 0)


def test_metrics_fds_timers_and_transports(loop, loop_impl):
    if _refused_on_the_stdlib(loop, loop_impl):
        return
    base = oxloop.metrics(loop)
    a, b = socket.socketpair()
    try:
        loop.add_reader(a.fileno(), lambda: None)
        timers = [loop.call_later(60, print) for _ in range(3)]
        timers[0].cancel()
        m = oxloop.metrics(loop)
        assert m.fds_watched == base.fds_watched + 1
        assert m.timers_pending == base.timers_pending + 2
        loop.remove_reader(a.fileno())
        for timer in timers:
            timer.cancel()
        assert oxloop.metrics(loop).fds_watched == base.fds_watched
    finally:
        a.close()
        b.close()

    async def echo_once():
        server = await asyncio.start_server(_echo, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'x' * 1000)
        await reader.readexactly(1000)
        during = oxloop.metrics(loop)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        return during

    during = run(loop, echo_once())
    after = oxloop.metrics(loop)
    assert during.transports_open == base.transports_open + 2  # both ends
    assert after.transports_open == base.transports_open
    # 1,000 bytes each way, each counted by the side that wrote and the one that read
    assert after.bytes_written - base.bytes_written == 2000
    assert after.bytes_read - base.bytes_read == 2000


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readexactly(1000))
    await writer.drain()
    await reader.read()
    writer.close()


def test_metrics_poll_and_run_time(loop, loop_impl):
    if _refused_on_the_stdlib(loop, loop_impl):
        return
    before = oxloop.metrics(loop)
    run(loop, asyncio.sleep(0.05))
    after = oxloop.metrics(loop)
    polled = after.poll_seconds - before.poll_seconds
    ran = after.run_seconds - before.run_seconds
    assert 0.04 <= polled <= ran < 5
    assert after.busy_seconds >= 0


def test_metrics_of_the_running_loop_and_bad_arguments(loop, loop_impl):
    if _refused_on_the_stdlib(loop, loop_impl):
        return

    async def main():
        return oxloop.metrics().iterations

    assert run(loop, main()) >= 1
    with pytest.raises(RuntimeError):
        oxloop.metrics()  # no running loop, none given
    with pytest.raises(TypeError):
        oxloop.metrics(object())  # type: ignore[arg-type]
    oxloop.time_callbacks(loop, 'yes')  # type: ignore[arg-type] # truthy, as bool() takes it
    assert oxloop.metrics(loop).slow_callbacks.timing is True
    loop.close()
    closed = oxloop.metrics(loop)  # a closed loop still answers with its totals
    assert closed.fds_watched == 0


def test_metrics_leave_out_the_loops_own_self_pipe(loop, loop_impl):
    if _refused_on_the_stdlib(loop, loop_impl):
        return
    import signal

    before = oxloop.metrics(loop).fds_watched
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    try:
        assert oxloop.metrics(loop).fds_watched == before
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
