"""Handle / TimerHandle: cancel, cancelled, when, get_context, repr."""

import asyncio
import contextvars
import re
import weakref

var = contextvars.ContextVar('var', default='default')


def callback(*args):
    pass


def test_handles_call_soon_returns_handle(loop):
    h = loop.call_soon(callback)
    assert not h.cancelled()
    assert not hasattr(h, 'when')
    h.cancel()


def test_handles_cancel_prevents_run(loop, run_briefly):
    calls = []
    h = loop.call_soon(calls.append, 'cancelled')
    loop.call_soon(calls.append, 'kept')
    assert h.cancel() is None
    assert h.cancelled()
    run_briefly(loop)
    assert calls == ['kept']


def test_handles_cancel_twice_and_after_run(loop, run_briefly):
    calls = []
    h = loop.call_soon(calls.append, 1)
    run_briefly(loop)
    assert calls == [1]
    assert not h.cancelled()
    h.cancel()
    h.cancel()
    assert h.cancelled()


def test_handles_cancel_from_earlier_callback(loop, run_briefly):
    calls = []
    handles = []
    loop.call_soon(lambda: handles[0].cancel())
    handles.append(loop.call_soon(calls.append, 'victim'))
    run_briefly(loop)
    assert calls == []
    assert handles[0].cancelled()


def test_handles_timer_handle_when_and_cancel(loop):
    h = loop.call_at(1000.25, callback)
    assert h.when() == 1000.25
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    assert h.when() == 1000.25


def test_handles_context_explicit_is_used(loop, run_briefly):
    # CPython 3.11's Handle has no get_context() (3.12 added it): check the effect.
    ctx = contextvars.Context()
    ctx.run(var.set, 'explicit')
    seen = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=ctx)
    loop.call_at(loop.time() - 1, lambda: seen.append(var.get()), context=ctx)
    run_briefly(loop)
    assert seen == ['explicit'] * 3


def test_handles_repr_handle(loop):
    h = loop.call_soon(callback, 1, 'x')
    r = repr(h)
    assert r.startswith('<Handle ')
    assert r.endswith('>')
    # The stdlib's own Handle says how (3.13 shows arguments in debug mode only).
    assert r == repr(asyncio.Handle(callback, (1, 'x'), loop))
    assert 'cancelled' not in r
    h.cancel()
    r = repr(h)
    assert r.startswith('<Handle cancelled')
    assert r.endswith('>')


def test_handles_repr_timer_handle(loop):
    h = loop.call_at(1234.5, callback, 2)
    r = repr(h)
    assert r.startswith('<TimerHandle when=1234.5 ')
    assert r == repr(asyncio.TimerHandle(1234.5, callback, (2,), loop))
    assert 'cancelled' not in r
    h.cancel()
    r = repr(h)
    assert r.startswith('<TimerHandle cancelled when=1234.5')
    assert r.endswith('>')


def test_handles_repr_debug_mode_shows_source(loop):
    loop.set_debug(True)
    h = loop.call_soon(callback)
    line = h._source_traceback[-1].lineno
    assert re.fullmatch(rf'<Handle callback\(\) at .*:\d+ created at {re.escape(__file__)}:{line}>', repr(h))
    h.cancel()
    # In debug mode a cancelled handle keeps its callback in the repr.
    r = repr(h)
    assert r.startswith('<Handle cancelled callback() at ')
    assert f'created at {__file__}:{line}' in r
    # Arguments as the stdlib's Handle shows them in debug mode (all versions do).
    h = loop.call_soon(callback, 1, 'x')
    assert repr(h).split(' created at ')[0] == repr(asyncio.Handle(callback, (1, 'x'), loop)).split(' created at ')[0]
    assert "callback(1, 'x')" in repr(h)


def test_handles_repr_timer_handle_source(loop):
    t = loop.call_later(10, callback)
    assert re.fullmatch(r'<TimerHandle when=[0-9.e+]+ callback\(\) at .*:\d+>', repr(t))
    t.cancel()


def test_handles_are_stdlib_handle_instances(loop):
    # Code type-checks what the loop returns (isinstance(h, asyncio.TimerHandle)).
    h = loop.call_soon(callback)
    t = loop.call_later(10, callback)
    assert isinstance(h, asyncio.Handle)
    assert isinstance(t, asyncio.Handle)
    assert isinstance(t, asyncio.TimerHandle)
    assert not isinstance(h, asyncio.TimerHandle)
    h.cancel()
    t.cancel()


def test_handles_timer_handles_order_by_when(loop):
    early = loop.call_at(100.0, callback)
    late = loop.call_at(200.0, callback)
    assert early < late
    assert late > early
    assert early <= late
    assert sorted([late, early]) == [early, late]
    early.cancel()
    late.cancel()


def test_handles_weakref(loop):
    h = loop.call_soon(callback)
    t = loop.call_later(10, callback)
    refs = [weakref.ref(h), weakref.ref(t)]
    assert [r() for r in refs] == [h, t]
    h.cancel()
    t.cancel()


def test_handles_dropped_after_run_do_not_leak_into_new_ones(loop, run_briefly):
    # Handles nobody holds once they ran may be reused by oxloop for later calls:
    # nothing of the old callback, arguments, context or cancelled state shows.
    seen = []
    for i in range(3):
        ctx = contextvars.copy_context()
        ctx.run(var.set, f'ctx{i}')
        loop.call_soon(lambda i=i: seen.append((i, var.get())), context=ctx)
        dropped = loop.call_soon(seen.append, 'never')
        dropped.cancel()
        del dropped
        run_briefly(loop)
    h = loop.call_soon(seen.append, 'last')
    assert not h.cancelled()
    assert h._callback == seen.append and h._args == ('last',)
    assert var not in h._context
    assert h._loop is loop
    assert 'list.append' in repr(h)  # 3.13 shows the arguments only in debug mode
    run_briefly(loop)
    assert seen == [(0, 'ctx0'), (1, 'ctx1'), (2, 'ctx2'), 'last']


def test_handles_held_after_run_keep_their_state(loop, run_briefly):
    ctx = contextvars.copy_context()
    held = [loop.call_soon(callback, i, context=ctx) for i in range(50)]
    run_briefly(loop)
    fresh = [loop.call_soon(callback, 'new') for _ in range(50)]
    assert not {id(h) for h in held} & {id(h) for h in fresh}
    for i, h in enumerate(held):
        assert h._args == (i,) and h._context is ctx and h._loop is loop
    for h in fresh:
        h.cancel()


def test_handles_weakly_referenced_after_run_are_freed(loop, run_briefly):
    refs = [weakref.ref(loop.call_soon(callback)) for _ in range(10)]
    run_briefly(loop)
    assert all(r() is None for r in refs)
    for _ in range(10):
        loop.call_soon(callback)
    assert all(r() is None for r in refs)
    run_briefly(loop)


def test_handles_dropped_after_run_release_what_they_held(loop, run_briefly):
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    ctx = contextvars.copy_context()
    ctx.run(var.set, payload)
    loop.call_soon(callback, payload, context=ctx)
    del payload, ctx
    run_briefly(loop)
    assert ref() is None


def test_handles_reuse_does_not_keep_the_loop_alive(loop, run_briefly):
    import gc

    lp = type(loop)()
    for _ in range(5):
        lp.call_soon(callback)
    run_briefly(lp)
    lp.close()
    ref = weakref.ref(lp)
    del lp
    gc.collect()
    assert ref() is None
