"""The Python half of oxloop's event loop: cold paths only.

``Loop`` inherits the hot half (``call_soon``, timers, fd callbacks, the run
iteration) from the Rust ``LoopCore`` and everything that only orchestrates
(``run_until_complete``, tasks and futures, executors, async-generator hooks, the
exception handler, ``getaddrinfo``) from the stdlib's own ``BaseEventLoop``, so
those keep asyncio's exact behaviour and messages. ``LoopCore`` exposes the state
that ``BaseEventLoop`` reads (``_closed``, ``_stopping``, ``_debug``,
``_thread_id``) as properties.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import weakref
from asyncio import base_events, coroutines, events, unix_events
from typing import Any, NoReturn

from . import _oxloop

__all__ = ('Loop',)

_NEXT_ISSUE = 'issue 4: network transports'


def _not_yet(name: str, capability: str) -> NoReturn:
    raise NotImplementedError(f'oxloop: {name}() is not implemented yet ({capability})')


class Loop(_oxloop.LoopCore, base_events.BaseEventLoop):  # type: ignore[misc]
    """An asyncio event loop whose core runs in Rust."""

    def __init__(self) -> None:
        # BaseEventLoop.__init__, minus the state that LoopCore owns (ready queue,
        # timers, _closed, _stopping, _thread_id, _clock_resolution).
        self._default_executor = None
        self._internal_fds = 0
        self._exception_handler = None
        self.set_debug(coroutines._is_debug_mode())
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        # unix_events._UnixSelectorEventLoop state.
        self._signal_handlers: dict[int, Any] = {}
        # The self-pipe that signal.set_wakeup_fd() writes to; made on first use.
        self._ssock: socket.socket | None = None
        self._csock: socket.socket | None = None
        # oxloop polls in Rust; there is no Python selector object (asyncio's closed
        # loops have `_selector = None` too).
        self._selector = None
        _live_loops.add(self)

    # ----- running ---------------------------------------------------------------

    def run_forever(self) -> None:
        """Run until stop() is called."""
        # CPython 3.11 BaseEventLoop.run_forever, with the iterations in Rust.
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            run_once = self.__dict__.get('_run_once', type(self)._run_once)
            if run_once is _oxloop.LoopCore._run_once:
                self._run()
            else:
                # A subclass or a test replaced _run_once: honour it, as asyncio does.
                while True:
                    self._run_once()
                    if self._stopping:
                        break
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def close(self) -> None:
        """Close the event loop: drop pending callbacks, shut the default executor
        down without waiting, remove signal handlers and release the poller."""
        if self.is_running():
            raise RuntimeError('Cannot close a running event loop')
        if self.is_closed():
            return
        self._close_self_pipe()
        super().close()
        self._close_core()
        # CPython: _UnixSelectorEventLoop.close removes signal handlers afterwards.
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            import warnings

            warnings.warn(
                f'Closing the loop {self!r} on interpreter shutdown stage, skipping signal handlers removal',
                ResourceWarning,
                stacklevel=1,
                source=self,
            )
            self._signal_handlers.clear()

    # ----- signals (unix_events._UnixSelectorEventLoop) ---------------------------

    def _make_self_pipe(self) -> None:
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._internal_fds += 1
        self._add_reader(self._ssock.fileno(), self._read_from_self)

    def _close_self_pipe(self) -> None:
        if self._ssock is None or self._csock is None:
            return
        self._remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._ssock = None
        self._csock.close()
        self._csock = None
        self._internal_fds -= 1

    def _read_from_self(self) -> None:
        assert self._ssock is not None
        while True:
            try:
                data = self._ssock.recv(4096)
                if not data:
                    break
                self._process_self_data(data)
            except InterruptedError:
                continue
            except BlockingIOError:
                break

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        """Add a handler for a UNIX signal. Raise ValueError if the signal number is
        invalid or uncatchable, RuntimeError if there is a problem setting it up."""
        if self._ssock is None and not self.is_closed():
            self._make_self_pipe()
        _unix_add_signal_handler(self, sig, callback, *args)

    # The rest is the stdlib's own code, which keeps its messages and checks.
    remove_signal_handler = unix_events._UnixSelectorEventLoop.remove_signal_handler
    _handle_signal = unix_events._UnixSelectorEventLoop._handle_signal
    _check_signal = unix_events._UnixSelectorEventLoop._check_signal
    _process_self_data = unix_events._UnixSelectorEventLoop._process_self_data

    # ----- later capabilities: explicit, never a silent wrong behaviour -------------

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('create_connection', _NEXT_ISSUE)

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('create_server', _NEXT_ISSUE)

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('create_unix_connection', _NEXT_ISSUE)

    async def create_unix_server(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('create_unix_server', _NEXT_ISSUE)

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('create_datagram_endpoint', _NEXT_ISSUE)

    async def connect_accepted_socket(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('connect_accepted_socket', _NEXT_ISSUE)

    async def sendfile(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sendfile', _NEXT_ISSUE)

    async def start_tls(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('start_tls', 'TLS')

    async def connect_read_pipe(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('connect_read_pipe', _NEXT_ISSUE)

    async def connect_write_pipe(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('connect_write_pipe', _NEXT_ISSUE)

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('subprocess_exec', 'subprocesses')

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('subprocess_shell', 'subprocesses')

    async def sock_recv(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_recv', _NEXT_ISSUE)

    async def sock_recv_into(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_recv_into', _NEXT_ISSUE)

    async def sock_recvfrom(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_recvfrom', _NEXT_ISSUE)

    async def sock_recvfrom_into(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_recvfrom_into', _NEXT_ISSUE)

    async def sock_sendall(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_sendall', _NEXT_ISSUE)

    async def sock_sendto(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_sendto', _NEXT_ISSUE)

    async def sock_connect(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_connect', _NEXT_ISSUE)

    async def sock_accept(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_accept', _NEXT_ISSUE)

    async def sock_sendfile(self, *args: Any, **kwargs: Any) -> Any:
        _not_yet('sock_sendfile', _NEXT_ISSUE)


_unix_add_signal_handler = unix_events._UnixSelectorEventLoop.add_signal_handler

# Loops alive in this process; a forked child gives each its own epoll set and
# eventfd (sharing the parent's would deliver the child's events to the parent).
_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for loop in list(_live_loops):
        loop._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

# Keep `asyncio` importable for users who only `import oxloop`.
assert issubclass(Loop, asyncio.AbstractEventLoop)
