"""CPython's own ``test.test_asyncio`` as the referee for oxloop.

Run: ``.venv/bin/python -m pytest tests/cpython -q -p no:cacheprovider``.
``OXLOOP_CONFORMANCE_LOOP=asyncio`` runs the same selection on the stdlib's loop and
policy instead (a check of the harness: everything must pass there).

* Each ``test_cpython_<module>.py`` re-exports the test classes of
  ``test.test_asyncio.<module>`` and adds ``Oxloop*`` classes built from CPython's loop
  mixins (``create_event_loop``/``new_loop`` hooks) that return oxloop loops.
* Before every test, a fresh ``oxloop.EventLoopPolicy`` (wrapped to count its loops) is
  installed: tests that make loops with ``asyncio.new_event_loop()``, ``asyncio.run()``
  or ``IsolatedAsyncioTestCase`` get oxloop's.
* Tests that run on a loop that is not ours (``test_utils.TestLoop``, an explicit
  ``SelectorEventLoop``, a mocked ``BaseEventLoop``) or on no loop are *left out*
  (deselected, counted and reported with the reason).
* Every stdlib ``BaseEventLoop`` built or run during a test is recorded; the summary says
  how many tests ran on a target loop and lists any that ran on something else.
* ``xfails.py`` lists the expected failures (later issues' capabilities only).
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import _cpython_harness as harness
import xfails

# Per-test timeout (seconds). CPython's slowest test here takes ~3 s on the stdlib loop; a
# test that hangs on oxloop must not eat the whole budget.
TEST_TIMEOUT = 30.0

# An expected failure needs no more: a test that hangs because a later capability is
# missing (e.g. a server that never comes up) fails fast.
XFAIL_TIMEOUT = 10.0
# How long an expected failure's leftover helper threads get to finish after it.
XFAIL_THREAD_GRACE = 5.0
# Beyond TEST_TIMEOUT + this, a test that pytest-timeout could not interrupt ends the run.
HARD_TIMEOUT_GRACE = 60.0

# pyproject's ``filterwarnings = error`` stays in force: the selected tests emit no
# warning on the stdlib loop (checked with OXLOOP_CONFORMANCE_LOOP=asyncio), so a warning
# on oxloop is a difference.

_items: dict[str, str] = {}  # nodeid -> CPython module
_left_out: dict[str, Counter[str]] = defaultdict(Counter)  # module -> reason -> count
_outcome: dict[str, str] = {}  # nodeid -> outcome
_usage: dict[str, harness.LoopUsage] = {}
_xfail_hits: Counter[str] = Counter()
_SEVERITY = ('passed', 'skipped', 'xfailed', 'xpassed', 'failed', 'error')
_t0 = 0.0
_THREADS_KEY = pytest.StashKey[set]()


def _ours(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_configure(config: pytest.Config) -> None:
    global _t0
    _t0 = time.monotonic()
    harness.install_tracking()


def pytest_unconfigure(config: pytest.Config) -> None:
    harness.uninstall_tracking()


def _xfail_reason(key: str) -> str | None:
    for pattern, reason in xfails.XFAILS.items():
        if fnmatchcase(key, pattern):
            _xfail_hits[pattern] += 1
            return reason
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    bad = {p: r for p, r in xfails.XFAILS.items() if r not in xfails.ALLOWED_REASONS}
    if bad:
        raise pytest.UsageError(f'tests/cpython/xfails.py: reasons must be one of ALLOWED_REASONS: {bad}')
    kept, deselected = [], []
    for item in items:
        if not _ours(item):
            kept.append(item)
            continue
        module = getattr(item.module, 'CPYTHON_MODULE', None)
        cls = getattr(item, 'cls', None)
        if module is None or cls is None:
            kept.append(item)
            continue
        name = item.name
        reason = harness.left_out_reason(module, cls, name)
        if reason is not None:
            _left_out[module][reason] += 1
            deselected.append(item)
            continue
        _items[item.nodeid] = module
        xfail = None if harness.MODE != 'oxloop' else _xfail_reason(f'{module}::{cls.__name__}::{name}')
        if xfail is not None:
            item.add_marker(pytest.mark.xfail(reason=xfail, strict=True))
        if item.get_closest_marker('timeout') is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT if xfail is None else XFAIL_TIMEOUT))
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    if _items:
        # Importing CPython's test modules and collecting ~2,400 tests leaves a large
        # heap: freeze it so that the per-test collections (CPython's tearDowns call
        # support.gc_collect(); see also pytest_runtest_teardown) only scan new objects.
        gc.collect()
        gc.freeze()


@pytest.fixture(scope='session', autouse=True)
def _scratch_cwd():
    """CPython's tests write scratch files (os_helper.TESTFN) into the current
    directory, as under regrtest: keep them out of the repository."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix='oxloop-cpython-') as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


