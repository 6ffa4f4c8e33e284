"""Gunicorn worker classes of the uvicorn-worker package, one per loop: uvicorn's way to
choose the loop of a gunicorn worker is a subclass that sets CONFIG_KWARGS."""

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class OxloopUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {'loop': 'oxloop:new_event_loop'}


class AsyncioUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {'loop': 'asyncio'}
