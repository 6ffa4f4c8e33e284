"""CPython's test.test_asyncio.test_futures, with oxloop's policy installed (see conftest.py)."""

from _cpython_harness import export_tests

export_tests('test_futures', globals())
