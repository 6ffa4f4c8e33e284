"""Handles under the free list and the GC untracking of issue 11 (src/handles.rs).

A handle the loop ran and nothing else holds goes back to a free list and comes out
again as the next call_soon's handle; a queued handle is out of the GC's lists. Whoever
holds a handle (strongly, through a context variable, through a cycle) must see the
same object forever, and code that runs while the loop drops what a handle held
(``__del__`` of an argument, of a callback, of a context's value) may call back into
the loop. Every test runs on both loops.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

import pytest


def _noise(loop: asyncio.AbstractEventLoop, n: int = 200) -> None:
    """call_soon ``n`` unrelated callbacks and run them: what a free list would hand out."""
    for i in range(n):
        loop.call_soon(lambda x: None, i)


def _run(loop: asyncio.AbstractEventLoop, iterations: int = 3) -> None:
    for _ in range(iterations):
        loop.call_soon(loop.stop)
        loop.run_forever()


def _cb(*args: object) -> None:
    pass


def test_handle_held_by_its_own_callback_keeps_its_state_while_others_are_made(loop):
    """The callback takes its own handle from a holder (the holder drops it), keeps it
    in a local list, and then schedules hundreds of callbacks from inside the loop."""
    kept: list[asyncio.Handle] = []
    holder: list[asyncio.Handle] = []
    ctx = contextvars.copy_context()
    seen: list[tuple[str, object, bool, object]] = []

    def me(tag: str) -> None:
        kept.append(holder.pop())
        _noise(loop, 300)

    def inspect() -> None:
        h = kept[0]
        seen.append((repr(h), h._callback, h.cancelled(), h._context))
        _noise(loop, 50)

    holder.append(loop.call_soon(me, 'tag', context=ctx))
    expected_repr = repr(holder[0])
    _run(loop)
    for _ in range(5):
        loop.call_soon(inspect)
        _run(loop, 2)
    assert len(seen) == 5
    for r, cb, cancelled, c in seen:
        assert r == expected_repr
        assert cb is me
        assert cancelled is False
        assert c is ctx
    assert kept[0]._args == ('tag',)


def test_weakref_taken_while_the_handle_runs_never_sees_another_callback(loop):
    """The running callback turns the only strong outside reference to its handle into
    a weak one: after it ran, the handle is dead (asyncio) or still its own, never a
    reused handle of a later call_soon."""
    holder: list[asyncio.Handle] = []
    refs: list[weakref.ref] = []

    def me() -> None:
        refs.append(weakref.ref(holder.pop()))

    holder.append(loop.call_soon(me))
    _run(loop, 1)
    _noise(loop, 300)
    _run(loop, 1)
    h = refs[0]()
    assert h is None or h._callback is me
    gc.collect()
    assert refs[0]() is None


def test_weakref_taken_before_it_ran_is_dead_after(loop):
    refs = [weakref.ref(loop.call_soon(_cb, i)) for i in range(50)]
    _run(loop, 1)
    _noise(loop, 300)
    _run(loop, 1)
    assert [r() for r in refs] == [None] * 50


def test_handle_stored_in_a_context_variable_it_runs_in(loop):
    """handle -> context -> variable -> handle: a cycle through the context the
    handle runs in. The handle stays itself while others are made, and the cycle is
    collected once dropped."""
    var: contextvars.ContextVar[object] = contextvars.ContextVar('var')
    holder: list[asyncio.Handle] = []
    got: list[object] = []

    def me() -> None:
        var.set(holder.pop())

    ctx = contextvars.copy_context()
    h = loop.call_soon(me, context=ctx)
    holder.append(h)
    ref = weakref.ref(h)
    del h
    _run(loop, 1)
    _noise(loop, 300)
    _run(loop, 1)
    stored = ctx.run(var.get)
    got.append((stored._callback, stored._context is ctx, stored.cancelled()))
    assert got == [(me, True, False)]
    assert ref() is stored
    del stored, ctx
    for _ in range(3):
        gc.collect()
    assert ref() is None


class _Reschedules:
    """An object whose ``__del__`` schedules a callback on the loop (as a resource
    finaliser may); ``chain`` more of them follow one after the other."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: list, n: int, chain: int = 0) -> None:
        self.loop = loop
        self.log = log
        self.n = n
        self.chain = chain

    def __del__(self) -> None:
        self.log.append(('del', self.n))
        nxt = _Reschedules(self.loop, self.log, self.n + 1, self.chain - 1) if self.chain > 0 else None
        self.loop.call_soon(self.log.append, ('ran', self.n, nxt is not None))
        if nxt is not None:
            self.loop.call_soon(_cb, nxt)
        del nxt

    def __call__(self, *args: object) -> None:
        self.log.append(('call', self.n))


