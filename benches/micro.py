#!/usr/bin/env python
"""Micro-benchmarks of the event loop's hot paths: oxloop vs uvloop vs asyncio.

    .venv/bin/python benches/micro.py            # full run (make bench)
    .venv/bin/python benches/micro.py --quick    # short demonstration run (make demo)
    .venv/bin/python benches/micro.py --only call_soon,timers --rounds 9

Every benchmark runs the same Python body on every loop; only the loop differs.
Rounds are interleaved (round r runs every contestant once, in an order rotated by
r), every measurement gets a fresh loop, and uvloop is measured twice as two
independent contestants (``uvloop`` and ``uvloop#2``) so that the ratio
uvloop#2/uvloop shows the noise floor (an A/A control). See benches/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import faulthandler
import gc
import json
import os
import platform
import random
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import aa_name, machine_info, pick_baseline

clock = time.perf_counter  # what the benchmark bodies time with
RESULTS_DIR = Path(__file__).resolve().parent / 'results'
ALL_LOOPS = ('oxloop', 'oxloop+timing', 'uvloop', 'uvloop#2', 'rloop', 'asyncio')
MEASUREMENT_TIMEOUT = 60.0  # seconds; SIGALRM, then faulthandler kills the process at twice that


# --------------------------------------------------------------------------------------
# Contestants


@dataclass
class Contestant:
    name: str
    factory: Callable[[], asyncio.AbstractEventLoop]
    version: str


def discover(wanted: list[str]) -> tuple[list[Contestant], list[str], dict[str, Any]]:
    """Import the loops that were asked for; return (contestants, notes, version info)."""
    notes: list[str] = []
    info: dict[str, Any] = {}
    available: dict[str, tuple[Callable[[], asyncio.AbstractEventLoop], str]] = {}
    if 'oxloop' in wanted or 'oxloop+timing' in wanted:
        try:
            import oxloop

            oxloop.new_event_loop().close()
            profile = getattr(oxloop, 'build_profile', '?')
            available['oxloop'] = (oxloop.new_event_loop, f'{getattr(oxloop, "__version__", "?")} ({profile})')
            info['oxloop'] = {'version': getattr(oxloop, '__version__', None), 'build_profile': profile}
            if profile != 'release':
                notes.append(f'oxloop build profile is {profile!r}: its numbers say nothing about speed (make bench)')
            if 'oxloop+timing' in wanted:
                # oxloop with every callback timed (oxloop.time_callbacks): what the
                # one metric that needs a clock per callback costs when it is on.
                def timed_loop() -> asyncio.AbstractEventLoop:
                    loop = oxloop.new_event_loop()
                    oxloop.time_callbacks(loop)
                    return loop

                available['oxloop+timing'] = (timed_loop, available['oxloop'][1])
        except Exception as exc:  # noqa: BLE001 - any failure means: run without it
            notes.append(f'oxloop unavailable, skipped: {type(exc).__name__}: {exc}')
    if any(name.startswith('uvloop') for name in wanted):
        try:
            import uvloop

            available['uvloop'] = available['uvloop#2'] = (uvloop.new_event_loop, uvloop.__version__)
            info['uvloop'] = {'version': uvloop.__version__}
        except Exception as exc:  # noqa: BLE001 - any failure means: run without it
            notes.append(f'uvloop unavailable, skipped: {type(exc).__name__}: {exc}')
    if 'rloop' in wanted:
        try:
            import rloop

            available['rloop'] = (rloop.new_event_loop, getattr(rloop, '__version__', '?'))
            info['rloop'] = {'version': getattr(rloop, '__version__', None)}
        except Exception as exc:  # noqa: BLE001 - any failure means: run without it
            notes.append(f'rloop unavailable, skipped: {type(exc).__name__}: {exc}')
    if 'asyncio' in wanted:
        available['asyncio'] = (asyncio.new_event_loop, f'stdlib {platform.python_version()}')
    contestants = [Contestant(name, *available[name]) for name in wanted if name in available]
    if 'uvloop#2' in wanted and 'uvloop' not in available and 'asyncio' in available:
        # Keep a noise floor: the A/A control becomes asyncio measured twice.
        contestants.append(Contestant('asyncio#2', *available['asyncio']))
        notes.append('A/A control: asyncio#2 vs asyncio instead')
    for c in contestants:
        if c.name.endswith('#2'):
            continue
        loop = c.factory()
        try:
            if loop.get_debug():
                notes.append(
                    f'{c.name} runs in debug mode (PYTHONASYNCIODEBUG or -X dev): its numbers are not comparable'
                )
        finally:
            loop.close()
    return contestants, notes, info


# --------------------------------------------------------------------------------------
# Benchmark bodies. Each takes (loop, n, cb), runs the loop, and returns the seconds the
# loop spent on the n operations, timed from inside the loop (so loop start-up and
# teardown are not counted). ``cb`` is the trivial callback the loop has to run; the
# warm-up pass hands in a counter to check that the loop really ran what it should.


def noop() -> None:
    pass


class Counter:
    __slots__ = ('count',)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


BATCH = 1000  # callbacks / timers per loop iteration in the batched benchmarks


def _batched(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None], method: str) -> float:
    """n // BATCH iterations, each running BATCH callbacks scheduled with ``loop.<method>``
    by the previous one."""
    times = [0.0, 0.0]
    left = [n // BATCH]

    def step() -> None:
        post = getattr(loop, method)
        for _ in range(BATCH):
            post(cb)
        left[0] -= 1
        post(step if left[0] else finish)

    def start() -> None:
        times[0] = clock()
        step()

    def finish() -> None:
        times[1] = clock()
        loop.stop()

    loop.call_soon(start)
    loop.run_forever()
    return times[1] - times[0]


def b_call_soon(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    return _batched(loop, n, cb, 'call_soon')


def b_threadsafe_local(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    """call_soon_threadsafe called on the loop's own thread: the API's cost (handle,
    queue, wake-up check) without a second thread's scheduling."""
    return _batched(loop, n, cb, 'call_soon_threadsafe')


