"""Expected failures of CPython's asyncio tests on oxloop.

Keys are ``<cpython module>::<class>::<test>`` patterns (``fnmatch``, case-sensitive);
values are the reason, which must be one of ``ALLOWED_REASONS``: capabilities that later
issues deliver. Each match becomes ``pytest.mark.xfail(reason=..., strict=True)``, so a
test that starts passing must be removed from here.

A failure in the core loop's scope (callbacks, timers, run/stop, futures/tasks,
readers/writers, signals, executors, async generators, the exception handler, debug
mode, policies/runners) is a bug, never an entry here.
"""

from __future__ import annotations

NET = 'issue 4: network transports (TCP/Unix/UDP, servers, sock_*, pipes, sendfile)'
TLS = 'TLS'
SUBPROCESS = 'subprocesses'

ALLOWED_REASONS = frozenset({NET, TLS, SUBPROCESS})

XFAILS: dict[str, str] = {}
