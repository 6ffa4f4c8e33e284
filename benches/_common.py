"""Helpers shared by the side-by-side suites (micro.py and net.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


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
