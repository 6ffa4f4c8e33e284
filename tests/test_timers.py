"""call_later / call_at / time(): ordering, precision, cancellation."""

import contextvars
import gc
import socket
import time
import weakref

import pytest

# asyncio fires a timer once ``when < loop.time() + clock_resolution``.
RESOLUTION = time.get_clock_info('monotonic').resolution

var = contextvars.ContextVar('var', default='default')


def test_timers_time_is_monotonic_clock(loop):
    before = time.monotonic()
    now = loop.time()
    after = time.monotonic()
    assert before <= now <= after
    assert isinstance(now, float)


def test_timers_call_later_ordered_by_deadline(loop, run_with_deadline):
    calls = []
    loop.call_later(0.03, calls.append, 'c')
    loop.call_later(0.01, calls.append, 'a')
    loop.call_later(0.02, calls.append, 'b')
    loop.call_later(0.04, loop.stop)
    assert run_with_deadline(loop)
    assert calls == ['a', 'b', 'c']


def test_timers_call_at_ordered_by_deadline(loop, run_with_deadline):
    calls = []
    base = loop.time()
    for i in (5, 1, 4, 2, 3, 0):
        loop.call_at(base + i * 0.002, calls.append, i)
    loop.call_at(base + 0.015, loop.stop)
    assert run_with_deadline(loop)
    assert calls == [0, 1, 2, 3, 4, 5]


def test_timers_equal_deadlines_fire_in_same_iteration(loop, run_with_deadline):
    # asyncio leaves the order of equal deadlines undefined; they all fire together,
    # after the earlier deadline and before the later one.
    calls = []
    when = loop.time() + 0.005
    for i in range(20):
        loop.call_at(when, calls.append, i)
    loop.call_at(when - 0.001, calls.append, 'earlier')
    later = loop.call_at(when + 0.05, calls.append, 'later')
    loop.call_at(when, loop.stop)
    assert run_with_deadline(loop)
    assert calls[0] == 'earlier'
    assert sorted(calls[1:]) == list(range(20))
    assert loop.time() >= when - RESOLUTION
    later.cancel()


def test_timers_never_fire_early(loop, run_with_deadline):
    fired = []

    def cb(handle_box):
        fired.append((loop.time(), handle_box[0].when()))

    for delay in (0.0005, 0.001, 0.003, 0.0071, 0.01, 0.0123, 0.02):
        box = []
        box.append(loop.call_later(delay, cb, box))
    loop.call_later(0.03, loop.stop)
    assert run_with_deadline(loop)
    assert len(fired) == 7
    for now, when in fired:
        assert now >= when - RESOLUTION


def test_timers_call_later_when_is_relative_to_loop_time(loop):
    before = loop.time()
    h = loop.call_later(10, print)
    after = loop.time()
    assert before + 10 <= h.when() <= after + 10
    h.cancel()


def test_timers_call_at_when(loop):
    h = loop.call_at(12345.5, print)
    assert h.when() == 12345.5
    h.cancel()


def test_timers_past_deadline_fires_next_iteration(loop, run_briefly):
    calls = []
    loop.call_at(loop.time() - 100, calls.append, 'past')
    loop.call_later(-5, calls.append, 'negative')
    run_briefly(loop)
    assert calls == ['past', 'negative']


def test_timers_zero_delay_runs_after_ready_callbacks(loop, run_briefly):
    # asyncio moves due timers to the ready queue after what is already there.
    calls = []
    loop.call_later(0, calls.append, 'timer')
    loop.call_soon(calls.append, 'soon')
    run_briefly(loop, 2)
    assert calls == ['soon', 'timer']


def test_timers_integer_delay_and_args(loop, run_with_deadline):
    calls = []
    loop.call_later(0, calls.append, 'int delay')
    loop.call_later(0.001, lambda *a: calls.append(a), 1, 2)
    loop.call_later(0.005, loop.stop)
    assert run_with_deadline(loop)
    assert calls == ['int delay', (1, 2)]


