"""CPython's test.test_asyncio.test_runners on oxloop.

CPython's ``RunTests``/``RunnerTests`` install a ``TestPolicy`` whose loops come from
the ``BaseTest.new_loop()`` hook: a mocked ``asyncio.BaseEventLoop`` that records that
``shutdown_asyncgens()`` ran. The ``Oxloop*`` classes override that hook with an oxloop
loop that records the same, then runs oxloop's real ``shutdown_asyncgens()``.
"""

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_runners

export_tests('test_runners', globals())


class _OxloopLoopMixin:
    def new_loop(self):
        loop = new_target_loop()
        loop.shutdown_ag_run = False
        real_shutdown_asyncgens = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await real_shutdown_asyncgens()

        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop


class OxloopRunTests(_OxloopLoopMixin, test_runners.RunTests):
    pass


class OxloopRunnerTests(_OxloopLoopMixin, test_runners.RunnerTests):
    pass
