"""oxl_asgi_app for servers without a loop hook whose workers import the app before they
create their loop (hypercorn's spawned workers): importing the module installs oxloop."""

import oxloop

oxloop.install()

from oxl_asgi_app import app  # after install(), as the docs show

__all__ = ['app']
