"""Debug mode: get/set_debug, environment, slow callbacks, source tracebacks, thread checks."""

import asyncio
import logging
import os
import re
import sys
import threading
import time

import pytest

SLOW_RE = r'Executing {} took \d+\.\d{{3}} seconds'


def callback():
    pass


def test_debug_default_follows_interpreter_mode(loop):
    expected = sys.flags.dev_mode or bool(os.environ.get('PYTHONASYNCIODEBUG'))
    assert loop.get_debug() is expected


def test_debug_set_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.parametrize(
    ('env', 'args', 'expected'),
    [
        ({}, (), 'False'),
        ({'PYTHONASYNCIODEBUG': '1'}, (), 'True'),
        ({}, ('-X', 'dev'), 'True'),
        ({'PYTHONASYNCIODEBUG': ''}, (), 'False'),
    ],
    ids=['default', 'env-var', 'dev-mode', 'empty-env-var'],
)
def test_debug_from_environment(loop_impl, run_python, env, args, expected):
    result = run_python('print(loop.get_debug())\nloop.close()\n', impl=loop_impl, env=env, args=args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'{expected}\n'


def test_debug_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


def test_debug_slow_callback_warning(loop, caplog, run_briefly):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def slow():
        time.sleep(0.06)

    loop.call_soon(slow)
    loop.call_soon(callback)  # fast: no warning
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run_briefly(loop)
    warnings = [r for r in caplog.records if r.name == 'asyncio' and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert re.fullmatch(SLOW_RE.format(r'<Handle .*slow\(\) at .*>'), warnings[0].getMessage())


def test_debug_slow_timer_callback_warning(loop, caplog, run_with_deadline):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def slow():
        time.sleep(0.06)
        loop.stop()

    loop.call_later(0.001, slow)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        assert run_with_deadline(loop)
    warnings = [r.getMessage() for r in caplog.records if r.name == 'asyncio' and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert re.fullmatch(SLOW_RE.format(r'<TimerHandle when=\S+ .*slow\(\) at .*>'), warnings[0])


def test_debug_slow_task_step_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    async def slow_step():
        time.sleep(0.06)  # noqa: ASYNC251 - a slow step is what is tested

    with caplog.at_level(logging.WARNING, logger='asyncio'):
        loop.run_until_complete(loop.create_task(slow_step(), name='slowpoke'))
    warnings = [r.getMessage() for r in caplog.records if r.name == 'asyncio' and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert re.fullmatch(SLOW_RE.format(r'<Task .*name=.slowpoke. .*>'), warnings[0], re.DOTALL)


def test_debug_no_slow_warning_outside_debug(loop, caplog, run_briefly):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.001
    loop.call_soon(time.sleep, 0.01)
    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        run_briefly(loop)
    assert [r for r in caplog.records if r.name == 'asyncio'] == []


def test_debug_source_traceback(loop):
    loop.set_debug(True)
    h = loop.call_soon(callback)
    line = sys._getframe().f_lineno - 1
    t = loop.call_later(10, callback)
    tb = h._source_traceback
    assert tb, 'debug-mode handles record where they were created'
    assert tb[-1].filename == __file__
    assert tb[-1].lineno == line
    assert tb[-1].name == 'test_debug_source_traceback'
    assert t._source_traceback[-1].lineno == line + 2
    assert t._source_traceback[-1].name == 'test_debug_source_traceback'
    t.cancel()


def test_debug_source_traceback_call_at_and_threadsafe(loop):
    loop.set_debug(True)
    line = sys._getframe().f_lineno
    handles = [loop.call_at(loop.time() + 10, callback), loop.call_soon_threadsafe(callback)]
    for h in handles:
        assert h._source_traceback[-1].lineno == line + 1
        assert h._source_traceback[-1].name == 'test_debug_source_traceback_call_at_and_threadsafe'
        h.cancel()


def test_debug_no_source_traceback_outside_debug(loop):
    loop.set_debug(False)
    h = loop.call_soon(callback)
    t = loop.call_later(10, callback)
    assert h._source_traceback is None
    assert t._source_traceback is None
    t.cancel()


def test_debug_source_traceback_in_exception_context(loop, run_briefly):
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad():
        raise ValueError

    h = loop.call_soon(bad)
    run_briefly(loop)
    assert contexts[0]['source_traceback'] is h._source_traceback
    assert contexts[0]['source_traceback'][-1].name == 'test_debug_source_traceback_in_exception_context'


@pytest.mark.parametrize(
    'call',
    [
        pytest.param(lambda lp: lp.call_soon(callback), id='call_soon'),
        pytest.param(lambda lp: lp.call_later(1, callback), id='call_later'),
        pytest.param(lambda lp: lp.call_at(lp.time() + 1, callback), id='call_at'),
    ],
)
def test_debug_non_threadsafe_call_from_other_thread(loop, call, run_with_deadline):
    loop.set_debug(True)
    errors = []
    stopped = []

    def worker():
        try:
            call(loop)
        except RuntimeError as exc:
            errors.append(str(exc))
        # call_soon_threadsafe() is allowed from any thread.
        loop.call_soon_threadsafe(stopped.append, True)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    try:
        assert run_with_deadline(loop)
    finally:
        t.join(5)
    assert errors == ['Non-thread-safe operation invoked on an event loop other than the current one']
    assert stopped == [True]


def test_debug_other_thread_allowed_when_not_running(loop, run_briefly):
    # The thread check only applies while the loop runs (in another thread).
    loop.set_debug(True)
    calls = []
    t = threading.Thread(target=loop.call_soon, args=(calls.append, 'queued'))
    t.start()
    t.join(5)
    run_briefly(loop)
    assert calls == ['queued']


def test_debug_coroutine_origin_tracking(loop):
    loop.set_debug(True)
    before = sys.get_coroutine_origin_tracking_depth()

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    assert loop.run_until_complete(main()) == asyncio.constants.DEBUG_STACK_DEPTH
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_debug_coroutine_origin_tracking_off_outside_debug(loop):
    loop.set_debug(False)
    before = sys.get_coroutine_origin_tracking_depth()

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    assert loop.run_until_complete(main()) == before


def test_debug_run_in_debug_mode_via_runner(loop_impl, run_python):
    code = """
    import asyncio, sys
    async def main():
        return asyncio.get_running_loop().get_debug()
    with asyncio.Runner(debug=True, loop_factory=lambda: loop) as r:
        print(r.run(main()))
    """
    result = run_python(code, impl=loop_impl)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'True\n'


def test_debug_task_source_traceback_ends_where_it_was_created(loop):
    # asyncio drops loop.create_task's own frame from a task's traceback: it ends at
    # the caller of loop.create_task, or inside asyncio.create_task when that called it.
    # (oxloop's create_task has no Python frame; it dropped the caller's instead.)
    loop.set_debug(True)

    async def noop():
        pass

    async def main():
        direct = loop.create_task(noop())
        via_asyncio = asyncio.create_task(noop())
        await direct
        await via_asyncio
        return direct._source_traceback[-1], via_asyncio._source_traceback[-1]

    direct, via_asyncio = loop.run_until_complete(main())
    assert (direct.name, direct.filename) == ('main', __file__)
    assert via_asyncio.name == 'create_task'
    assert via_asyncio.filename.endswith(('asyncio/tasks.py', 'asyncio\\tasks.py'))
