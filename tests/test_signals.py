"""add_signal_handler / remove_signal_handler, and Ctrl-C of a blocked loop."""

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest


@pytest.fixture(autouse=True)
def _restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(-1)


def test_signals_handler_called_with_args(loop, run_with_deadline):
    calls = []

    def handler(*args):
        calls.append(args)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, 'a', 1)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    assert run_with_deadline(loop)
    assert calls == [('a', 1)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


def test_signals_wakes_blocked_loop(loop, run_with_deadline):
    calls = []

    def handler():
        calls.append(threading.get_ident())
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler)
    t = threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGUSR1))
    t.start()
    t0 = time.monotonic()
    try:
        assert run_with_deadline(loop, 5.0)
    finally:
        t.join(5)
    assert time.monotonic() - t0 < 2.0
    # The handler runs in the loop's thread, not in the thread that sent the signal.
    assert calls == [threading.get_ident()]


def test_signals_handler_runs_as_loop_callback(loop, run_with_deadline):
    order = []

    def handler():
        order.append('signal')
        loop.stop()

    def send():
        order.append('send')
        os.kill(os.getpid(), signal.SIGUSR1)
        order.append('sent')

    loop.add_signal_handler(signal.SIGUSR1, handler)
    loop.call_soon(send)
    assert run_with_deadline(loop)
    # The handler is not called from inside the signal: it is queued for the loop.
    assert order == ['send', 'sent', 'signal']


def test_signals_two_signals(loop, run_with_deadline):
    calls = []

    def handler(name):
        calls.append(name)
        if len(calls) == 2:
            loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, 'usr1')
    loop.add_signal_handler(signal.SIGUSR2, handler, 'usr2')
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.005, os.kill, os.getpid(), signal.SIGUSR2)
    assert run_with_deadline(loop)
    assert calls == ['usr1', 'usr2']


def test_signals_replace_handler(loop, run_with_deadline):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 'old')
    loop.add_signal_handler(signal.SIGUSR1, lambda: (calls.append('new'), loop.stop()))
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    assert run_with_deadline(loop)
    assert calls == ['new']


def test_signals_remove_restores_default(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signals_remove_sigint_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, print)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_close_removes_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGUSR2, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    # No wakeup fd is left behind pointing at the closed loop.
    assert signal.set_wakeup_fd(-1) == -1


def test_signals_remove_last_handler_clears_wakeup_fd(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.set_wakeup_fd(-1) == -1


@pytest.mark.parametrize('sig', [-1, 0, 1000], ids=['negative', 'zero', 'too-large'])
def test_signals_invalid_number(loop, sig):
    with pytest.raises(ValueError, match=f'^invalid signal number {sig}$'):
        loop.add_signal_handler(sig, print)
    with pytest.raises(ValueError, match=f'^invalid signal number {sig}$'):
        loop.remove_signal_handler(sig)


def test_signals_not_an_int(loop):
    with pytest.raises(TypeError, match="^sig must be an int, not 'SIGUSR1'$"):
        loop.add_signal_handler('SIGUSR1', print)
    with pytest.raises(TypeError, match='^sig must be an int, not '):
        loop.remove_signal_handler(None)


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGSTOP], ids=['SIGKILL', 'SIGSTOP'])
def test_signals_uncatchable(loop, sig):
    with pytest.raises(RuntimeError, match=f'^sig {int(sig)} cannot be caught$'):
        loop.add_signal_handler(sig, print)
    # The failed registration leaves nothing behind.
    assert loop.remove_signal_handler(sig) is False


def test_signals_coroutine_callback_rejected(loop):
    async def coro_fn():
        pass

    with pytest.raises(TypeError, match=r'^coroutines cannot be used with add_signal_handler\(\)$'):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)
    coro = coro_fn()
    try:
        with pytest.raises(TypeError, match=r'^coroutines cannot be used with add_signal_handler\(\)$'):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signals_from_non_main_thread(loop):
    errors = []

    def worker():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except (RuntimeError, ValueError, OSError) as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert len(errors) == 1
    assert type(errors[0]) is RuntimeError
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_signals_closed_loop(loop):
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.add_signal_handler(signal.SIGUSR1, print)


