"""run_forever / run_until_complete / stop / close and the running-loop bookkeeping."""

import asyncio
import gc
import re
import weakref

import pytest


def test_run_until_complete_returns_coroutine_result(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42


def test_run_until_complete_raises_coroutine_exception(loop):
    async def main():
        await asyncio.sleep(0)
        raise ZeroDivisionError('boom')

    with pytest.raises(ZeroDivisionError, match='boom'):
        loop.run_until_complete(main())


def test_run_until_complete_future_result(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 'done')
    assert loop.run_until_complete(fut) == 'done'


def test_run_until_complete_future_exception(loop):
    fut = loop.create_future()
    loop.call_later(0.001, fut.set_exception, KeyError('k'))
    with pytest.raises(KeyError):
        loop.run_until_complete(fut)


def test_run_until_complete_cancelled_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_already_done_future(loop):
    fut = loop.create_future()
    fut.set_result(7)
    assert loop.run_until_complete(fut) == 7
    assert not loop.is_running()


def test_run_until_complete_stopped_before_future_completed(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match=r'^Event loop stopped before Future completed\.$'):
        loop.run_until_complete(fut)
    assert not fut.done()
    # The loop can be used again afterwards and the future completes.
    loop.call_soon(fut.set_result, 1)
    assert loop.run_until_complete(fut) == 1


def test_run_until_complete_awaits_timers(loop):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.02)
        return loop.time() - t0

    assert loop.run_until_complete(main()) >= 0.02


