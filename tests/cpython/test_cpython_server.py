"""CPython's test.test_asyncio.test_server on oxloop. CPython's Unix variant
(``SelectorStartServerTests``) adds a Unix-socket test to the ``BaseStartServer`` mixin;
``OxloopStartServerTests`` is that class with a ``new_loop()`` that returns an oxloop loop."""

from _cpython_harness import export_tests, new_target_loop
from test.test_asyncio import test_server

export_tests('test_server', globals())


class OxloopStartServerTests(test_server.SelectorStartServerTests):
    def new_loop(self):
        return new_target_loop()
