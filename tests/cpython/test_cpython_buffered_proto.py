"""CPython's test.test_asyncio.test_buffered_proto on oxloop: the
``BaseTestBufferedProtocol`` mixin with a ``new_loop()`` that returns an oxloop loop."""

import unittest

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_buffered_proto

export_tests('test_buffered_proto', globals())


class OxloopBufferedProtocolTests(test_buffered_proto.BaseTestBufferedProtocol, unittest.TestCase):
    def new_loop(self):
        return new_target_loop()