def test_timers_none_delay_or_when_rejected(loop):
    with pytest.raises(TypeError, match='^delay must not be None$'):
        loop.call_later(None, print)
    with pytest.raises(TypeError, match='^when cannot be None$'):
        loop.call_at(None, print)


def test_timers_cancelled_timer_does_not_fire(loop, run_with_deadline):
    calls = []
    h = loop.call_later(0.001, calls.append, 'cancelled')
    loop.call_later(0.002, calls.append, 'kept')
    h.cancel()
    loop.call_later(0.005, loop.stop)
    assert run_with_deadline(loop)
    assert calls == ['kept']


def test_timers_cancel_from_earlier_callback_same_iteration(loop, run_with_deadline):
    calls = []
    when = loop.time() + 0.002
    second = None

    def first():
        calls.append('first')
        second.cancel()

    loop.call_at(when - 0.001, first)
    second = loop.call_at(when, calls.append, 'second')
    loop.call_at(when + 0.002, loop.stop)
    assert run_with_deadline(loop)
    assert calls == ['first']


def test_timers_cancel_due_timer_in_ready_queue(loop, run_with_deadline):
    # Both timers are due in the same iteration; the first cancels the second after
    # it was moved to the ready queue: it must not run.
    calls = []
    when = loop.time() + 0.002
    handles = {}

    def first():
        calls.append('first')
        handles['second'].cancel()

    loop.call_at(when, first)
    handles['second'] = loop.call_at(when + 1e-6, calls.append, 'second')
    loop.call_at(when + 0.003, loop.stop)
    time.sleep(0.004)  # both are already due when the loop starts
    assert run_with_deadline(loop)
    assert calls == ['first']


def test_timers_context_argument(loop, run_with_deadline):
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'timer ctx')
    seen = []
    loop.call_later(0.001, lambda: seen.append(var.get()), context=ctx)
    loop.call_at(loop.time() + 0.001, lambda: seen.append(var.get()), context=ctx)
    token = var.set('captured')
    try:
        loop.call_later(0.001, lambda: seen.append(var.get()))
    finally:
        var.reset(token)
    loop.call_later(0.005, loop.stop)
    assert run_with_deadline(loop)
    assert seen == ['timer ctx', 'timer ctx', 'captured']


def test_timers_timer_scheduled_from_callback(loop, run_with_deadline):
    calls = []

    def tick(n):
        calls.append(n)
        if n < 5:
            loop.call_later(0.001, tick, n + 1)
        else:
            loop.stop()

    loop.call_soon(tick, 0)
    assert run_with_deadline(loop)
    assert calls == [0, 1, 2, 3, 4, 5]


def test_timers_loop_sleeps_until_timer(loop, run_with_deadline):
    t0 = time.monotonic()
    loop.call_later(0.05, loop.stop)
    assert run_with_deadline(loop)
    elapsed = time.monotonic() - t0
    assert 0.05 <= elapsed < 1.0


def test_timers_many_cancelled_do_not_leak(loop, run_briefly, run_with_deadline):
    class Callback:
        def __call__(self, arg):
            raise AssertionError('cancelled timer ran')

    class Arg:
        pass

    cb, arg = Callback(), Arg()
    cb_ref, arg_ref = weakref.ref(cb), weakref.ref(arg)
    handles = [loop.call_later(10 + i * 1e-6, cb, arg) for i in range(100_000)]
    for h in handles:
        h.cancel()
    assert all(h.cancelled() for h in handles)
    del handles, cb, arg
    run_briefly(loop, 3)
    gc.collect()
    assert cb_ref() is None
    assert arg_ref() is None
    # The loop still works: timers and callbacks both run.
    calls = []
    loop.call_soon(calls.append, 'soon')
    loop.call_later(0.001, calls.append, 'later')
    loop.call_later(0.002, loop.stop)
    assert run_with_deadline(loop)
    assert calls == ['soon', 'later']


