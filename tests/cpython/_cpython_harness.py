"""Shared machinery for running CPython's ``test.test_asyncio`` against oxloop.

* ``new_target_loop()`` makes a loop of the implementation under test (oxloop by default;
  the stdlib's loop when ``OXLOOP_CONFORMANCE_LOOP=asyncio``, to check the harness itself).
* ``TargetPolicy`` is the policy installed before every test: oxloop's own
  ``EventLoopPolicy`` (or the stdlib's default policy), counting the loops it makes.
* Every loop is tracked: loops of the implementation under test are *target* loops;
  any other ``asyncio.BaseEventLoop`` built during a test (``test_utils.TestLoop``, an
  explicit ``SelectorEventLoop``, a mocked ``BaseEventLoop``) is *foreign*. The per-test
  record proves which loop each test actually ran on.
* ``export_tests()`` re-exports a CPython module's test classes into one of our test
  files; ``left_out_reason()`` decides, from the source of a test and its fixtures, which
  tests construct a loop that is not ours and so test nothing of ours.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import re
import threading
import unittest
import weakref
from asyncio import base_events, events
from collections import Counter
from dataclasses import dataclass, field

LOOP_ENV = 'OXLOOP_CONFORMANCE_LOOP'
MODE = os.environ.get(LOOP_ENV, 'oxloop') or 'oxloop'
if MODE not in ('oxloop', 'asyncio'):
    raise RuntimeError(f'{LOOP_ENV} must be "oxloop" (the default) or "asyncio", not {MODE!r}')
TARGET_NAME = 'oxloop' if MODE == 'oxloop' else 'asyncio (harness check)'

try:
    import test.support
    import test.test_asyncio  # noqa: F401
    from test.test_asyncio import utils as test_utils
except ImportError as exc:  # pragma: no cover - the CI machine has them
    raise RuntimeError(
        "CPython's own asyncio test suite (test.test_asyncio) cannot be imported: "
        f'{exc!r}. The conformance run needs the interpreter\'s "test" package '
        '(pyenv/python.org builds ship it; Debian splits it into libpython3.11-testsuite).'
    ) from exc

if MODE == 'oxloop':
    import oxloop

    _BasePolicy: type[asyncio.AbstractEventLoopPolicy] = oxloop.EventLoopPolicy
else:
    _BasePolicy = asyncio.DefaultEventLoopPolicy


# ----- loop tracking -------------------------------------------------------------------


@dataclass
class LoopUsage:
    """Which loops one test made and ran."""

    target_created: int = 0
    target_ran: int = 0
    foreign_created: Counter[str] = field(default_factory=Counter)
    foreign_ran: Counter[str] = field(default_factory=Counter)

    @property
    def verdict(self) -> str:
        if self.foreign_ran:
            return 'foreign'
        if self.target_created:
            return 'target'
        if self.foreign_created:
            return 'foreign-unused'  # made (e.g. in setUp) but never ran, and no target loop
        return 'no-loop'


_state = threading.local()
_current = LoopUsage()
_foreign_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_target_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
loops_by_policy = 0  # loops made through TargetPolicy over the whole session
loops_by_factory = 0  # loops made by new_target_loop() (the mixins' create_event_loop hooks)


def reset_usage() -> None:
    global _current
    _current = LoopUsage()


def current_usage() -> LoopUsage:
    return _current


def _record_target(loop: asyncio.AbstractEventLoop) -> None:
    if MODE == 'oxloop' and not isinstance(loop, oxloop.Loop):
        raise AssertionError(f'the target factory returned {loop!r}, not an oxloop.Loop')
    _target_loops.add(loop)
    _current.target_created += 1


def _make_target_loop() -> asyncio.AbstractEventLoop:
    _state.making_target = True
    try:
        if MODE == 'oxloop':
            return oxloop.new_event_loop()
        return asyncio.SelectorEventLoop()
    finally:
        _state.making_target = False


def new_target_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the implementation under test (what the mixins' hooks return)."""
    global loops_by_factory
    loop = _make_target_loop()
    loops_by_factory += 1
    _record_target(loop)
    return loop


