"""Async generator hooks: finalization on the loop, shutdown_asyncgens."""

import asyncio
import gc
import sys

import pytest


async def first_item(gen):
    """Start ``gen`` from inside the running loop, where the firstiter hook is installed."""
    return await gen.__anext__()


def test_asyncgens_shutdown_finalizes_suspended_generator(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append(('finally', asyncio.get_running_loop() is loop))

    gen = agen()
    assert loop.run_until_complete(first_item(gen)) == 1
    assert events == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == [('finally', True)]


def test_asyncgens_garbage_collected_generator_finalized_on_loop(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)  # the finalizer can await: it runs as a task
            events.append(('finally', asyncio.get_running_loop() is loop))

    async def main():
        gen = agen()
        assert await gen.__anext__() == 1
        del gen
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert events == [('finally', True)]


def test_asyncgens_hooks_installed_only_while_running(loop):
    before = sys.get_asyncgen_hooks()
    seen = []
    loop.call_soon(lambda: seen.append(sys.get_asyncgen_hooks()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert sys.get_asyncgen_hooks() == before
    assert seen[0].firstiter is not None
    assert seen[0].finalizer is not None
    assert seen[0] != before


def test_asyncgens_hooks_restored_after_exception(loop):
    before = sys.get_asyncgen_hooks()

    def cb():
        raise KeyboardInterrupt

    loop.call_soon(cb)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert sys.get_asyncgen_hooks() == before


def test_asyncgens_shutdown_with_nothing_to_do(loop):
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None
    # A second call is harmless.
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None


def test_asyncgens_finished_generator_not_closed_again(loop):
    events = []

    async def agen():
        try:
            yield 1
        finally:
            events.append('finally')

    async def main():
        return [x async for x in agen()]

    assert loop.run_until_complete(main()) == [1]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == ['finally']


def test_asyncgens_error_during_shutdown_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError('aclose failed')

    gen = agen()
    loop.run_until_complete(first_item(gen))
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert contexts[0]['message'].startswith('an error occurred during closing of asynchronous generator')
    assert isinstance(contexts[0]['exception'], ValueError)
    assert contexts[0]['asyncgen'] is gen


def test_asyncgens_first_iteration_after_shutdown_warns(loop):
    async def agen():
        yield 1

    loop.run_until_complete(loop.shutdown_asyncgens())
    gen = agen()
    with pytest.warns(ResourceWarning, match='was scheduled after loop.shutdown_asyncgens'):
        assert loop.run_until_complete(first_item(gen)) == 1
    loop.run_until_complete(gen.aclose())
