"""CPython's test.test_asyncio.test_sendfile on oxloop: ``SendfileTestsBase`` (the
``loop.sendfile`` and ``loop.sock_sendfile`` mixins) with an oxloop
``create_event_loop()``."""

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_sendfile
from test.test_asyncio import utils as test_utils

export_tests('test_sendfile', globals())


class OxloopSendfileTests(test_sendfile.SendfileTestsBase, test_utils.TestCase):
    def create_event_loop(self):
        return new_target_loop()