class TargetPolicy(_BasePolicy):  # type: ignore[misc,valid-type]
    """The policy under test, counting the loops it creates."""

    def _loop_factory(self) -> asyncio.AbstractEventLoop:  # type: ignore[override]
        global loops_by_policy
        _state.making_target = True
        try:
            if MODE == 'oxloop':
                loop = super()._loop_factory()
            else:
                loop = asyncio.SelectorEventLoop()
        finally:
            _state.making_target = False
        loops_by_policy += 1
        _record_target(loop)
        return loop


_orig_init = base_events.BaseEventLoop.__init__
_orig_run_forever = base_events.BaseEventLoop.run_forever
_orig_set_running_loop = events._set_running_loop


@functools.wraps(_orig_init)
def _tracking_init(self, *args, **kwargs):
    _orig_init(self, *args, **kwargs)
    if not getattr(_state, 'making_target', False):
        _foreign_loops.add(self)
        _current.foreign_created[type(self).__qualname__] += 1


@functools.wraps(_orig_run_forever)
def _tracking_run_forever(self, *args, **kwargs):
    if self in _foreign_loops:
        _current.foreign_ran[type(self).__qualname__] += 1
    return _orig_run_forever(self, *args, **kwargs)


def _tracking_set_running_loop(loop):
    if loop is not None and loop in _target_loops:
        _current.target_ran += 1
    return _orig_set_running_loop(loop)


def install_tracking() -> None:
    """Record every stdlib ``BaseEventLoop`` built and run (oxloop's ``Loop`` builds its
    own state and overrides ``run_forever``, so only foreign loops go through these), and
    every target loop that starts running (both ``run_forever``s call
    ``asyncio.events._set_running_loop``)."""
    base_events.BaseEventLoop.__init__ = _tracking_init
    base_events.BaseEventLoop.run_forever = _tracking_run_forever
    events._set_running_loop = _tracking_set_running_loop


def uninstall_tracking() -> None:
    base_events.BaseEventLoop.__init__ = _orig_init
    base_events.BaseEventLoop.run_forever = _orig_run_forever
    events._set_running_loop = _orig_set_running_loop


# Module globals that CPython's tests replace and restore in tearDown (GetEventLoopTestsMixin):
# a test that fails in setUp never restores them, which would leak into every later test.
_PATCHED_GLOBALS = ('_get_running_loop', '_set_running_loop', 'get_running_loop', 'get_event_loop')


def snapshot_globals() -> list[tuple[object, str, object]]:
    return [(mod, name, getattr(mod, name)) for mod in (events, asyncio) for name in _PATCHED_GLOBALS]


def restore_globals(snapshot: list[tuple[object, str, object]]) -> None:
    for mod, name, value in snapshot:
        setattr(mod, name, value)


# ----- exporting CPython's test classes -------------------------------------------------


def export_tests(module_name: str, namespace: dict) -> None:
    """Put every ``unittest.TestCase`` class defined by ``test.test_asyncio.<module_name>``
    into ``namespace`` (a test file's globals) so that pytest collects it. Module-level
    ``setUpModule``/``tearDownModule`` are not exported: the conftest installs the policy
    before each test."""
    module = importlib.import_module(f'test.test_asyncio.{module_name}')
    namespace['CPYTHON_MODULE'] = module_name
    for name, obj in vars(module).items():
        if (
            isinstance(obj, type)
            and issubclass(obj, unittest.TestCase)
            and obj.__module__ == module.__name__
            and not name.startswith('_')
        ):
            namespace.setdefault(name, obj)


# ----- left out: tests that run on a loop that is not ours -------------------------------

R_TESTLOOP = 'mock loop test_utils.TestLoop (virtual clock)'
R_SELECTOR = 'constructs asyncio.SelectorEventLoop/BaseSelectorEventLoop explicitly'
R_BASELOOP = 'constructs a mocked asyncio.BaseEventLoop'
R_MOCKLOOP = 'the loop is a unittest.mock.Mock'
R_NOLOOP = 'no event loop: exercises stdlib classes/functions directly'
R_STDPOLICY = "constructs the stdlib's policies/loops explicitly"
R_CHILD = 'runs asyncio in a child interpreter (stdlib loop)'