def test_timers_cancel_releases_callback(loop):
    class Callback:
        def __call__(self):
            pass

    cb = Callback()
    ref = weakref.ref(cb)
    h = loop.call_later(100, cb)
    del cb
    h.cancel()
    gc.collect()
    assert ref() is None


def test_timers_far_future_timer_does_not_block_stop(loop, run_with_deadline):
    h = loop.call_later(3600, print)
    loop.call_later(0.001, loop.stop)
    assert run_with_deadline(loop)
    assert not h.cancelled()
    h.cancel()


@pytest.mark.parametrize('delay', [float('inf'), 1e10, 10**30], ids=['inf', '1e10', 'huge-int'])
def test_timers_huge_delay(loop, run_with_deadline, delay):
    h = loop.call_later(delay, print)
    assert h.when() > loop.time() + 1e9
    loop.call_later(0.001, loop.stop)
    assert run_with_deadline(loop)
    assert not h.cancelled()
    h.cancel()
    loop.call_later(0.001, loop.stop)
    assert run_with_deadline(loop)


def test_timers_bad_delay_type(loop):
    with pytest.raises(TypeError):
        loop.call_later('1', print)


def test_timers_scheduled_from_callback_waits_next_iteration(loop, run_briefly):
    calls = []

    def first():
        calls.append('first')
        loop.call_later(0, calls.append, 'timer')
        loop.call_at(loop.time() - 1, calls.append, 'past timer')
        loop.stop()

    loop.call_soon(first)
    loop.run_forever()
    assert calls == ['first']
    run_briefly(loop)
    assert calls == ['first', 'past timer', 'timer']


def test_timers_cancel_after_fire_is_harmless(loop, run_with_deadline):
    calls = []
    fired = [loop.call_later(0.001 * (i % 3), calls.append, i) for i in range(30)]
    loop.call_later(0.005, loop.stop)
    assert run_with_deadline(loop)
    assert sorted(calls) == list(range(30))
    for h in fired:
        h.cancel()
        h.cancel()
        assert h.cancelled()
    # The bookkeeping of cancelled timers is still right: new timers fire in order.
    calls.clear()
    for i in (3, 1, 2):
        loop.call_later(0.001 * i, calls.append, i)
    loop.call_later(0.006, loop.stop)
    assert run_with_deadline(loop)
    assert calls == [1, 2, 3]


def test_timers_mass_cancellation_keeps_live_timers(loop, run_with_deadline):
    # Cancel most of a large heap (past asyncio's compaction threshold): the
    # survivors still fire, in deadline order, and the cancelled ones never do.
    calls = []
    base = loop.time() + 0.005
    handles = [loop.call_at(base + (i % 50) * 0.0002, calls.append, i) for i in range(1000)]
    survivors = []
    for i, h in enumerate(handles):
        if i % 7 == 0:
            survivors.append(i)
        else:
            h.cancel()
    loop.call_at(base + 0.02, loop.stop)
    assert run_with_deadline(loop)
    assert sorted(calls) == survivors
    whens = [handles[i].when() for i in calls]
    assert whens == sorted(whens)


def test_timers_due_timers_after_fd_callbacks(loop, run_briefly):
    # asyncio queues the fd callbacks of an iteration before the timers that became due.
    a, b = socket.socketpair()
    try:
        calls = []
        b.send(b'x')
        loop.call_at(loop.time() - 1, calls.append, 'timer')
        loop.add_reader(a, calls.append, 'reader')
        run_briefly(loop)
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    assert calls[:2] == ['reader', 'timer']


def test_timers_time_advances(loop, run_with_deadline):
    seen = []

    def tick(n):
        seen.append(loop.time())
        if n:
            loop.call_later(0.001, tick, n - 1)
        else:
            loop.stop()

    loop.call_soon(tick, 5)
    assert run_with_deadline(loop)
    assert seen == sorted(seen)
    assert seen[-1] - seen[0] >= 0.005
