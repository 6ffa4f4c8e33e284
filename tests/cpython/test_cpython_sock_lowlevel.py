"""CPython's test.test_asyncio.test_sock_lowlevel on oxloop: ``BaseSockTestsMixin`` with a
``create_event_loop()`` that returns an oxloop loop (as CPython's EPoll variant does)."""

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_sock_lowlevel
from test.test_asyncio import utils as test_utils

export_tests('test_sock_lowlevel', globals())


class OxloopSockTests(test_sock_lowlevel.BaseSockTestsMixin, test_utils.TestCase):
    def create_event_loop(self):
        return new_target_loop()
