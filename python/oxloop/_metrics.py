"""Loop metrics: ``oxloop.metrics(loop)`` returns a :class:`LoopMetrics` snapshot.

The counters are kept on the loop's hot paths without a clock read of their own
(iterations, callbacks, bytes, lag from the loop time each iteration reads anyway);
callback durations need a clock read around every callback and are measured only
after ``oxloop.time_callbacks(loop)``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ._loop import Loop

__all__ = ('LagStats', 'LoopMetrics', 'SlowCallbacks', 'metrics', 'time_callbacks')


@dataclass(frozen=True)
class LagStats:
    """How late the loop ran its work, in seconds, over the last ``samples``
    iterations that ran work (at most 4,096).

    An iteration's sample is, for work that was waiting when it began (callbacks
    queued before it, I/O found ready without blocking), the time since the previous
    iteration started its callbacks: the most that work can have waited. Work the
    loop was blocked waiting for is not late (0). A late timer counts its lateness
    past its deadline.
    """

    samples: int
    max: float
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True)
class SlowCallbacks:
    """Callbacks (and transport events) that ran at least 1 ms, 10 ms, 100 ms, 1 s.

    Counted only while callback timing is on (:func:`time_callbacks`); each count
    includes the slower ones.
    """

    timing: bool
    over_1ms: int
    over_10ms: int
    over_100ms: int
    over_1s: int


@dataclass(frozen=True)
class LoopMetrics:
    """A snapshot of one oxloop loop's counters (totals since it was made)."""

    #: Loop iterations (asyncio's ``_run_once``).
    iterations: int
    #: Callbacks and transport events run (cancelled handles excluded).
    callbacks: int
    #: Seconds spent blocked waiting for I/O or timers (the GIL released).
    poll_seconds: float
    #: Seconds spent in ``run_forever``/``run_until_complete``; what is not polling
    #: is running callbacks (and the loop's own work).
    run_seconds: float
    lag: LagStats
    slow_callbacks: SlowCallbacks
    #: File descriptors watched for the application (the loop's own self-pipe
    #: excluded).
    fds_watched: int
    #: Timers scheduled and not cancelled.
    timers_pending: int
    #: Native transports (TCP, Unix, UDP, pipes) open on this loop.
    transports_open: int
    #: Bytes the native transports read from and wrote to their file descriptors.
    bytes_read: int
    bytes_written: int

    @property
    def busy_seconds(self) -> float:
        """Seconds running, not blocked in the poll."""
        return max(0.0, self.run_seconds - self.poll_seconds)


def _oxloop(loop: asyncio.AbstractEventLoop) -> Loop:
    if not isinstance(loop, Loop):
        raise TypeError(f'metrics are kept by oxloop loops only, not {type(loop).__name__}')
    return loop


def metrics(loop: asyncio.AbstractEventLoop | None = None) -> LoopMetrics:
    """A snapshot of ``loop``'s metrics (the running loop when not given)."""
    loop = _oxloop(asyncio.get_running_loop() if loop is None else loop)
    raw = loop._metrics()
    samples, worst, p50, p90, p99 = raw['lag']
    slow = raw['slow_callbacks']
    return LoopMetrics(
        iterations=raw['iterations'],
        callbacks=raw['callbacks'],
        poll_seconds=raw['poll_seconds'],
        run_seconds=raw['run_seconds'],
        lag=LagStats(samples, worst, p50, p90, p99),
        slow_callbacks=SlowCallbacks(raw['callback_timing'], *slow),
        # The self-pipe, once signal handling made it, is the loop's own.
        fds_watched=max(0, raw['fds_watched'] - (loop._ssock is not None)),
        timers_pending=raw['timers_pending'],
        transports_open=raw['transports_open'],
        bytes_read=raw['bytes_read'],
        bytes_written=raw['bytes_written'],
    )


def time_callbacks(loop: asyncio.AbstractEventLoop | None = None, enabled: bool = True) -> None:
    """Time every callback of ``loop`` (the running loop when not given) for
    :attr:`LoopMetrics.slow_callbacks`, or stop timing them: two clock reads per
    callback while on."""
    _oxloop(asyncio.get_running_loop() if loop is None else loop)._set_callback_timing(bool(enabled))
