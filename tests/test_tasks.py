"""create_future, create_task(name=, context=), task factories."""

import asyncio
import contextvars
import gc

import pytest

var = contextvars.ContextVar('var', default='default')


async def coro_result(value):
    await asyncio.sleep(0)
    return value


def test_tasks_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 5)
    assert loop.run_until_complete(fut) == 5


def test_tasks_create_task(loop):
    task = loop.create_task(coro_result('value'))
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 'value'
    assert task.done()


def test_tasks_create_task_name(loop):
    named = loop.create_task(coro_result(1), name='my-task')
    unnamed = loop.create_task(coro_result(2))
    assert named.get_name() == 'my-task'
    assert unnamed.get_name().startswith('Task-')
    assert loop.run_until_complete(asyncio.gather(named, unnamed)) == [1, 2]


def test_tasks_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'task ctx')

    async def read():
        await asyncio.sleep(0)
        return var.get()

    task = loop.create_task(read(), context=ctx)
    assert loop.run_until_complete(task) == 'task ctx'
    assert var.get() == 'default'


def test_tasks_context_copied_per_task(loop):
    async def child():
        var.set('child')
        await asyncio.sleep(0)
        return var.get()

    async def main():
        var.set('parent')
        result = await loop.create_task(child())
        return result, var.get()

    assert loop.run_until_complete(main()) == ('child', 'parent')


def test_tasks_all_tasks_and_current_task(loop):
    async def main():
        me = asyncio.current_task()
        other = asyncio.ensure_future(asyncio.sleep(0.001))
        tasks = asyncio.all_tasks()
        await other
        return me, other, tasks

    me, other, tasks = loop.run_until_complete(main())
    assert tasks == {me, other}
    assert asyncio.all_tasks(loop) == set()


def test_tasks_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(coro_result(3), name='factory-made')
    assert task.get_name() == 'factory-made'
    assert loop.run_until_complete(task) == 3
    # Tasks created implicitly (run_until_complete of a coroutine) use it too.
    assert loop.run_until_complete(coro_result(4)) == 4
    assert [c[0] for c in calls] == [loop, loop]
    ctx = contextvars.Context()
    loop.run_until_complete(loop.create_task(coro_result(5), context=ctx))
    assert calls[-1] == (loop, {'context': ctx})
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(coro_result(6))
    assert len(calls) == 3


def test_tasks_task_factory_rejects_non_callable(loop):
    with pytest.raises(TypeError, match='^task factory must be a callable or None$'):
        loop.set_task_factory(1)


def test_tasks_cancel_task(loop):
    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        task = loop.create_task(sleeper())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert loop.run_until_complete(main()) is True


def test_tasks_gather_and_wait_for_timeout(loop):
    async def main():
        results = await asyncio.gather(*(coro_result(i) for i in range(50)))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
        return results

    assert loop.run_until_complete(main()) == list(range(50))


def test_tasks_exception_never_retrieved_is_logged(loop, caplog):
    async def fail():
        raise ValueError('lost')

    task = loop.create_task(fail())
    loop.run_until_complete(asyncio.sleep(0.001))
    assert task.done()
    del task
    gc.collect()
    messages = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
    assert any('Task exception was never retrieved' in m for m in messages)
