"""CPython's test.test_asyncio.test_sslproto on oxloop: the ``BaseStartTLS`` mixin with a
``new_loop()`` that returns an oxloop loop; ``SslProtoHandshakeTests`` makes its loop
through the installed policy."""

import unittest

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_sslproto

export_tests('test_sslproto', globals())


@unittest.skipIf(test_sslproto.ssl is None, 'No ssl module')
class OxloopStartTLSTests(test_sslproto.BaseStartTLS, unittest.TestCase):
    def new_loop(self):
        return new_target_loop()
