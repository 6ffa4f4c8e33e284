"""Gunicorn configuration for its own ASGI worker (-k asgi --asgi-loop asyncio), which
creates its loop with asyncio.new_event_loop(): the master runs this file before it forks
the workers, so they inherit the oxloop policy."""

import oxloop

oxloop.install()
