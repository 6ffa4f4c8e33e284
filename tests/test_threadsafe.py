"""call_soon_threadsafe: waking a loop blocked in its poll, ordering, many threads."""

import asyncio
import contextvars
import threading
import time

var = contextvars.ContextVar('var', default='default')


def test_threadsafe_wakes_blocked_loop(loop, run_with_deadline):
    calls = []
    started = threading.Event()

    def worker():
        started.wait(5)
        time.sleep(0.05)  # let the loop block in its poll (no timer due for 5 s)
        loop.call_soon_threadsafe(lambda: (calls.append(threading.get_ident()), loop.stop()))

    t = threading.Thread(target=worker)
    t.start()
    loop.call_soon(started.set)
    t0 = time.monotonic()
    try:
        assert run_with_deadline(loop, 5.0)
    finally:
        t.join(5)
    assert time.monotonic() - t0 < 2.0
    assert calls == [threading.get_ident()]


def test_threadsafe_wakes_loop_waiting_on_far_timer(loop, run_with_deadline):
    far = loop.call_later(3600, print)
    t = threading.Timer(0.02, loop.call_soon_threadsafe, args=(loop.stop,))
    t.start()
    t0 = time.monotonic()
    try:
        assert run_with_deadline(loop, 5.0)
    finally:
        t.join(5)
        far.cancel()
    assert time.monotonic() - t0 < 2.0


def test_threadsafe_repeated_wakeups(loop, run_with_deadline):
    # Every wakeup must be delivered, also those that arrive after the loop went back
    # to sleep.
    got = []
    n = 20

    def worker():
        for i in range(n):
            time.sleep(0.002)
            loop.call_soon_threadsafe(got.append, i)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert run_with_deadline(loop, 10.0)
    finally:
        t.join(10)
    assert got == list(range(n))


def test_threadsafe_many_threads(loop, run_with_deadline):
    per_thread = 2000
    nthreads = 4
    got: dict[int, list[int]] = {i: [] for i in range(nthreads)}
    done = []
    barrier = threading.Barrier(nthreads)

    def finished():
        done.append(1)
        if len(done) == nthreads:
            loop.stop()

    def worker(k):
        barrier.wait(5)
        for i in range(per_thread):
            loop.call_soon_threadsafe(got[k].append, i)
        loop.call_soon_threadsafe(finished)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    try:
        assert run_with_deadline(loop, 20.0)
    finally:
        for t in threads:
            t.join(10)
    for k in range(nthreads):
        assert got[k] == list(range(per_thread))


def test_threadsafe_from_thread_before_run(loop, run_briefly):
    calls = []
    t = threading.Thread(target=loop.call_soon_threadsafe, args=(calls.append, 'queued'))
    t.start()
    t.join(5)
    run_briefly(loop)
    assert calls == ['queued']


def test_threadsafe_handle_can_be_cancelled(loop, run_briefly):
    calls = []
    h = loop.call_soon_threadsafe(calls.append, 'cancelled')
    loop.call_soon_threadsafe(calls.append, 'kept')
    h.cancel()
    assert h.cancelled()
    run_briefly(loop)
    assert calls == ['kept']


def test_threadsafe_context_copied_in_calling_thread(loop, run_with_deadline):
    seen = []

    def worker():
        var.set('worker')
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        ctx = contextvars.Context()
        ctx.run(var.set, 'explicit')
        loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=ctx)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert run_with_deadline(loop)
    finally:
        t.join(5)
    assert seen == ['worker', 'explicit']


def test_threadsafe_run_coroutine_threadsafe(loop, run_with_deadline):
    async def add(a, b):
        await asyncio.sleep(0.001)
        return a + b

    results = []

    def worker():
        fut = asyncio.run_coroutine_threadsafe(add(1, 2), loop)
        results.append(fut.result(5))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert run_with_deadline(loop)
    finally:
        t.join(5)
    assert results == [3]


def test_threadsafe_future_from_thread_wakes_task(loop):
    async def main():
        fut = loop.create_future()
        t = threading.Timer(0.02, loop.call_soon_threadsafe, args=(fut.set_result, 'from thread'))
        t.start()
        try:
            return await asyncio.wait_for(fut, 5)
        finally:
            t.join(5)

    t0 = time.monotonic()
    assert loop.run_until_complete(main()) == 'from thread'
    assert time.monotonic() - t0 < 2.0
