"""Helpers shared by the side-by-side suites (micro.py and net.py)."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any, Protocol


class Named(Protocol):
    name: str


def pick_baseline(contestants: Sequence[Named]) -> str | None:
    """The loop the ratios are taken against: uvloop when present."""
    names = [c.name for c in contestants]
    for name in ('uvloop', 'asyncio', 'oxloop'):
        if name in names:
            return name
    return None


def aa_name(baseline: str | None) -> str | None:
    """The A/A control's name: the baseline measured a second time."""
    return f'{baseline}#2' if baseline else None


def machine_info(**extra: Any) -> dict[str, Any]:
    """What a results file records about the machine, plus each suite's own fields."""
    cpu_model = None
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu_model = line.split(':', 1)[1].strip()
                break
    return {
        'cpu_count': os.cpu_count(),
        'cpu_model': cpu_model,
        'python': sys.version.split()[0],
        'implementation': platform.python_implementation(),
        'platform': platform.platform(),
        'loadavg_at_start': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
        **extra,
    }
