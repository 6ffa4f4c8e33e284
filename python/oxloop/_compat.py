"""The Python half of oxloop's compat seam (the Rust half is src/py.rs).

Every private name of the stdlib that oxloop's Python code uses is reached from here,
and where the stdlib's private API differs between CPython versions, the version is
chosen here (by ``sys.version_info``) and nowhere else. ``NAMES`` lists them all with
the shape oxloop relies on; tests/test_compat.py checks it on the running interpreter.
"""

from __future__ import annotations

import _socket
import sys
from asyncio import base_events, constants, coroutines, events, selector_events, trsock, unix_events
from typing import Any

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

#: 3.12+: making a socket or datagram transport checks that no open transport has
#: the socket's fd already (``_ensure_fd_no_transport``).
ENSURE_FD_NO_TRANSPORT = PY312

# ----- classes, functions and constants -----------------------------------------------

#: The stdlib's Unix selector loop: ``Loop``'s second base (its cold paths).
UnixSelectorEventLoop = unix_events._UnixSelectorEventLoop
#: Its accept path, which TLS servers keep.
BaseSelectorEventLoop = selector_events.BaseSelectorEventLoop
TransportSocket = trsock.TransportSocket
SSL_HANDSHAKE_TIMEOUT = constants.SSL_HANDSHAKE_TIMEOUT
SSL_SHUTDOWN_TIMEOUT = constants.SSL_SHUTDOWN_TIMEOUT
ACCEPT_RETRY_DELAY = constants.ACCEPT_RETRY_DELAY

# The C socket type's own getters (ints), under socket.socket's enum-converting properties.
raw_family = _socket.socket.family.__get__
raw_type = _socket.socket.type.__get__


def gil_enabled() -> bool:
    """Whether the GIL is on: always before 3.13; ``sys._is_gil_enabled()`` after."""
    probe = getattr(sys, '_is_gil_enabled', None)
    return True if probe is None else bool(probe())


def is_debug_mode() -> bool:
    """``asyncio.coroutines._is_debug_mode()``, looked up per call (tests patch it)."""
    return coroutines._is_debug_mode()  # type: ignore[no-any-return]


def get_running_loop() -> Any:
    """``asyncio.events._get_running_loop()``, looked up per call (tests replace it)."""
    return events._get_running_loop()


def set_running_loop(loop: Any) -> None:
    """``asyncio.events._set_running_loop(loop)``, looked up per call (tests replace it)."""
    events._set_running_loop(loop)


def loop_state() -> dict[str, Any]:
    """The state that this version's stdlib loop ``__init__``s set and ``Loop.__init__``
    (which does not call them) must set too, for the stdlib methods it inherits."""
    if PY313:
        # BaseEventLoop (_run_forever_setup's saved hooks), _UnixSelectorEventLoop
        # (create_unix_server's paths, unlinked by _stop_serving).
        return {'_old_agen_hooks': None, '_unix_server_sockets': {}}
    return {}


# Private methods of the stdlib loop classes that ``Loop`` inherits and calls on itself.
INHERITED_METHODS = (
    '_check_closed',
    '_check_running',
    '_set_coroutine_origin_tracking',
    '_asyncgen_firstiter_hook',
    '_asyncgen_finalizer_hook',
    '_make_self_pipe',
    '_start_serving',
    '_ensure_fd_no_transport',
    '_check_callback',
)

#: ``(owner, name, shape)`` for every private name above; ``shape`` is ``'class'``,
#: ``'callable'``, ``'number'``, or the parameter names a callable's signature starts with.
NAMES: tuple[tuple[Any, str, Any], ...] = (
    (unix_events, '_UnixSelectorEventLoop', 'class'),
    (selector_events, 'BaseSelectorEventLoop', 'class'),
    (selector_events.BaseSelectorEventLoop, '_accept_connection', ('self', 'protocol_factory', 'sock')),
    (trsock, 'TransportSocket', 'class'),
    (coroutines, '_is_debug_mode', 'callable'),
    (constants, 'SSL_HANDSHAKE_TIMEOUT', 'number'),
    (constants, 'SSL_SHUTDOWN_TIMEOUT', 'number'),
    (constants, 'ACCEPT_RETRY_DELAY', 'number'),
    (_socket.socket.family, '__get__', 'callable'),
    (_socket.socket.type, '__get__', 'callable'),
    (events, '_get_running_loop', 'callable'),
    (events, '_set_running_loop', ('loop',)),
    (base_events.Server, '_attach', ('self', 'transport') if PY313 else ('self',)),
    (base_events.Server, '_detach', ('self', 'transport') if PY313 else ('self',)),
    *((UnixSelectorEventLoop, name, 'callable') for name in INHERITED_METHODS),
)
