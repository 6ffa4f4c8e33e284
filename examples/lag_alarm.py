"""A lag alarm: warn when the event loop runs its work late.

Something that blocks the loop (a synchronous call, a CPU-heavy callback) makes every
timer and callback behind it late. oxloop measures that lateness as it runs, with no
clock read of its own; this task looks at it once a second and warns.

    python examples/lag_alarm.py
"""

from __future__ import annotations

import asyncio
import logging
import time

import oxloop

log = logging.getLogger('lag_alarm')


async def lag_alarm(threshold: float = 0.1, every: float = 1.0) -> None:
    """Log a warning whenever the loop's 99th-percentile lag is over ``threshold`` seconds."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        lag = oxloop.metrics(loop).lag
        if lag.p99 > threshold:
            log.warning(
                'event loop lag: p99 %.0f ms, max %.0f ms over the last %d iterations',
                lag.p99 * 1000,
                lag.max * 1000,
                lag.samples,
            )


def blocking_work() -> None:
    """A synchronous call made on the loop: what the alarm is for."""
    time.sleep(0.3)


async def main() -> None:
    alarm = asyncio.create_task(lag_alarm(threshold=0.05, every=0.2))
    await asyncio.sleep(0.1)
    blocking_work()
    await asyncio.sleep(0.3)
    alarm.cancel()


if __name__ == '__main__':
    logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')
    oxloop.run(main())
