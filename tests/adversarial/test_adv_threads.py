"""Threads racing the loop's ``close()``, ``stop()`` and ``call_soon_threadsafe``.

Nothing may crash or hang; the errors other threads see are asyncio's (which one
depends on timing, so the test asserts the kinds and messages, not the order).
"""

from __future__ import annotations

import asyncio
import threading
import time

CLOSED = 'Event loop is closed'


def hammer(fn, stop: threading.Event, errors: list, calls: list) -> threading.Thread:
    """Calls ``fn()`` in a thread until ``stop`` is set, recording what it raises."""

    def run():
        while not stop.is_set():
            try:
                fn()
                calls.append(1)
            except Exception as exc:  # noqa: BLE001 - recorded and checked
                errors.append(exc)
                time.sleep(0.0005)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def only_closed_errors(errors: list) -> bool:
    return all(type(e) is RuntimeError and str(e) == CLOSED for e in errors)


def test_threadsafe_calls_race_close(loop_factory):
    for _ in range(5):
        loop = loop_factory()
        stop = threading.Event()
        errors: list = []
        calls: list = []
        threads = [hammer(lambda lp=loop: lp.call_soon_threadsafe(lambda: None), stop, errors, calls) for _ in range(3)]
        loop.run_until_complete(asyncio.sleep(0.02))
        loop.close()
        time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(5)
            assert not t.is_alive()
        assert calls
        assert errors
        assert only_closed_errors(errors)


def test_close_from_another_thread_while_running(loop):
    result: list = []

    def closer():
        try:
            loop.close()
            result.append(None)
        except Exception as exc:  # noqa: BLE001
            result.append(exc)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(threading.Thread(target=closer).start)
    loop.run_forever()
    (exc,) = result
    assert type(exc) is RuntimeError
    assert str(exc) == 'Cannot close a running event loop'
    assert not loop.is_closed()
    # still usable, then closes normally
    assert loop.run_until_complete(asyncio.sleep(0, 'ok')) == 'ok'
    loop.close()
    assert loop.is_closed()


def test_stop_and_threadsafe_wakeups_race_run(loop):
    """Threads stop the loop and wake it while it runs again and again."""
    stop = threading.Event()
    errors: list = []
    calls: list = []
    threads = [
        hammer(lambda: loop.call_soon_threadsafe(loop.stop), stop, errors, calls),
        hammer(lambda: loop.call_soon_threadsafe(lambda: None), stop, errors, calls),
    ]
    deadline = time.monotonic() + 0.3
    runs = 0
    while time.monotonic() < deadline:
        loop.call_later(1, loop.stop)  # bounded even if every wake-up were lost
        loop.run_forever()
        runs += 1
    stop.set()
    for t in threads:
        t.join(5)
    assert runs > 1
    assert errors == []
    loop.close()


def test_close_races_threadsafe_from_callbacks_of_other_loop(loop_factory):
    """A loop in another thread posts to this one while this one closes."""
    target = loop_factory()
    other = loop_factory()
    errors: list = []

    async def post():
        for _ in range(2000):
            try:
                target.call_soon_threadsafe(lambda: None)
            except RuntimeError as exc:
                errors.append(exc)
                return
            await asyncio.sleep(0)

    t = threading.Thread(target=other.run_until_complete, args=(post(),))
    t.start()
    target.run_until_complete(asyncio.sleep(0.01))
    target.close()
    t.join(10)
    assert not t.is_alive()
    assert only_closed_errors(errors)
    with_closed = []
    try:
        target.call_soon_threadsafe(lambda: None)
    except RuntimeError as exc:
        with_closed.append(str(exc))
    assert with_closed == [CLOSED]


def test_close_twice_from_two_threads(loop_factory):
    """The stdlib loop's own close() is not thread-safe (the loser may get an
    AttributeError from the torn-down self-pipe): at most one thread fails, and the
    loop ends closed."""
    for _ in range(10):
        loop = loop_factory()
        loop.run_until_complete(asyncio.sleep(0))
        barrier = threading.Barrier(2)
        errors: list = []

        def close(lp=loop, b=barrier, errors=errors):
            b.wait()
            try:
                lp.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=close) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len(errors) <= 1
        assert loop.is_closed()
