"""Fixtures of the tests against real servers and libraries (helpers: _integ.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _integ import ServerProcess


@pytest.fixture
def server_process() -> Iterator[Any]:
    """``server_process(argv, port, env=None) -> ServerProcess``, ready to serve; every
    process group it started is killed after the test."""
    started: list[ServerProcess] = []

    def start(argv: list[str], port: int, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(argv, port, env)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.kill()
