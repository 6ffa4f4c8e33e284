"""run_in_executor, set_default_executor, shutdown_default_executor."""

import asyncio
import concurrent.futures
import threading

import pytest


def test_executor_run_in_default_executor(loop):
    async def main():
        fut = loop.run_in_executor(None, lambda a, b: (a + b, threading.get_ident()), 2, 3)
        assert isinstance(fut, asyncio.Future)
        return await fut

    try:
        value, thread_id = loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
    assert value == 5
    assert thread_id != threading.get_ident()


def test_executor_exception_propagates(loop):
    def fail():
        raise LookupError('from thread')

    try:
        with pytest.raises(LookupError, match='from thread'):
            loop.run_until_complete(loop.run_in_executor(None, fail))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())


def test_executor_many_jobs(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, pow, i, 2) for i in range(100)))

    try:
        assert loop.run_until_complete(main()) == [i * i for i in range(100)]
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())


def test_executor_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='explicit') as pool:
        name = loop.run_until_complete(loop.run_in_executor(pool, lambda: threading.current_thread().name))
    assert name.startswith('explicit')


def test_executor_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='custom-default')
    loop.set_default_executor(pool)
    try:
        name = loop.run_until_complete(loop.run_in_executor(None, lambda: threading.current_thread().name))
        assert name.startswith('custom-default')
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
    # shutdown_default_executor() shut the custom executor down, waiting for it.
    with pytest.raises(RuntimeError):
        pool.submit(print)


def test_executor_set_default_executor_rejects_other_types(loop):
    with (
        concurrent.futures.ProcessPoolExecutor(1) as pool,
        pytest.raises(TypeError, match='^executor must be ThreadPoolExecutor instance$'),
    ):
        loop.set_default_executor(pool)
    with pytest.raises(TypeError, match='^executor must be ThreadPoolExecutor instance$'):
        loop.set_default_executor(object())


def test_executor_shutdown_default_executor_waits(loop):
    done = threading.Event()

    def slow():
        done.wait(0.05)
        return 'slow'

    async def main():
        fut = loop.run_in_executor(None, slow)
        await loop.shutdown_default_executor()
        # The job finished, and its result reached the loop, before shutdown returned.
        assert fut.done()
        return fut.result()

    assert loop.run_until_complete(main()) == 'slow'


def test_executor_run_after_shutdown_raises(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match='^Executor shutdown has been called$'):
        loop.run_in_executor(None, print)
    # An explicit executor still works.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert loop.run_until_complete(loop.run_in_executor(pool, abs, -3)) == 3


def test_executor_shutdown_without_executor(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None


def test_executor_close_shuts_default_executor_down(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(pool)
    assert loop.run_until_complete(loop.run_in_executor(None, abs, -1)) == 1
    loop.close()
    with pytest.raises(RuntimeError):
        pool.submit(print)
    pool.shutdown(wait=True)


def test_executor_coroutine_function_rejected_in_debug(loop):
    async def coro_fn():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError, match=r'^coroutines cannot be used with run_in_executor\(\)$'):
        loop.run_in_executor(None, coro_fn)


def test_executor_to_thread(loop):
    async def main():
        return await asyncio.to_thread(lambda: threading.get_ident())

    try:
        assert loop.run_until_complete(main()) != threading.get_ident()
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())


# A loop kept busy by I/O (an echo over a socketpair, Python work per message) while
# an executor job needs the GIL again and again: each time.sleep() gives it up and
# must take it back. The job finishes at the pace of the interpreter's switch
# interval. (oxloop released the GIL for every poll, even one that found I/O ready:
# each release woke the waiting thread, so its timed wait never expired to ask for a
# switch, and it lost the race for the GIL almost every time: minutes, not
# milliseconds.)
BUSY_LOOP_AND_EXECUTOR = """
import socket, time

def work():
    return sum(range(20000))

class Echo(asyncio.Protocol):
    def connection_made(self, tr):
        self.tr = tr
        tr.write(b'x' * 1000)

    def data_received(self, data):
        work()
        self.tr.write(data)

def job():
    start = time.monotonic()
    for _ in range(20):
        time.sleep(0.001)
    return time.monotonic() - start

async def main():
    a, b = socket.socketpair()
    await loop.connect_accepted_socket(Echo, a)
    await loop.connect_accepted_socket(Echo, b)
    await asyncio.sleep(0.01)
    return await loop.run_in_executor(None, job)

took = loop.run_until_complete(main())
print('job done', took < 10)
"""


def test_executor_job_runs_while_the_loop_is_busy_with_io(loop_impl, run_python):
    proc = run_python(BUSY_LOOP_AND_EXECUTOR, impl=loop_impl, timeout=30)
    assert proc.stdout.strip() == 'job done True', proc.stderr[-2000:]
