"""oxloop: a drop-in asyncio event loop written in Rust.

Run a coroutine with ``oxloop.run(main())`` (like ``asyncio.run``), make it asyncio's
default with ``oxloop.install()``, or pass ``loop_factory=oxloop.new_event_loop`` to
``asyncio.Runner``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import _compat

if not _compat.gil_enabled():
    # The extension declares gil_used: a free-threaded CPython turns the GIL back on
    # when it imports it, unless PYTHON_GIL=0 / -X gil=0 forces it off. The loop's
    # state is guarded by the GIL, so running without it would be unsound.
    raise ImportError('oxloop needs the GIL: unset PYTHON_GIL=0 (or -X gil=0) to use it on a free-threaded build')

from ._loop import Loop
from ._metrics import LagStats, LoopMetrics, SlowCallbacks, metrics, time_callbacks
from ._oxloop import __version__, build_profile

__all__ = (
    'EventLoopPolicy',
    'LagStats',
    'Loop',
    'LoopMetrics',
    'SlowCallbacks',
    '__version__',
    'build_profile',
    'install',
    'metrics',
    'new_event_loop',
    'run',
    'time_callbacks',
)

_T = TypeVar('_T')


def new_event_loop() -> Loop:
    """Return a new oxloop event loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """An asyncio policy whose loops are oxloop loops.

    It derives from the platform's default policy, so the rest of its API (on Unix
    and CPython 3.11, the child-watcher methods) is the stdlib's.
    """

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return new_event_loop()


def install() -> None:
    """Make oxloop the loop that asyncio.run(), asyncio.new_event_loop() and friends create."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a fresh oxloop loop, as asyncio.run() does."""
    if _compat.get_running_loop() is not None:
        # CPython: asyncio.run checks before it creates a loop.
        raise RuntimeError('asyncio.run() cannot be called from a running event loop')
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
