"""The programs in examples/ run, and do what their docstrings say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / 'examples'


def test_lag_alarm_warns_about_a_blocking_call():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / 'lag_alarm.py')],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if 'event loop lag' in line]
    assert warnings, proc.stderr
    assert 'WARNING lag_alarm: event loop lag: p99' in warnings[0]