def _del_scenario(loop: asyncio.AbstractEventLoop, where: str) -> list:
    log: list = []
    var: contextvars.ContextVar[object] = contextvars.ContextVar('v')
    for i in range(5):
        obj = _Reschedules(loop, log, i * 100, chain=20)
        if where == 'argument':
            loop.call_soon(_cb, obj)
        elif where == 'callback':
            loop.call_soon(obj)
        elif where == 'context':
            ctx = contextvars.Context()
            ctx.run(var.set, obj)
            loop.call_soon(_cb, context=ctx)
            del ctx
        else:  # call_soon_threadsafe
            loop.call_soon_threadsafe(_cb, obj)
        del obj
    _run(loop, 30)
    return log


@pytest.mark.parametrize('where', ['argument', 'callback', 'context', 'threadsafe'])
def test_del_of_what_a_handle_held_calls_soon(loop, where):
    """The last reference to an argument / callback / context value goes when the loop
    lets go of a handle that ran; its __del__ calls call_soon (and makes the next such
    object): each callback runs once, in asyncio's order."""
    from conftest import new_loop

    got = _del_scenario(loop, where)
    ref_loop = new_loop('asyncio')
    try:
        expected = _del_scenario(ref_loop, where)
    finally:
        ref_loop.close()
    assert len([e for e in got if e[0] == 'ran']) == 5 * 21
    assert got == expected


def test_del_stops_the_loop_while_it_lets_go_of_a_handle(loop):
    """A __del__ run as the loop drops a handle's argument calls loop.stop(): the loop
    stops at the end of that iteration, and what was queued after still runs next time."""
    log: list[str] = []

    class Stopper:
        def __del__(self) -> None:
            log.append('del')
            loop.stop()

    loop.call_soon(_cb, Stopper())
    loop.call_soon(log.append, 'second')
    loop.run_forever()
    loop.call_soon(log.append, 'third')
    _run(loop, 1)
    assert log == ['del', 'second', 'third']


def test_collection_while_cycles_hang_only_off_queued_handles(loop):
    """Each argument is in a cycle with its own queued handle; the first callback
    collects: every later callback still gets its intact argument, and once they ran
    and nothing else holds them, the cycles are collected."""

    class Node:
        def __init__(self, i: int) -> None:
            self.i = i
            self.handle: object = None
            self.payload = [self, i]

    seen: list[int] = []

    def use(node: Node) -> None:
        assert node.payload[0] is node
        assert node.handle is not None and node.handle._args == (node,)
        seen.append(node.i)

    loop.call_soon(gc.collect)
    refs = []
    for i in range(100):
        n = Node(i)
        n.handle = loop.call_soon(use, n)
        refs.append(weakref.ref(n))
        del n
    loop.call_soon(gc.collect)
    _run(loop, 1)
    assert seen == list(range(100))
    for _ in range(3):
        gc.collect()
    assert [r() for r in refs] == [None] * 100


def test_handle_taken_from_ready_queue_and_held(loop):
    """A handle asyncio's code or a debugger reads from loop._ready is the one
    call_soon returned, and holding it after it ran keeps it intact."""
    hs = [loop.call_soon(_cb, i) for i in range(3)]
    ready = list(loop._ready)
    assert [r is h for r, h in zip(ready, hs, strict=True)] == [True, True, True]
    ref = weakref.ref(hs[1])
    kept = ready[1]
    del hs, ready
    _run(loop, 1)
    _noise(loop, 300)
    _run(loop, 1)
    assert ref() is kept
    assert kept._args == (1,)
    assert kept._callback is _cb
