"""oxloop.run / oxloop.install / asyncio.Runner(loop_factory=...), side by side with asyncio."""

import asyncio
import contextvars
import gc
import signal
import threading

import pytest

var = contextvars.ContextVar('var', default='default')


@pytest.fixture
def loop_class(loop_impl):
    if loop_impl == 'oxloop':
        import oxloop

        return oxloop.Loop
    return asyncio.SelectorEventLoop


@pytest.fixture
def run(loop_impl):
    """oxloop.run for oxloop, asyncio.run for the reference."""
    if loop_impl == 'oxloop':
        import oxloop

        return oxloop.run
    return asyncio.run


@pytest.fixture
def factory(loop_impl):
    if loop_impl == 'oxloop':
        import oxloop

        return oxloop.new_event_loop
    return asyncio.new_event_loop


@pytest.fixture
def install(loop_impl):
    """oxloop.install for oxloop; the default policy for the reference."""
    if loop_impl == 'oxloop':
        import oxloop

        return oxloop.install
    return lambda: asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


async def running_loop():
    return asyncio.get_running_loop()


def test_runners_run_returns_result(run, loop_class):
    lp = run(running_loop())
    assert type(lp) is loop_class
    assert lp.is_closed()


def test_runners_run_raises_exception(run):
    async def main():
        raise ValueError('from main')

    with pytest.raises(ValueError, match='from main'):
        run(main())


def test_runners_run_debug(run):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert run(main(), debug=True) is True
    assert run(main(), debug=False) is False


def test_runners_run_cancels_leftover_tasks(run):
    events = []

    async def leftover():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append('cancelled')
            raise

    async def main():
        asyncio.get_running_loop().create_task(leftover())
        await asyncio.sleep(0)
        return 'main done'

    assert run(main()) == 'main done'
    assert events == ['cancelled']


def test_runners_run_finalizes_asyncgens_and_executor(run):
    events = []

    async def agen():
        try:
            yield 1
        finally:
            events.append('agen closed')

    async def main():
        gen = agen()
        await gen.__anext__()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, events.append, 'executor ran')
        main.gen = gen  # keep it alive until shutdown_asyncgens()
        return loop

    lp = run(main())
    assert events == ['executor ran', 'agen closed']
    assert lp._default_executor is None


def test_runners_run_from_running_loop_rejected(run, loop):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            run(coro)
        finally:
            coro.close()

    message = None
    try:
        loop.run_until_complete(main())
    except RuntimeError as exc:
        message = str(exc)
    gc.collect()  # whatever the call left behind is reported in this test, not in a later one
    assert message == 'asyncio.run() cannot be called from a running event loop'


def test_runners_run_rejects_non_coroutine(run):
    with pytest.raises(ValueError, match='a coroutine was expected, got 1'):
        run(1)


def test_runners_runner_loop_factory(factory, loop_class):
    with asyncio.Runner(loop_factory=factory) as runner:
        lp = runner.get_loop()
        assert type(lp) is loop_class
        assert runner.run(running_loop()) is lp
        # Several coroutines run on the same loop.
        assert runner.run(running_loop()) is lp
    assert lp.is_closed()


def test_runners_runner_context(factory):
    async def read():
        return var.get()

    ctx = contextvars.copy_context()
    ctx.run(var.set, 'runner ctx')
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(read(), context=ctx) == 'runner ctx'
        assert runner.run(read()) == 'default'


@pytest.fixture
def policy_class(loop_impl):
    if loop_impl == 'oxloop':
        import oxloop

        return oxloop.EventLoopPolicy
    return asyncio.DefaultEventLoopPolicy


def test_runners_install_policy(install, loop_class, policy_class):
    install()
    assert type(asyncio.get_event_loop_policy()) is policy_class
    lp = asyncio.new_event_loop()
    try:
        assert type(lp) is loop_class
    finally:
        lp.close()
    assert type(asyncio.run(running_loop())) is loop_class


def test_runners_install_policy_get_event_loop(install, loop_class):
    install()
    policy = asyncio.get_event_loop_policy()
    lp = policy.new_event_loop()
    try:
        policy.set_event_loop(lp)
        assert policy.get_event_loop() is lp
        assert type(lp) is loop_class
    finally:
        policy.set_event_loop(None)
        lp.close()


def test_runners_in_thread(run):
    # A loop runs fine outside the main thread (no signal handling there).
    results = []

    def worker():
        results.append(run(asyncio.sleep(0.001, 'thread')))

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert results == ['thread']


def test_runners_sigint_restored(run):
    before = signal.getsignal(signal.SIGINT)

    async def main():
        return signal.getsignal(signal.SIGINT)

    during = run(main())
    assert signal.getsignal(signal.SIGINT) is before
    if before is signal.default_int_handler and threading.current_thread() is threading.main_thread():
        # asyncio.Runner installs its own SIGINT handler while running main().
        assert during is not before