def test_signals_handler_exception_goes_to_handler(loop, run_with_deadline):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: (contexts.append(ctx), lp.stop()))

    def bad():
        raise ValueError('signal handler failed')

    loop.add_signal_handler(signal.SIGUSR1, bad)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    assert run_with_deadline(loop)
    assert isinstance(contexts[0]['exception'], ValueError)


# ----- Ctrl-C of a loop blocked in its poll, in a child interpreter ---------------------


def _interrupt_child(loop_source: str, body: str) -> tuple[subprocess.CompletedProcess[str], float]:
    code = loop_source + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, '-c', code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE')},
    )
    try:
        # The child prints 'ready' from inside the running loop.
        assert select.select([proc.stdout], [], [], 10)[0], 'child did not start'
        line = proc.stdout.readline()
        assert line == 'ready\n', (line, proc.stderr.read() if proc.poll() is not None else '')
        time.sleep(0.2)  # let it block in its poll
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), elapsed


CHILD_RUN_FOREVER = """
loop.call_soon(lambda: print('ready', flush=True))
try:
    loop.run_forever()
except KeyboardInterrupt:
    print('KeyboardInterrupt', 'running' if loop.is_running() else 'stopped', flush=True)
    loop.close()
    raise
"""

CHILD_RUN_UNTIL_COMPLETE = """
import asyncio
async def main():
    print('ready', flush=True)
    await asyncio.sleep(30)
try:
    loop.run_until_complete(main())
except KeyboardInterrupt:
    print('KeyboardInterrupt', 'running' if loop.is_running() else 'stopped', flush=True)
    loop.close()
    raise
"""

CHILD_RUNNER = """
import asyncio
async def main():
    print('ready', flush=True)
    await asyncio.sleep(30)
try:
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(main())
except KeyboardInterrupt:
    print('KeyboardInterrupt', 'running' if loop.is_running() else 'stopped', flush=True)
    raise
"""

# With another signal handler installed, the wakeup fd is set: Ctrl-C still raises.
CHILD_WITH_SIGNAL_HANDLER = (
    """
import signal
loop.add_signal_handler(signal.SIGUSR1, print)
"""
    + CHILD_RUN_FOREVER
)


# A loop that never blocks: the interrupt arrives while callbacks run.
CHILD_BUSY = (
    """
def spin():
    loop.call_soon(spin)
loop.call_soon(spin)
"""
    + CHILD_RUN_FOREVER
)


@pytest.mark.parametrize(
    'body',
    [CHILD_RUN_FOREVER, CHILD_RUN_UNTIL_COMPLETE, CHILD_RUNNER, CHILD_WITH_SIGNAL_HANDLER, CHILD_BUSY],
    ids=['run_forever', 'run_until_complete', 'runner', 'with_signal_handler', 'busy'],
)
def test_signals_ctrl_c_interrupts_blocked_loop(loop_source, body):
    result, elapsed = _interrupt_child(loop_source, body)
    assert result.stdout == 'KeyboardInterrupt stopped\n', result.stderr
    assert result.returncode != 0
    assert 'KeyboardInterrupt' in result.stderr.splitlines(), result.stderr
    assert elapsed < 3.0


def test_signals_delivered_while_not_running(loop, run_briefly):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 'handled')
    os.kill(os.getpid(), signal.SIGUSR1)
    assert calls == []
    run_briefly(loop, 2)
    assert calls == ['handled']


CHILD_SIGINT_HANDLER = """
import signal
def on_sigint():
    print('handled', flush=True)
    loop.stop()
loop.add_signal_handler(signal.SIGINT, on_sigint)
loop.call_soon(lambda: print('ready', flush=True))
loop.run_forever()
loop.close()
"""


def test_signals_sigint_handler_replaces_keyboard_interrupt(loop_source):
    result, elapsed = _interrupt_child(loop_source, CHILD_SIGINT_HANDLER)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'handled\n'
    assert result.stderr == ''
    assert elapsed < 3.0
