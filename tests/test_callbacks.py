"""call_soon: order, arguments, contexts, input checks."""

import asyncio
import contextvars
import functools

import pytest

var = contextvars.ContextVar('var', default='default')


def test_callbacks_fifo_order(loop, run_briefly):
    calls = []
    for i in range(1000):
        loop.call_soon(calls.append, i)
    run_briefly(loop)
    assert calls == list(range(1000))


def test_callbacks_positional_args(loop, run_briefly):
    calls = []
    loop.call_soon(lambda *a: calls.append(a), 1, 'two', None)
    loop.call_soon(functools.partial(calls.append, 'partial'))
    run_briefly(loop)
    assert calls == [(1, 'two', None), 'partial']


def test_callbacks_scheduled_during_run_wait_for_next_iteration(loop):
    calls = []

    def outer(n):
        calls.append(('outer', n))
        loop.call_soon(calls.append, ('inner', n))

    loop.call_soon(outer, 1)
    loop.call_soon(outer, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    # Both outers ran in the first iteration, before any inner; the inners are queued.
    assert calls == [('outer', 1), ('outer', 2)]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [('outer', 1), ('outer', 2), ('inner', 1), ('inner', 2)]


def test_callbacks_interleave_with_threadsafe_in_order(loop, run_briefly):
    calls = []
    for i in range(10):
        if i % 2:
            loop.call_soon_threadsafe(calls.append, i)
        else:
            loop.call_soon(calls.append, i)
    run_briefly(loop)
    assert calls == list(range(10))


def test_callbacks_return_value_ignored(loop, run_briefly):
    calls = []
    loop.call_soon(lambda: 'ignored')
    loop.call_soon(calls.append, 'next')
    run_briefly(loop)
    assert calls == ['next']


def test_callbacks_context_argument(loop, run_briefly):
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'in ctx')
    seen = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    run_briefly(loop)
    assert seen == ['in ctx', 'default']


def test_callbacks_context_copied_at_schedule_time(loop, run_briefly):
    seen = []
    token = var.set('first')
    try:
        loop.call_soon(lambda: seen.append(var.get()))
        var.set('second')
        loop.call_soon(lambda: seen.append(var.get()))
    finally:
        var.reset(token)
    run_briefly(loop)
    assert seen == ['first', 'second']


def test_callbacks_context_changes_do_not_leak(loop, run_briefly):
    seen = []

    def setter():
        var.set('changed')
        seen.append(var.get())

    loop.call_soon(setter)
    loop.call_soon(lambda: seen.append(var.get()))
    run_briefly(loop)
    assert seen == ['changed', 'default']
    assert var.get() == 'default'


def test_callbacks_shared_context_sees_changes(loop, run_briefly):
    ctx = contextvars.Context()
    seen = []
    loop.call_soon(var.set, 'shared', context=ctx)
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    run_briefly(loop)
    assert seen == ['shared']
    assert ctx[var] == 'shared'


@pytest.mark.parametrize('value', [1, 'text', None, object()], ids=['int', 'str', 'None', 'object'])
@pytest.mark.parametrize('method', ['call_soon', 'call_soon_threadsafe', 'call_later', 'call_at'])
def test_callbacks_non_callable_rejected_in_debug(loop, method, value):
    loop.set_debug(True)
    args = {'call_soon': (), 'call_soon_threadsafe': (), 'call_later': (1,), 'call_at': (loop.time() + 1,)}[method]
    # call_later() delegates to call_at(), whose name is in the message.
    name = 'call_at' if method == 'call_later' else method
    with pytest.raises(TypeError, match=rf'^a callable object was expected by {name}\(\), got '):
        getattr(loop, method)(*args, value)


@pytest.mark.parametrize('method', ['call_soon', 'call_soon_threadsafe', 'call_later', 'call_at'])
def test_callbacks_coroutine_function_rejected_in_debug(loop, method):
    async def coro_fn():
        pass

    loop.set_debug(True)
    args = {'call_soon': (), 'call_soon_threadsafe': (), 'call_later': (1,), 'call_at': (loop.time() + 1,)}[method]
    name = 'call_at' if method == 'call_later' else method
    with pytest.raises(TypeError, match=rf'^coroutines cannot be used with {name}\(\)$'):
        getattr(loop, method)(*args, coro_fn)
    coro = coro_fn()
    try:
        with pytest.raises(TypeError, match=rf'^coroutines cannot be used with {name}\(\)$'):
            getattr(loop, method)(*args, coro)
    finally:
        coro.close()


def test_callbacks_callback_exception_does_not_stop_loop(loop, run_briefly):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append('handler'))

    def bad():
        raise ValueError

    loop.call_soon(bad)
    loop.call_soon(calls.append, 'after')
    run_briefly(loop)
    assert calls == ['handler', 'after']


def test_callbacks_many_iterations(loop):
    count = 0

    def tick():
        nonlocal count
        count += 1
        if count == 10_000:
            loop.stop()
        else:
            loop.call_soon(tick)

    loop.call_soon(tick)
    loop.run_forever()
    assert count == 10_000


def test_callbacks_run_in_running_loop(loop, run_briefly):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop() is loop))
    run_briefly(loop)
    assert seen == [True]


def test_callbacks_context_none_means_copy(loop, run_briefly):
    seen = []
    token = var.set('current')
    try:
        loop.call_soon(lambda: seen.append(var.get()), context=None)
        loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=None)
        loop.call_later(0, lambda: seen.append(var.get()), context=None)
        loop.call_at(loop.time(), lambda: seen.append(var.get()), context=None)
    finally:
        var.reset(token)
    run_briefly(loop, 2)
    assert seen == ['current'] * 4


@pytest.mark.parametrize('method', ['call_soon', 'call_soon_threadsafe', 'call_later', 'call_at'])
def test_callbacks_unknown_keyword_rejected(loop, method):
    args = {'call_soon': (), 'call_soon_threadsafe': (), 'call_later': (1,), 'call_at': (loop.time() + 1,)}[method]
    with pytest.raises(TypeError):
        getattr(loop, method)(*args, print, end='')


def test_callbacks_context_keyword_same_names_tuple(loop, run_briefly):
    # One code object holds one `('context',)` constant: the calls below pass the
    # same kwnames tuple (the one a Task's steps pass is recognised by identity).
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'in ctx')
    seen = []

    async def task_step():
        seen.append(('task', var.get()))

    loop.run_until_complete(task_step())
    for _ in range(2):
        loop.call_soon(lambda: seen.append(var.get()), context=ctx)
        loop.call_soon(seen.append, 'arg', context=ctx)
        with pytest.raises(TypeError, match='callback'):
            loop.call_soon(context=ctx)
        with pytest.raises(TypeError, match='delay|callback'):
            loop.call_later(context=ctx)
    run_briefly(loop)
    assert seen == [('task', 'default'), 'in ctx', 'arg', 'in ctx', 'arg']
