"""Exception handler API, and BaseExceptions escaping callbacks."""

import logging
import socket

import pytest


def asyncio_errors(caplog):
    return [r for r in caplog.records if r.name == 'asyncio' and r.levelno >= logging.ERROR]


def test_exception_handler_default_logs_callback_error(loop, caplog, run_briefly):
    def bad():
        raise ValueError('callback failed')

    loop.call_soon(bad)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        run_briefly(loop)
    records = asyncio_errors(caplog)
    assert len(records) == 1
    assert records[0].getMessage().startswith('Exception in callback ')
    assert 'bad()' in records[0].getMessage()
    assert records[0].exc_info[0] is ValueError
    assert str(records[0].exc_info[1]) == 'callback failed'


def test_exception_handler_custom_receives_context(loop, run_briefly):
    contexts = []

    def handler(lp, context):
        contexts.append((lp, context))

    def bad():
        raise ValueError('callback failed')

    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    h = loop.call_soon(bad)
    run_briefly(loop)
    assert len(contexts) == 1
    lp, context = contexts[0]
    assert lp is loop
    assert {'message', 'exception', 'handle'} <= set(context)
    assert context['message'].startswith('Exception in callback ')
    assert isinstance(context['exception'], ValueError)
    assert context['handle'] is h


def test_exception_handler_timer_callback_error(loop, run_with_deadline):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: (contexts.append(ctx), lp.stop()))

    def bad():
        raise KeyError('timer')

    h = loop.call_later(0.001, bad)
    assert run_with_deadline(loop)
    assert contexts[0]['handle'] is h
    assert isinstance(contexts[0]['exception'], KeyError)


def test_exception_handler_loop_keeps_running(loop, run_briefly):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append('handler'))

    def bad():
        calls.append('bad')
        raise RuntimeError

    loop.call_soon(bad)
    loop.call_soon(calls.append, 'next')
    loop.call_soon(bad)
    run_briefly(loop)
    assert calls == ['bad', 'handler', 'next', 'bad', 'handler']


def test_exception_handler_reset_to_default(loop, caplog, run_briefly):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    loop.call_soon(lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        run_briefly(loop)
    assert calls == []
    assert len(asyncio_errors(caplog)) == 1


def test_exception_handler_rejects_non_callable(loop):
    with pytest.raises(TypeError, match=r'^A callable object or None is expected, got 1$'):
        loop.set_exception_handler(1)


def test_exception_handler_call_exception_handler_custom(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    context = {'message': 'custom', 'extra': 1}
    loop.call_exception_handler(context)
    assert contexts == [(loop, context)]


def test_exception_handler_call_exception_handler_default(loop, caplog):
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.call_exception_handler({'message': 'something happened', 'detail': 'x'})
    records = asyncio_errors(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    assert msg.startswith('something happened')
    assert "detail: 'x'" in msg


def test_exception_handler_default_exception_handler(loop, caplog):
    exc = OSError('disk')
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.default_exception_handler({'message': 'direct call', 'exception': exc})
    records = asyncio_errors(caplog)
    assert len(records) == 1
    assert records[0].getMessage() == 'direct call'
    assert records[0].exc_info[1] is exc


def test_exception_handler_default_without_message(loop, caplog):
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.default_exception_handler({})
    assert asyncio_errors(caplog)[0].getMessage() == 'Unhandled exception in event loop'


def test_exception_handler_custom_can_delegate_to_default(loop, caplog, run_briefly):
    def handler(lp, context):
        lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        run_briefly(loop)
    records = asyncio_errors(caplog)
    assert len(records) == 1
    assert records[0].exc_info[0] is ZeroDivisionError


def test_exception_handler_failing_handler_is_logged(loop, caplog, run_briefly):
    def handler(lp, context):
        raise RuntimeError('handler broke')

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.run_forever()
    messages = [r.getMessage() for r in asyncio_errors(caplog)]
    assert len(messages) == 1
    assert messages[0].startswith('Unhandled error in exception handler\ncontext: ')
    assert asyncio_errors(caplog)[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize('exc_type', [SystemExit, KeyboardInterrupt])
def test_exception_handler_base_exceptions_propagate(loop, exc_type):
    calls = []

    def raiser():
        calls.append('raiser')
        raise exc_type

    loop.set_exception_handler(lambda lp, ctx: calls.append('handler'))
    loop.call_soon(raiser)
    loop.call_soon(calls.append, 'after')
    with pytest.raises(exc_type):
        loop.run_forever()
    assert calls == ['raiser']
    assert not loop.is_running()
    assert not loop.is_closed()
    # The loop stays usable; the callback queued behind the raiser runs next time.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ['raiser', 'after']


@pytest.mark.parametrize('exc_type', [SystemExit, KeyboardInterrupt])
def test_exception_handler_base_exceptions_from_timer_and_reader(loop, exc_type, run_briefly):
    def raiser():
        raise exc_type

    loop.call_later(0, raiser)
    with pytest.raises(exc_type):
        run_briefly(loop, 2)
    a, b = socket.socketpair()
    try:
        b.send(b'x')
        loop.add_reader(a, raiser)
        with pytest.raises(exc_type):
            run_briefly(loop)
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    assert loop.run_until_complete(_noop()) == 'ok'


async def _noop():
    return 'ok'


def test_exception_handler_base_exception_from_task(loop):
    async def main():
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        loop.run_until_complete(main())
    assert info.value.code == 3
    assert loop.run_until_complete(_noop()) == 'ok'


def test_exception_handler_base_exception_from_handler_propagates(loop):
    def handler(lp, context):
        raise KeyboardInterrupt

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    assert loop.run_until_complete(_noop()) == 'ok'
