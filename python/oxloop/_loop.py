"""The Python half of oxloop's event loop: cold paths only.

``Loop`` inherits the hot half (``call_soon``, timers, fd callbacks, the run
iteration, native transports) from the Rust ``LoopCore``, and everything else from
the stdlib's own Unix selector loop (``_UnixSelectorEventLoop`` and its
bases): ``run_until_complete``, tasks and futures, executors, async-generator
hooks, the exception handler, DNS, signals, and the orchestration of connections,
servers, pipes and subprocesses. That code keeps asyncio's exact behaviour and
messages; ``LoopCore`` comes first in the MRO and exposes the state it reads
(``_closed``, ``_stopping``, ``_debug``, ``_thread_id``) as properties.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import os
import selectors
import socket
import ssl
import sys
import threading
import weakref
from asyncio.log import logger
from typing import Any

from . import _compat, _oxloop

__all__ = ('Loop',)

# A socket built with this type flag on an fd is non-blocking without a syscall.
_SOCK_NONBLOCK = getattr(socket, 'SOCK_NONBLOCK', 0)
# accept() errors after which asyncio reports, stops accepting and retries later.
_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Loop(_oxloop.LoopCore, _compat.UnixSelectorEventLoop):  # type: ignore[misc]
    """An asyncio event loop whose core runs in Rust."""

    # close() may run from __del__ at interpreter shutdown, after this module's globals
    # (asyncio, sys) have been set to None: it reaches what it needs through the class.
    _base_close = asyncio.BaseEventLoop.close
    _is_finalizing = staticmethod(sys.is_finalizing)

    def __init__(self) -> None:
        # The stdlib loops' __init__, minus the state that LoopCore owns (ready queue,
        # timers, fd watches, _closed, _stopping, _thread_id, _clock_resolution).
        self._default_executor = None
        self._internal_fds = 1  # LoopCore's eventfd waker (the self-pipe adds one when made)
        self._exception_handler = None
        self.set_debug(_compat.is_debug_mode())
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        self._old_agen_hooks: tuple[Any, ...] | None = None  # saved by _run_forever_setup
        # unix_events._UnixSelectorEventLoop state.
        self._signal_handlers: dict[int, Any] = {}
        # The self-pipe that signal.set_wakeup_fd() writes to; made on first use.
        self._ssock: socket.socket | None = None
        self._csock: socket.socket | None = None
        self._selector = _SelectorView(self)
        # asyncio's WeakValueDictionary, in Rust (src/event_loop/transport_map.rs).
        self._transports: Any = _oxloop.TransportMap()
        # What this version's stdlib __init__s add for the methods Loop inherits.
        for name, value in _compat.loop_state().items():
            setattr(self, name, value)
        _live_loops.add(self)

    # ----- running ---------------------------------------------------------------

    def run_forever(self) -> None:
        """Run until stop() is called."""
        # CPython 3.13's BaseEventLoop.run_forever (3.11's, split in the two halves
        # that loops integrating a GUI loop call), with the iterations in Rust. The
        # setup is outside the try, as before 3.13 and since CPython gh-130145: a loop
        # that refuses to run must not clear the loop that is running (3.13.0 does).
        self._run_forever_setup()
        try:
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
            self._run_forever_cleanup()

    def _run_forever_setup(self) -> None:
        """Prepare the loop to run (CPython 3.13's hook for loops that drive their
        own iterations)."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook)
        _compat.set_running_loop(self)

    def _run_forever_cleanup(self) -> None:
        """Undo _run_forever_setup (CPython 3.13's counterpart)."""
        self._stopping = False
        self._thread_id = None
        _compat.set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def close(self) -> None:
        """Close the event loop: drop pending callbacks, shut the default executor
        down without waiting, remove signal handlers and release the poller."""
        if self.is_running():
            raise RuntimeError('Cannot close a running event loop')
        if self.is_closed():
            return
        self._close_self_pipe()
        self._base_close()
        self._close_core()
        self._internal_fds -= 1  # the eventfd waker
        self._selector = None  # CPython: a closed selector loop has no selector
        # CPython: _UnixSelectorEventLoop.close removes signal handlers afterwards.
        if not self._is_finalizing():
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

    # ----- transports -------------------------------------------------------------

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: Any = None,
        server: Any = None,
        _peer: bytes | None = None,
    ) -> Any:
        # The native stream transport (TCP and Unix); TLS keeps the stdlib's
        # SSLProtocol on top of it or of the stdlib's transport. A server's accepted
        # connection has a brand-new fd: only the others are checked (3.12+).
        # `_peer`: the raw address of an accepted connection (`_accept_many`), from
        # which the transport makes `peername` when asked.
        if _compat.ENSURE_FD_NO_TRANSPORT and server is None:
            self._ensure_fd_no_transport(sock)
        return _oxloop.SocketTransport._create(self, sock, protocol, waiter, extra, server, _peer)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: Any = None,
        extra: Any = None,
        server: Any = None,
        ssl_handshake_timeout: Any = _compat.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: Any = _compat.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        # selector_events' _make_ssl_transport with oxloop's TLS layer over oxloop's
        # socket transport (which hands it the bytes it reads without a Python call).
        ssl_protocol = _oxloop.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        app_transport = ssl_protocol._app_transport  # made with the protocol, as asyncio's
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return app_transport

    async def start_tls(
        self,
        transport: Any,
        protocol: Any,
        sslcontext: Any,
        *,
        server_side: bool = False,
        server_hostname: Any = None,
        ssl_handshake_timeout: Any = None,
        ssl_shutdown_timeout: Any = None,
    ) -> Any:
        """Upgrade transport to TLS.

        Return a new transport that *protocol* should start using immediately.
        """
        # CPython 3.11-3.13 BaseEventLoop.start_tls, with oxloop's TLS layer.
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(f'sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}')
        if not getattr(transport, '_start_tls_compatible', False):
            raise TypeError(f'transport {transport!r} is not supported by start_tls()')
        waiter = self.create_future()
        ssl_protocol = _oxloop.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )
        ssl_protocol._get_app_transport()  # made with the protocol, as asyncio's
        # Pause early so that "ssl_protocol.data_received()" doesn't
        # have a chance to get called before "ssl_protocol.connection_made()".
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

    def _make_datagram_transport(
        self, sock: socket.socket, protocol: Any, address: Any = None, waiter: Any = None, extra: Any = None
    ) -> Any:
        if _compat.ENSURE_FD_NO_TRANSPORT:
            self._ensure_fd_no_transport(sock)
        return _oxloop.DatagramTransport._create(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None) -> Any:
        return _oxloop.ReadPipeTransport._create(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None, extra: Any = None) -> Any:
        return _oxloop.WritePipeTransport._create(self, pipe, protocol, waiter, extra)

    # ----- accepting (selector_events.py) ---------------------------------------------

    def _accept_connection(
        self,
        protocol_factory: Any,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: Any = _compat.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: Any = _compat.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        if sslcontext is not None:
            # TLS keeps the stdlib's path: the handshake is awaited in a task.
            return _compat.BaseSelectorEventLoop._accept_connection(
                self, protocol_factory, sock, sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout
            )
        # CPython 3.11 _accept_connection, but the transport is made at once (as uvloop
        # does) instead of in a task per connection (_accept_connection2): the protocol
        # factory runs in a copy of the context, as it would in that task.
        args = (protocol_factory, sock, sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)
        if type(sock) is not socket.socket:
            # A socket subclass may override accept(): call it, as asyncio does.
            for _ in range(backlog):
                try:
                    conn, addr = sock.accept()
                    conn.setblocking(False)
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    return None
                except OSError as exc:
                    self._accept_failed(exc, args)
                else:
                    self._new_connection(protocol_factory, conn, addr, server)
            return None
        # accept4 in Rust: non-blocking sockets without a setblocking() call, and the
        # end of the queue without a BlockingIOError raised and caught. Up to
        # `backlog` of them, as asyncio's `for _ in range(backlog)`: none when it is
        # 0 or negative (listen() takes any int).
        accepted, error = self._accept_many(sock.fileno(), backlog)
        # One report and one retry per batch (asyncio's loop goes on accepting after
        # an EMFILE and reports again, up to `backlog` times), made before the
        # protocol factories run, as asyncio's (in tasks) do.
        report = error is not None and error.errno in _ACCEPT_RESOURCE_ERRORS
        if accepted and not self._debug and self._own_make_socket_transport():
            # The bare fds go to Rust, which owns them until their transports do
            # (a connection's socket.socket is made only when asked for).
            self._accept_batch(
                protocol_factory,
                accepted,
                server,
                sock,
                functools.partial(self._accept_failed, error, args) if report else None,
            )
        else:
            conns = self._adopt(sock, accepted)  # owned before any Python code runs
            if report:
                self._accept_failed(error, args)
            if conns:
                self._new_connections(protocol_factory, conns, server, raw=True)
        if error is not None and not report:
            raise error  # The event loop will catch, log and ignore it.
        return None

    def _own_make_socket_transport(self) -> bool:
        """Whether _make_socket_transport is this class's own (not overridden by a
        subclass or patched on the instance): then accepted connections are made
        in Rust (LoopCore._accept_batch)."""
        return type(self)._make_socket_transport is Loop._make_socket_transport and (
            '_make_socket_transport' not in self.__dict__
        )

    @staticmethod
    def _adopt(listener: socket.socket, accepted: list[tuple[int, Any]]) -> list[tuple[socket.socket, Any]]:
        """Give each accepted fd to a socket.socket before any Python code runs with
        the rest of them bare; an fd that cannot be given one is closed."""
        # The listener's raw family and type: socket.socket's properties convert to
        # enums on every read (socket.accept() reads them twice).
        family, type_, proto = _compat.raw_family(listener), _compat.raw_type(listener) | _SOCK_NONBLOCK, listener.proto
        conns: list[tuple[socket.socket, Any]] = []
        try:
            for fd, addr in accepted:
                conns.append((socket.socket(family, type_, proto, fileno=fd), addr))
        finally:
            for fd, _ in accepted[len(conns) :]:
                os.close(fd)
        return conns

    def _new_connections(
        self, protocol_factory: Any, conns: list[tuple[socket.socket, Any]], server: Any, raw: bool = False
    ) -> None:
        # raw: the addresses are _accept_many's raw bytes (see _make_socket_transport).
        for i, (conn, addr) in enumerate(conns):
            try:
                self._new_connection(protocol_factory, conn, addr, server, raw)
            except BaseException:
                # SystemExit or KeyboardInterrupt from a protocol factory: asyncio has
                # the rest of the batch in tasks of their own, which run when the loop
                # runs again. So do these; the sockets own their fds meanwhile.
                if i + 1 < len(conns):
                    self.call_soon(self._new_connections, protocol_factory, conns[i + 1 :], server, raw)
                raise

    def _accept_failed(self, exc: OSError, args: tuple[Any, ...]) -> None:
        """asyncio's handling of a failed accept(): out of resources, pause and retry."""
        if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
            raise exc  # The event loop will catch, log and ignore it.
        sock = args[1]
        self.call_exception_handler(
            {
                'message': 'socket.accept() out of system resource',
                'exception': exc,
                'socket': _compat.TransportSocket(sock),
            }
        )
        self._remove_reader(sock.fileno())
        self.call_later(_compat.ACCEPT_RETRY_DELAY, self._start_serving, *args)

    def _new_connection(
        self, protocol_factory: Any, conn: socket.socket, addr: Any, server: Any, raw: bool = False
    ) -> None:
        if self._debug:
            shown = _oxloop.LoopCore._sockaddr(addr) if raw else addr
            logger.debug('%r got a new connection from %r: %r', server, shown, conn)
        contextvars.copy_context().run(self._accepted, protocol_factory, conn, addr, server, raw)

    def _accepted(self, protocol_factory: Any, conn: socket.socket, addr: Any, server: Any, raw: bool) -> None:
        protocol = None
        transport = None
        try:
            protocol = protocol_factory()
            if raw:
                transport = self._make_socket_transport(conn, protocol, server=server, _peer=addr)
            else:
                transport = self._make_socket_transport(conn, protocol, extra={'peername': addr}, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - as _accept_connection2: all but exits
            if self._debug:
                context = {'message': 'Error on transport creation for incoming connection', 'exception': exc}
                if protocol is not None:
                    context['protocol'] = protocol
                if transport is not None:
                    context['transport'] = transport
                self.call_exception_handler(context)

    # ----- sock_* (selector_events.py; the checks, first try and wait are native) ------

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        """Receive up to n bytes from the socket (asyncio's sock_recv)."""
        done, result = self._sock_start(sock, 'recv', n)
        return result if done else await result  # type: ignore[no-any-return]

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive into buf from the socket (asyncio's sock_recv_into)."""
        done, result = self._sock_start(sock, 'recv_into', buf)
        return result if done else await result  # type: ignore[no-any-return]

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        """Send all of data to the socket (asyncio's sock_sendall)."""
        done, result = self._sock_start(sock, 'sendall', data)
        if not done:
            await result

    # ----- signals (the rest is unix_events._UnixSelectorEventLoop's) ----------------

    def _close_self_pipe(self) -> None:
        if self._ssock is None or self._csock is None:
            return
        self._remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._ssock = None
        self._csock.close()
        self._csock = None
        self._internal_fds -= 1

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        """Add a handler for a UNIX signal. Raise ValueError if the signal number is
        invalid or uncatchable, RuntimeError if there is a problem setting it up."""
        # The self-pipe that signal.set_wakeup_fd() writes to is made on first use
        # (the stdlib makes it in __init__; oxloop's own wake-ups use an eventfd).
        if self._ssock is None and not self.is_closed():
            self._make_self_pipe()
        _compat.UnixSelectorEventLoop.add_signal_handler(self, sig, callback, *args)


class _SelectorView:
    """A read-only ``selectors.BaseSelector`` stand-in for ``loop._selector``.

    oxloop polls in Rust; asyncio's transports and tests only query the selector
    (``get_key``/``get_map``), so they get the Rust registry's answers.
    """

    def __init__(self, loop: Loop) -> None:
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        loop = self._loop()
        if loop is None or loop.is_closed():
            raise KeyError(f'{fileobj!r} is not registered')
        registered, fd, events, reader, writer = loop._fd_key(fileobj)
        return selectors.SelectorKey(registered, fd, events, (reader, writer))

    def get_map(self) -> dict[int, selectors.SelectorKey]:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return {}
        return {fd: self.get_key(fd) for fd in loop._watched_fds()}

    def close(self) -> None:
        pass


# Loops alive in this process; a forked child gives each its own epoll set and
# eventfd (sharing the parent's would deliver the child's events to the parent).
_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for loop in list(_live_loops):
        loop._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

# Keep `asyncio` importable for users who only `import oxloop`.
assert issubclass(Loop, asyncio.AbstractEventLoop)