def test_run_stop_runs_already_scheduled_callbacks(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_soon(loop.stop)
    loop.call_soon(calls.append, 2)
    loop.run_forever()
    assert calls == [1, 2]


def test_run_stop_before_run_forever_runs_one_iteration(loop):
    calls = []
    loop.call_soon(calls.append, 'a')
    loop.stop()
    loop.run_forever()
    assert calls == ['a']
    assert not loop.is_running()


def test_run_stop_leaves_callbacks_scheduled_during_iteration(loop):
    calls = []

    def first():
        calls.append('first')
        loop.call_soon(second)
        loop.stop()

    def second():
        calls.append('second')
        loop.stop()

    loop.call_soon(first)
    loop.run_forever()
    assert calls == ['first']
    loop.run_forever()
    assert calls == ['first', 'second']


def test_run_forever_can_be_restarted(loop):
    calls = []
    for i in range(3):
        loop.call_soon(calls.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert calls == [0, 1, 2]


def test_run_is_running_and_is_closed(loop):
    seen = []
    assert not loop.is_running()
    assert not loop.is_closed()
    loop.call_soon(lambda: seen.append(loop.is_running()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [True]
    assert not loop.is_running()
    loop.close()
    assert loop.is_closed()
    assert not loop.is_running()


def test_run_get_running_loop_inside_and_outside(loop):
    seen = []

    def cb():
        seen.append(asyncio.get_running_loop())
        seen.append(asyncio.get_event_loop())

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [loop, loop]
    with pytest.raises(RuntimeError, match='no running event loop'):
        asyncio.get_running_loop()


def test_run_running_loop_reset_after_exception(loop):
    def cb():
        raise KeyboardInterrupt

    loop.call_soon(cb)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    with pytest.raises(RuntimeError, match='no running event loop'):
        asyncio.get_running_loop()


def test_run_current_task(loop):
    seen = []

    async def main():
        seen.append(asyncio.current_task())
        return asyncio.current_task(loop)

    task = loop.create_task(main())
    assert loop.run_until_complete(task) is task
    assert seen == [task]
    # A plain callback is not running inside a task.
    loop.call_soon(lambda: seen.append(asyncio.current_task()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [task, None]


def test_run_forever_nested_raises(loop):
    errors = []

    def cb():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ['This event loop is already running']
    assert not loop.is_running()


def test_run_until_complete_on_running_loop_raises(loop):
    errors = []

    async def inner():
        return 1

    def cb():
        fut = loop.create_future()
        try:
            loop.run_until_complete(fut)
        except RuntimeError as exc:
            errors.append(str(exc))
        coro = inner()
        try:
            loop.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ['This event loop is already running'] * 2


def test_run_other_loop_while_running_raises(loop, loop_factory):
    other = loop_factory()
    errors = []

    def cb():
        for run in (other.run_forever, lambda: other.run_until_complete(other.create_future())):
            try:
                run()
            except RuntimeError as exc:
                errors.append(str(exc))
            # CPython 3.13.0's refused run_forever() clears the running loop (see
            # test_divergence_refused_run_forever_keeps_the_running_loop); put it back,
            # or the next attempt runs `other` for ever.
            asyncio.events._set_running_loop(loop)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ['Cannot run the event loop while another loop is running'] * 2
    assert not other.is_running()
    # The other loop still works once the first one is no longer running.
    assert other.run_until_complete(asyncio.sleep(0, 'ok')) == 'ok'


def test_run_close_running_loop_raises(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ['Cannot close a running event loop']
    assert not loop.is_closed()


def test_run_close_is_idempotent(loop):
    loop.close()
    loop.close()
    assert loop.is_closed()


def test_run_close_drops_pending_callbacks(loop):
    class Callback:
        def __call__(self):
            raise AssertionError('must not run')

    cb = Callback()
    ref = weakref.ref(cb)
    loop.call_soon(cb)
    loop.call_later(0.001, cb)
    del cb
    loop.close()
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize(
    'call',
    [
        pytest.param(lambda lp: lp.call_soon(print), id='call_soon'),
        pytest.param(lambda lp: lp.call_later(1, print), id='call_later'),
        pytest.param(lambda lp: lp.call_at(lp.time() + 1, print), id='call_at'),
        pytest.param(lambda lp: lp.call_soon_threadsafe(print), id='call_soon_threadsafe'),
        pytest.param(lambda lp: lp.run_forever(), id='run_forever'),
        pytest.param(lambda lp: lp.run_until_complete(lp.create_future()), id='run_until_complete'),
        pytest.param(lambda lp: lp.run_in_executor(None, print), id='run_in_executor'),
    ],
)
def test_run_closed_loop_raises(loop, call):
    loop.close()
    with pytest.raises(RuntimeError, match=r'^Event loop is closed$'):
        call(loop)


def test_run_closed_loop_rejects_coroutine_and_task(loop):
    async def main():
        pass

    loop.close()
    coro = main()
    try:
        with pytest.raises(RuntimeError, match=r'^Event loop is closed$'):
            loop.run_until_complete(coro)
        with pytest.raises(RuntimeError, match=r'^Event loop is closed$'):
            loop.create_task(coro)
    finally:
        coro.close()


def test_run_keyboard_interrupt_from_coroutine(loop):
    async def main():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, 'again')) == 'again'


def test_run_closed_loop_is_garbage_collected(loop):
    # A closed loop whose callbacks referenced it (loop -> handle -> bound method ->
    # loop) is collected.
    lp = type(loop)()
    lp.call_soon(lp.stop)
    lp.run_forever()
    lp.call_later(10, lp.stop)
    lp.call_soon(lp.stop)
    lp.close()
    ref = weakref.ref(lp)
    del lp
    gc.collect()
    assert ref() is None


def test_run_unclosed_loop_warns(loop):
    def drop_unclosed_loop():
        lp = type(loop)()
        lp.call_soon(print)  # the handle refers to the loop: a reference cycle
        ref = weakref.ref(lp)
        del lp
        gc.collect()
        return ref

    with pytest.warns(ResourceWarning, match='unclosed event loop'):
        ref = drop_unclosed_loop()
    assert ref() is None


def test_run_until_complete_stops_after_future_iteration(loop):
    # run_until_complete() returns at the end of the iteration in which the future
    # completed; callbacks queued behind it in that iteration still run.
    calls = []
    fut = loop.create_future()
    loop.call_soon(fut.set_result, None)
    loop.call_soon(calls.append, 'same iteration')
    loop.run_until_complete(fut)
    assert calls == ['same iteration']


def test_run_until_complete_foreign_future_rejected(loop, loop_factory):
    other = loop_factory()
    fut = other.create_future()
    with pytest.raises(ValueError, match='The future belongs to a different loop than the one specified as the loop'):
        loop.run_until_complete(fut)


def test_run_get_event_loop_set_loop(loop):
    asyncio.set_event_loop(loop)
    assert asyncio.get_event_loop() is loop

    async def main():
        return asyncio.get_event_loop()

    assert loop.run_until_complete(main()) is loop


def test_run_repr(loop):
    assert re.fullmatch(r'<\w+ running=False closed=False debug=False>', repr(loop))
    seen = []
    loop.call_soon(lambda: seen.append(repr(loop)))
    loop.call_soon(loop.stop)
    loop.set_debug(True)
    loop.run_forever()
    assert re.fullmatch(r'<\w+ running=True closed=False debug=True>', seen[0])
    loop.close()
    assert re.fullmatch(r'<\w+ running=False closed=True debug=True>', repr(loop))