# Classes whose tests use no loop at all or the stdlib's own objects; found by reading
# them and confirmed by the loop tracking (no target loop made).
EXPLICIT_LEFT_OUT: dict[str, str] = {
    'test_base_events::BaseEventTests::*': R_NOLOOP,
    'test_base_events::TestSelectorUtils::*': R_NOLOOP,
    'test_base_events::BaseEventLoopTests::test_env_var_debug': R_CHILD,
    'test_events::AbstractEventLoopTests::*': R_NOLOOP,
    'test_events::TestAbstractServer::*': R_NOLOOP,
    'test_events::PolicyTests::*': R_STDPOLICY,
    'test_protocols::*': R_NOLOOP,
    'test_transports::*': R_NOLOOP,
    'test_unix_events::AbstractChildWatcherTests::*': R_NOLOOP,
    'test_unix_events::BaseChildWatcherTests::*': R_NOLOOP,
    'test_unix_events::PolicyTests::*': R_STDPOLICY,
    'test_subprocess::SubprocessTransportTests::*': R_TESTLOOP,
    'test_tasks::GenericTaskTests::*': R_NOLOOP,
}

_DETECT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r'\bnew_test_loop\(|\bTestLoop\('), R_TESTLOOP),
    # asyncio.EventLoop: 3.13's name for the platform's stdlib loop class.
    (re.compile(r'SelectorEventLoop\(|ProactorEventLoop\(|\basyncio\.EventLoop\b'), R_SELECTOR),
    (re.compile(r'\bBaseEventLoop\(\)|\(base_events\.BaseEventLoop\)'), R_BASELOOP),
    (re.compile(r'\bloop = mock\.(Magic)?Mock\('), R_MOCKLOOP),
    (re.compile(r'\bDefaultEventLoopPolicy\b'), R_STDPOLICY),
]
# A test body that makes its own loop through the policy runs on the target loop even when
# its class's setUp made a foreign one it does not touch.
_OWN_LOOP = re.compile(r'asyncio\.new_event_loop\(\)|asyncio\.run\(|asyncio\.Runner\(')
_HOOKS = ('setUp', 'create_event_loop', 'new_loop')
_NEUTRAL_BASES = (unittest.TestCase, test_utils.TestCase, unittest.IsolatedAsyncioTestCase)


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ''


def _detect(src: str) -> str | None:
    for pattern, reason in _DETECT:
        if pattern.search(src):
            return reason
    return None


def _hook_reason(cls: type) -> tuple[str | None, bool]:
    """Whether the loop-making hooks that ``cls`` actually uses (most derived definition
    of each, ignoring unittest's and test_utils' own) make a foreign loop; and whether a
    test body can still run on the policy's loop (only when the foreign loop comes from
    ``setUp``, not from a ``create_event_loop``/``new_loop`` hook that the policy or the
    test itself may call)."""
    for hook in _HOOKS:
        for klass in cls.__mro__:
            if hook in vars(klass):
                if klass not in _NEUTRAL_BASES and klass is not object:
                    reason = _detect(_source(vars(klass)[hook]))
                    if reason:
                        return reason, hook == 'setUp'
                break
    return None, False


def left_out_reason(module_name: str, cls: type, name: str) -> str | None:
    """Why the test ``cls.name`` of ``module_name`` tests nothing of ours, or None."""
    from fnmatch import fnmatchcase

    key = f'{module_name}::{cls.__name__}::{name}'
    for pattern, reason in EXPLICIT_LEFT_OUT.items():
        if fnmatchcase(key, pattern):
            return reason
    method_src = _source(getattr(cls, name, None))
    reason = _detect(method_src)
    if reason:
        return reason
    hook_reason, own_loop_ok = _hook_reason(cls)
    if hook_reason:
        if own_loop_ok and 'self.loop' not in method_src and _OWN_LOOP.search(method_src):
            return None
        return hook_reason
    return None
