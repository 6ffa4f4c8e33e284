"""CPython's test.test_asyncio.test_selector_events, with oxloop's policy installed (see conftest.py)."""

from _cpython_harness import export_tests

export_tests('test_selector_events', globals())
