"""CPython's test.test_asyncio.test_pep492 on oxloop.

CPython's ``BaseTest.setUp`` builds a mocked ``asyncio.BaseEventLoop`` (those classes are
left out); the ``Oxloop*`` classes run the same tests with ``BaseTest.setUp``'s steps on
an oxloop loop instead.
"""

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_pep492
from test.test_asyncio import utils as test_utils

export_tests('test_pep492', globals())


class _OxloopSetUp:
    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = new_target_loop()
        self.set_event_loop(self.loop)


class OxloopLockTests(_OxloopSetUp, test_pep492.LockTests):
    pass


class OxloopStreamReaderTests(_OxloopSetUp, test_pep492.StreamReaderTests):
    pass


class OxloopCoroutineTests(_OxloopSetUp, test_pep492.CoroutineTests):
    pass