def b_call_soon_chain(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    """One callback that re-schedules itself n times: one loop iteration per callback, so
    this is the per-iteration cost (a zero-timeout poll, timer check, bookkeeping)."""
    times = [0.0, 0.0]
    left = [n]

    def step() -> None:
        cb()
        left[0] -= 1
        loop.call_soon(step if left[0] else finish)

    def start() -> None:
        times[0] = clock()
        step()

    def finish() -> None:
        times[1] = clock()
        loop.stop()

    loop.call_soon(start)
    loop.run_forever()
    return times[1] - times[0]


def b_call_later_cancel(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    """n // BATCH iterations, each making and cancelling BATCH far-off timers. asyncio
    purges cancelled timers lazily, at the start of the next iteration (once they are
    more than half of the heap); finish() runs after the last purge."""
    times = [0.0, 0.0]
    left = [n // BATCH]

    def step() -> None:
        call_later = loop.call_later
        for _ in range(BATCH):
            call_later(3600.0, cb).cancel()
        left[0] -= 1
        loop.call_soon(step if left[0] else finish)

    def start() -> None:
        times[0] = clock()
        step()

    def finish() -> None:
        times[1] = clock()
        loop.stop()

    loop.call_soon(start)
    loop.run_forever()
    return times[1] - times[0]


TIMER_SPREAD = 1e-5  # every timer of a batch is due within 10 us of loop.time() at scheduling
# BATCH distinct offsets in [0, TIMER_SPREAD), shuffled once (the same order for every loop).
TIMER_OFFSETS = [i * (TIMER_SPREAD / BATCH) for i in range(BATCH)]
random.Random(20240611).shuffle(TIMER_OFFSETS)


def b_timers_firing(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    """n // BATCH batches of BATCH timers at distinct, shuffled, already-due-by-the-end
    deadlines; the batch's last timer (strictly latest, scheduled last) starts the next."""
    times = [0.0, 0.0]
    left = [n // BATCH]
    offsets = TIMER_OFFSETS

    def step() -> None:
        call_at = loop.call_at
        base = loop.time()
        for offset in offsets:
            call_at(base + offset, cb)
        left[0] -= 1
        call_at(base + TIMER_SPREAD, step if left[0] else finish)

    def start() -> None:
        times[0] = clock()
        step()

    def finish() -> None:
        times[1] = clock()
        loop.stop()

    loop.call_soon(start)
    loop.run_forever()
    return times[1] - times[0]


def b_sleep0(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    sleep = asyncio.sleep

    async def pinger() -> None:
        for _ in range(n):
            await sleep(0)

    async def main() -> float:
        t0 = clock()
        a = loop.create_task(pinger())
        b = loop.create_task(pinger())
        await a
        await b
        return clock() - t0

    return loop.run_until_complete(main())


def b_create_task(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    async def trivial() -> None:
        pass

    async def main() -> float:
        create_task = loop.create_task
        t0 = clock()
        for _ in range(n):
            await create_task(trivial())
        return clock() - t0

    return loop.run_until_complete(main())


def b_future(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    async def main() -> float:
        create_future = loop.create_future
        call_soon = loop.call_soon
        t0 = clock()
        for _ in range(n):
            fut = create_future()
            call_soon(fut.set_result, None)
            await fut
        return clock() - t0

    return loop.run_until_complete(main())


def _threadsafe(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None], busy: bool) -> float:
    """Another thread posts n callbacks (then a final one) with call_soon_threadsafe.

    The producer thread exists before the clock starts and waits on an Event that the
    loop sets from its first callback. If ``busy``, the loop meanwhile runs a callback
    that keeps re-scheduling itself with call_soon, so it never blocks in its poll.
    """
    times = [0.0, 0.0]
    go = threading.Event()

    def produce() -> None:
        go.wait()
        post = loop.call_soon_threadsafe
        for _ in range(n):
            post(cb)
        post(finish)

    def start() -> None:
        times[0] = clock()
        go.set()
        if busy:
            spin()

    def spin() -> None:
        loop.call_soon(spin)

    def finish() -> None:
        times[1] = clock()
        loop.stop()

    thread = threading.Thread(target=produce, name='bench-producer', daemon=True)
    thread.start()
    loop.call_soon(start)
    loop.run_forever()
    thread.join()
    return times[1] - times[0]


def b_threadsafe_idle(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    return _threadsafe(loop, n, cb, busy=False)


def b_threadsafe_busy(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    return _threadsafe(loop, n, cb, busy=True)


def b_threadsafe_pingpong(loop: asyncio.AbstractEventLoop, n: int, cb: Callable[[], None]) -> float:
    """n cross-thread round trips: post one callback, wait until the loop has run it.

    The loop is idle in its poll every time, so each round trip is a wake-up.
    """
    times = [0.0, 0.0]
    go = threading.Event()
    ran = threading.Lock()
    ran.acquire()

    def produce() -> None:
        go.wait()
        post = loop.call_soon_threadsafe
        release = ran.release
        wait = ran.acquire
        for _ in range(n):
            post(release)
            wait()
        post(finish)

    def start() -> None:
        times[0] = clock()
        go.set()

    def finish() -> None:
        times[1] = clock()
        loop.stop()

    thread = threading.Thread(target=produce, name='bench-producer', daemon=True)
    thread.start()
    loop.call_soon(start)
    loop.run_forever()
    thread.join()
    return times[1] - times[0]


@dataclass
class Bench:
    name: str
    title: str
    body: Callable[[asyncio.AbstractEventLoop, int, Callable[[], None]], float]
    n: int  # operations per measurement in a full run (aim: 50-200 ms on uvloop)
    ops_per_n: int = 1  # loop operations per unit of n
    batch: int = 1  # n must be a multiple of this
    expect_calls: Callable[[int], int] | None = None  # how often the loop must call cb
    doc: str = ''

    def size(self, n: float) -> int:
        return max(1, round(n / self.batch)) * self.batch


BENCHES = [
    Bench(
        'call_soon',
        'call_soon',
        b_call_soon,
        n=500_000,
        batch=BATCH,
        expect_calls=lambda n: n,
        doc='call_soon(cb) from a callback, 1000 per loop iteration; until all n have run',
    ),
    Bench(
        'call_soon_chain',
        'call_soon chain (1/iteration)',
        b_call_soon_chain,
        n=100_000,
        expect_calls=lambda n: n,
        doc='a callback re-scheduling itself n times: one loop iteration each (per-iteration overhead)',
    ),
    Bench(
        'call_later_cancel',
        'call_later + cancel',
        b_call_later_cancel,
        n=150_000,
        batch=BATCH,
        expect_calls=lambda n: 0,
        doc='call_later(3600, cb).cancel(), 1000 per iteration (purged lazily by asyncio); n in all',
    ),
    Bench(
        'timers',
        'timers firing',
        b_timers_firing,
        n=150_000,
        batch=BATCH,
        expect_calls=lambda n: n,
        doc='call_at(now + distinct sub-10-us offsets, shuffled), 1000 per batch; until all n have fired',
    ),
    Bench(
        'sleep0',
        'sleep(0) ping-pong',
        b_sleep0,
        n=50_000,
        ops_per_n=2,
        doc='two tasks each await asyncio.sleep(0) n times (2n switches)',
    ),
    Bench(
        'create_task',
        'create_task + await',
        b_create_task,
        n=30_000,
        doc='await loop.create_task(trivial()) n times inside a task',
    ),
    Bench(
        'future',
        'future round trip',
        b_future,
        n=40_000,
        doc='fut = create_future(); call_soon(fut.set_result, None); await fut; n times',
    ),
    Bench(
        'threadsafe_local',
        'call_soon_threadsafe (same thread)',
        b_threadsafe_local,
        n=500_000,
        batch=BATCH,
        expect_calls=lambda n: n,
        doc='call_soon_threadsafe(cb) from a callback on the loop thread, 1000 per iteration',
    ),
    Bench(
        'threadsafe',
        'call_soon_threadsafe (idle)',
        b_threadsafe_idle,
        n=200_000,
        expect_calls=lambda n: n,
        doc='another thread posts n callbacks; the loop is otherwise idle (blocked in its poll)',
    ),
    Bench(
        'threadsafe_busy',
        'call_soon_threadsafe (busy)',
        b_threadsafe_busy,
        n=200_000,
        expect_calls=lambda n: n,
        doc='as threadsafe, while the loop spins a self-rescheduling call_soon callback',
    ),
    Bench(
        'threadsafe_pingpong',
        'threadsafe wake-up round trip',
        b_threadsafe_pingpong,
        n=4_000,
        doc='post one callback from a thread and wait for it to run; n times (each one wakes the loop)',
    ),
]
BENCH_BY_NAME = {b.name: b for b in BENCHES}


# --------------------------------------------------------------------------------------
# Running one measurement


class BenchTimeout(BaseException):
    """Raised from SIGALRM; a BaseException so that the loop's Handle._run doesn't eat it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise BenchTimeout(f'measurement took longer than {MEASUREMENT_TIMEOUT:.0f} s')


def measure(contestant: Contestant, bench: Bench, n: int, cb: Callable[[], None] = noop, idle_fd: bool = True) -> float:
    """One measurement on a fresh loop; returns seconds. GC is collected before and
    disabled during the run, identically for every loop."""
    loop = contestant.factory()
    idle: tuple[socket.socket, socket.socket] | None = None
    failures: list[dict[str, Any]] = []

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An exception in a callback fails the measurement at once instead of being
        # logged while the loop waits forever for the callback that never comes.
        failures.append(context)
        loop.stop()

    loop.set_exception_handler(on_error)
    try:
        if idle_fd:
            # An idle connection: a registered reader that never fires, so that the loop
            # has I/O to poll (as any real program has); a loop may skip its poll when
            # nothing but its own waker is registered.
            idle = socket.socketpair()
            loop.add_reader(idle[0].fileno(), noop)
        gc.collect()
        faulthandler.dump_traceback_later(2 * MEASUREMENT_TIMEOUT, exit=True)
        signal.setitimer(signal.ITIMER_REAL, MEASUREMENT_TIMEOUT)
        gc.disable()
        try:
            elapsed = bench.body(loop, n, cb)
        finally:
            gc.enable()
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
    finally:
        if idle is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(idle[0].fileno())
            idle[0].close()
            idle[1].close()
        with contextlib.suppress(Exception):
            loop.close()
        asyncio.events._set_running_loop(None)
    if failures:
        context = failures[0]
        exc = context.get('exception')
        raise RuntimeError(f'{context.get("message")}: {type(exc).__name__}: {exc}' if exc else context.get('message'))
    if not elapsed > 0:
        raise RuntimeError(f'nonsensical elapsed time {elapsed!r}')
    return elapsed


def check(contestant: Contestant, bench: Bench, n: int, idle_fd: bool = True) -> None:
    """Untimed warm-up that also checks the loop ran every callback it should have."""
    counter = Counter()
    measure(contestant, bench, n, counter, idle_fd)
    if bench.expect_calls is not None and counter.count != bench.expect_calls(n):
        raise AssertionError(f'the loop ran cb {counter.count} times, expected {bench.expect_calls(n)}')


# --------------------------------------------------------------------------------------
# Statistics and output


@dataclass
class BenchResult:
    bench: Bench
    n: int
    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def ops(self, name: str) -> list[float]:
        total = self.n * self.bench.ops_per_n
        return [total / s for s in self.seconds.get(name, [])]

    def ratios(self, name: str, baseline: str) -> list[float]:
        """Per-round ratio of ops/s (name / baseline), for rounds where both ran."""
        a, b = self.ops(name), self.ops(baseline)
        return [x / y for x, y in zip(a, b, strict=False)]


def fmt_rate(x: float | None) -> str:
    if x is None:
        return '-'
    for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if x >= scale:
            return f'{x / scale:.2f}{suffix}'
    return f'{x:.0f}'


def fmt_n(n: int) -> str:
    return f'{n // 1000}k' if n >= 10_000 and n % 1000 == 0 else str(n)


def summarise(result: BenchResult, names: list[str], baseline: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        'title': result.bench.title,
        'description': result.bench.doc,
        'n': result.n,
        'ops_per_measurement': result.n * result.bench.ops_per_n,
        'contestants': {},
        'errors': result.errors,
    }
    for name in names:
        ops = result.ops(name)
        if not ops:
            continue
        entry: dict[str, Any] = {
            'seconds': result.seconds[name],
            'ops_per_s': ops,
            'median_ops_per_s': statistics.median(ops),
            'min_ops_per_s': min(ops),
            'max_ops_per_s': max(ops),
        }
        if baseline and name != baseline and result.ops(baseline):
            ratios = result.ratios(name, baseline)
            entry['ratio_vs_' + baseline] = ratios
            entry['median_ratio'] = statistics.median(ratios)
            entry['min_ratio'] = min(ratios)
            entry['max_ratio'] = max(ratios)
            entry['best_ratio'] = max(ops) / max(result.ops(baseline))
        out['contestants'][name] = entry
    return out


def print_table(summaries: list[dict[str, Any]], names: list[str], baseline: str | None) -> None:
    others = [n for n in names if n != baseline and n != aa_name(baseline)]
    aa = aa_name(baseline) if aa_name(baseline) in names else None
    short = {'oxloop': 'oxloop', 'uvloop': 'uv', 'asyncio': 'asyncio'}
    base_short = short.get(baseline or '', baseline or '')
    headers = ['benchmark', 'N', *names]
    headers += [f'{short.get(o, o)}/{base_short}' for o in others]
    if aa:
        headers.append(f'A/A {short.get(aa, aa)}/{base_short} [min-max]')
    rows = []
    for s in summaries:
        row = [s['title'], fmt_n(s['n'])]
        for name in names:
            c = s['contestants'].get(name)
            row.append(fmt_rate(c['median_ops_per_s']) if c else ('ERR' if name in s['errors'] else '-'))
        aa_lo = aa_hi = None
        if aa and aa in s['contestants'] and 'median_ratio' in s['contestants'][aa]:
            aa_lo, aa_hi = s['contestants'][aa]['min_ratio'], s['contestants'][aa]['max_ratio']
        for o in others:
            c = s['contestants'].get(o)
            if c and 'median_ratio' in c:
                r = c['median_ratio']
                noise = aa_lo is not None and aa_lo <= r <= aa_hi
                row.append(f'{r:.2f}x' + ('~' if noise else ' '))
            else:
                row.append('-')
        if aa:
            c = s['contestants'].get(aa)
            if c and 'median_ratio' in c:
                row.append(f'{c["median_ratio"]:.2f}x [{c["min_ratio"]:.2f}-{c["max_ratio"]:.2f}]')
            else:
                row.append('-')
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    split = 2 + len(names)

    def line(cells: list[str]) -> str:
        parts = [str(cells[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return '  '.join(parts[:split]) + '  |  ' + '  '.join(parts[split:])

    print()
    print(line(headers))
    print('-' * len(line(headers)))
    for row in rows:
        print(line(row))
    print()
    print('ops/s: median over rounds.  Ratios: median over rounds of the per-round ratio of ops/s (>1: faster than')
    print(
        f'{baseline}).'
        + ('  "~": the ratio lies inside the A/A band, i.e. not distinguishable from noise.' if aa else '')
    )
    for s in summaries:
        for name, err in s['errors'].items():
            print(f'  {s["title"]}: {name} failed: {err}')


# --------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='short run: 5 rounds, N scaled by 0.5 (make demo)')
    p.add_argument('--rounds', type=int, help='interleaved rounds (default 7, or 5 with --quick)')
    p.add_argument('--scale', type=float, help='multiply every N by this (default 1, or 0.5 with --quick)')
    p.add_argument('--only', help='comma-separated benchmarks: ' + ','.join(BENCH_BY_NAME))
    p.add_argument('--loops', default=','.join(ALL_LOOPS), help=f'comma-separated (default {",".join(ALL_LOOPS)})')
    p.add_argument(
        '--no-idle-fd', action='store_true', help='do not register the idle socket reader each loop normally gets'
    )
    p.add_argument('--no-json', action='store_true', help='do not write benches/results/micro-<timestamp>.json')
    p.add_argument('--list', action='store_true', help='list the benchmarks and exit')
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 5 if args.quick else 7
    if args.scale is None:
        args.scale = 0.5 if args.quick else 1.0
    if args.rounds < 1 or args.scale <= 0:
        p.error('--rounds must be >= 1 and --scale > 0')
    names = [x.strip() for x in args.loops.split(',') if x.strip()]
    unknown = [x for x in names if x not in ALL_LOOPS]
    if unknown or not names:
        p.error(f'unknown loop(s) {unknown}; choose from {",".join(ALL_LOOPS)}')
    args.loop_names = list(dict.fromkeys(names))
    if args.only:
        wanted = [x.strip() for x in args.only.split(',') if x.strip()]
        unknown = [x for x in wanted if x not in BENCH_BY_NAME]
        if unknown:
            p.error(f'unknown benchmark(s) {unknown}; choose from {",".join(BENCH_BY_NAME)}')
        args.benches = [BENCH_BY_NAME[x] for x in dict.fromkeys(wanted)]
    else:
        args.benches = list(BENCHES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for b in BENCHES:
            print(f'{b.name:20} {b.title:32} N={b.n:<8} {b.doc}')
        return 0

    contestants, notes, info = discover(args.loop_names)
    for note in notes:
        print(f'note: {note}')
    if not contestants:
        print('no event loop to benchmark')
        return 1
    baseline = pick_baseline(contestants)
    names = [c.name for c in contestants]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    machine = machine_info(cpus_usable=usable, switch_interval=sys.getswitchinterval(), **info)
    versions = ', '.join(f'{c.name} {c.version}' for c in contestants if not c.name.endswith('#2'))
    print(
        f'machine: {machine["cpu_count"]} CPUs ({machine["cpus_usable"]} usable, {machine["cpu_model"]}), '
        f'{machine["implementation"]} {machine["python"]}, load {machine["loadavg_at_start"][0]:.2f}'
    )
    print(f'loops: {versions}')
    fds = 'no fd registered' if args.no_idle_fd else 'one idle reader registered'
    print(
        f'method: {args.rounds} interleaved rounds, rotated order, fresh loop per measurement, '
        f'gc off while timed, {fds}; N scale {args.scale:g}; ratios vs {baseline}'
    )
    if machine['loadavg_at_start'] and machine['loadavg_at_start'][0] > 0.5 * (machine['cpus_usable'] or 1):
        print('warning: the machine is busy; expect a wide A/A band')

    signal.signal(signal.SIGALRM, _on_alarm)
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    json_path = RESULTS_DIR / f'micro-{stamp}.json'
    doc: dict[str, Any] = {
        'timestamp': datetime.datetime.now().isoformat(timespec='seconds'),
        'machine': machine,
        'args': {
            'quick': args.quick,
            'rounds': args.rounds,
            'scale': args.scale,
            'loops': names,
            'idle_fd': not args.no_idle_fd,
        },
        'baseline': baseline,
        'aa_control': aa_name(baseline) if aa_name(baseline) in names else None,
        'notes': notes,
        'benchmarks': {},
    }
    summaries = []
    t_start = time.perf_counter()
    for bench in args.benches:
        n = bench.size(bench.n * args.scale)
        result = BenchResult(bench, n)
        alive = []
        print(f'  {bench.title} (N={n}) ...', end='', flush=True)
        t_bench = time.perf_counter()
        for c in contestants:
            try:
                check(c, bench, bench.size(n / 10), not args.no_idle_fd)
                alive.append(c)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                result.errors[c.name] = f'{type(exc).__name__}: {exc}'
        for r in range(args.rounds):
            k = r % len(alive) if alive else 0
            for c in alive[k:] + alive[:k]:
                if c.name in result.errors:
                    continue
                try:
                    result.seconds.setdefault(c.name, []).append(measure(c, bench, n, idle_fd=not args.no_idle_fd))
                except BaseException as exc:
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    result.errors[c.name] = f'round {r}: {type(exc).__name__}: {exc}'
                    result.seconds.pop(c.name, None)
        print(f' {time.perf_counter() - t_bench:.1f} s')
        summary = summarise(result, names, baseline)
        summaries.append(summary)
        doc['benchmarks'][bench.name] = summary
        if not args.no_json:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(doc, indent=1) + '\n')

    doc['total_seconds'] = time.perf_counter() - t_start
    print_table(summaries, names, baseline)
    for note in notes:
        print(f'note: {note}')
    if not args.no_json:
        json_path.write_text(json.dumps(doc, indent=1) + '\n')
        print(f'\nfull results: {os.path.relpath(json_path)}  (total {doc["total_seconds"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
