"""CPython's test.test_asyncio.test_events on oxloop.

``OxloopEventLoopTests`` mirrors CPython's own ``EPollEventLoopTests``: the event-loop and
subprocess mixins with a ``create_event_loop()`` that returns an oxloop loop. The
module's other classes make their loops through the installed policy, or are left out.
"""

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_events
from test.test_asyncio import utils as test_utils

export_tests('test_events', globals())


class OxloopEventLoopTests(
    test_events.UnixEventLoopTestsMixin,
    test_events.SubprocessTestsMixin,
    test_utils.TestCase,
):
    def create_event_loop(self):
        return new_target_loop()