@pytest.fixture(autouse=True)
def _target_policy(request: pytest.FixtureRequest):
    """Install the policy under test before each test (CPython's modules reset it to
    None in tearDownModule) and record which loops the test made and ran.

    Also a last-resort guard: pytest-timeout interrupts a hung test with SIGALRM, which
    needs the loop to let Python handle signals; if it does not, faulthandler dumps every
    thread's traceback and ends the run instead of hanging CI."""
    harness.reset_usage()
    request.node.stash[_THREADS_KEY] = set(threading.enumerate())
    saved = harness.snapshot_globals()
    asyncio.set_event_loop_policy(harness.TargetPolicy())
    # As under regrtest, where an earlier test's tearDown (test_utils.TestCase) has
    # called set_event_loop(None): get_event_loop() then raises instead of making a
    # loop with a DeprecationWarning (3.12's test_create_subprocess_with_pidfd checks).
    asyncio.set_event_loop(None)
    faulthandler.dump_traceback_later(TEST_TIMEOUT + HARD_TIMEOUT_GRACE, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        usage = _usage[request.node.nodeid] = harness.current_usage()
        asyncio.set_event_loop_policy(None)
        harness.restore_globals(saved)
    if usage.verdict == 'foreign':
        # The left-out rules missed it: its result says nothing about oxloop.
        pytest.fail(f'ran a loop that is not the one under test: {dict(usage.foreign_ran)}', pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """A failed or expected-to-fail test (a missing later capability) often skips its
    cleanup and leaks loops, sockets, pipes, ptys or helper threads. Reclaim them now,
    quietly (the test already fails), instead of letting their ResourceWarnings land on
    whichever later test happens to trigger the collection (pytest keeps the last failure's frames alive in ``sys.last_*`` until the
    next test; a helper thread may drop its socket whenever it ends)."""
    try:
        return (yield)
    finally:
        failed = _outcome.get(item.nodeid) in ('failed', 'error')
        if item.nodeid in _items and (failed or item.get_closest_marker('xfail') is not None):
            before = item.stash.get(_THREADS_KEY, None)
            started = set() if before is None else set(threading.enumerate()) - before - {threading.current_thread()}
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', ResourceWarning)
                for name in ('last_type', 'last_value', 'last_traceback'):
                    if hasattr(sys, name):
                        delattr(sys, name)
                started = {t for t in started if t.is_alive()}
                if started:  # they may be blocked on a socket that only the collection closes
                    gc.collect()
                    deadline = time.monotonic() + XFAIL_THREAD_GRACE
                    for thread in started:
                        thread.join(max(0.0, deadline - time.monotonic()))
                gc.collect()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _items:
        return
    xfail = hasattr(report, 'wasxfail')
    if report.failed:
        outcome = 'failed' if report.when == 'call' else 'error'
    elif report.skipped:
        outcome = 'xfailed' if xfail else 'skipped'
    elif report.when == 'call':
        outcome = 'xpassed' if xfail else 'passed'
    else:
        return
    prev = _outcome.get(report.nodeid)
    if prev is None or _SEVERITY.index(outcome) > _SEVERITY.index(prev):
        _outcome[report.nodeid] = outcome


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _items and not _left_out:
        return
    tr = terminalreporter
    modules = sorted(set(_items.values()) | set(_left_out))
    cols = ('passed', 'failed', 'error', 'xfailed', 'skipped', 'left out', 'on target')
    rows = {m: Counter() for m in modules}
    off_target: dict[str, list[str]] = defaultdict(list)
    for nodeid, module in _items.items():
        outcome = _outcome.get(nodeid)
        if outcome is None:  # not run (e.g. -x stopped the session)
            continue
        if outcome == 'xpassed':
            outcome = 'failed'
        rows[module][outcome] += 1
        usage = _usage.get(nodeid)
        if outcome == 'skipped' or usage is None:
            continue
        if usage.verdict == 'target':
            rows[module]['on target'] += 1
        else:
            off_target[usage.verdict].append(nodeid)
    for module, reasons in _left_out.items():
        rows[module]['left out'] = sum(reasons.values())

    target = 'oxloop' if harness.MODE == 'oxloop' else 'target'
    a_target = 'an oxloop' if harness.MODE == 'oxloop' else 'a target'
    tr.write_sep('=', f'CPython test_asyncio conformance on {harness.TARGET_NAME}')
    header = f'{"module":<20}' + ''.join(f'{c if c != "on target" else "on " + target:>11}' for c in cols)
    tr.write_line(header)
    total = Counter()
    for module in modules:
        total.update(rows[module])
        tr.write_line(f'{module:<20}' + ''.join(f'{rows[module][c]:>11}' for c in cols))
    tr.write_line('-' * len(header))
    tr.write_line(f'{"total":<20}' + ''.join(f'{total[c]:>11}' for c in cols))

    ran = sum(total[c] for c in ('passed', 'failed', 'error', 'xfailed'))
    tr.write_line('')
    running = sum(1 for n, u in _usage.items() if n in _outcome and u.verdict == 'target' and u.target_ran)
    tr.write_line(
        f'{total["on target"]} of the {ran} tests that ran did so on {a_target} loop and ran no other loop '
        f'({running} of them ran it; {harness.loops_by_policy} loops made by the installed policy, '
        f"{harness.loops_by_factory} by the mixins' loop hooks)."
    )
    labels = {
        'foreign': 'ran a loop that is not ours',
        'foreign-unused': 'made only loops that are not ours (never ran them)',
        'no-loop': 'made no loop at all',
    }
    for verdict, nodeids in sorted(off_target.items()):
        tr.write_line(f'{len(nodeids)} tests {labels[verdict]}:')
        for nodeid in sorted(nodeids):
            u = _usage[nodeid]
            what = dict(u.foreign_ran or u.foreign_created)
            tr.write_line(f'    {nodeid} {what if what else ""}')

    tr.write_line('')
    tr.write_line('Left out (deselected: they test nothing of ours):')
    for module in sorted(_left_out):
        for reason, n in sorted(_left_out[module].items(), key=lambda kv: -kv[1]):
            tr.write_line(f'    {module:<20} {n:>5}  {reason}')
    if harness.MODE == 'oxloop' and not config.option.keyword and not config.option.markexpr:
        collected = set(_items.values())
        stale = [p for p in xfails.XFAILS if not _xfail_hits[p] and p.split('::', 1)[0] in collected]
        if stale:
            tr.write_line('')
            tr.write_line(f'xfails.py patterns that matched no collected test (remove them): {stale}')
    tr.write_line(f'conformance run time: {time.monotonic() - _t0:.1f} s')
