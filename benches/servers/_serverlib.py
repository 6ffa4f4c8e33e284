"""Shared plumbing of the benchmark servers: pick the loop, listen, print "ready", serve.

Every server is run as its own process by benches/net.py:

    .venv/bin/python benches/servers/echo_protocol.py --loop oxloop --port 0
    .venv/bin/python benches/servers/echo_protocol.py --loop uvloop --unix /tmp/x.sock

Once it listens it prints one line, ``ready <address>`` (the port actually bound, as
``--port 0`` asks the kernel for a free one), and serves until it is killed or
``--max-seconds`` have passed (a safety net: a server never outlives a run for long).

The stream servers that take ``tls=True`` here serve TLS 1.3 when given
``--certfile PEM --keyfile PEM``: the same Python body, with ``ssl=`` an
``ssl.SSLContext`` (``PROTOCOL_TLS_SERVER``, TLS 1.3 only, the stdlib's defaults
otherwise) passed to the loop's ``create_server``; the TLS layer is the loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import time
from collections.abc import Awaitable, Callable

LOOPS = ('oxloop', 'uvloop', 'rloop', 'asyncio')
BACKLOG = 1024


def parse_args(description: str, unix: bool = True, tls: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--loop', choices=LOOPS, required=True)
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=0, help='TCP/UDP port (default 0: any free one)')
    if unix:
        p.add_argument('--unix', metavar='PATH', help='listen on this Unix socket path instead')
    if tls:
        p.add_argument('--certfile', metavar='PEM', help='serve TLS with this certificate (chain)')
        p.add_argument('--keyfile', metavar='PEM', help="and this private key (the certificate's)")
    p.add_argument('--max-seconds', type=float, default=900.0, help='exit after this long (default 900)')
    args = p.parse_args()
    if tls and (args.certfile is None) != (args.keyfile is None):
        p.error('TLS needs both --certfile and --keyfile')
    return args


def server_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's SSLContext when --certfile/--keyfile were given, else None (plain)."""
    if getattr(args, 'certfile', None) is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(args.certfile, args.keyfile)
    return ctx


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """A fresh loop of the given kind. oxloop may be reinstalled while a benchmark
    runs (the extension module is then briefly missing): retry the import a few times."""
    if name == 'asyncio':
        return asyncio.new_event_loop()
    if name == 'uvloop':
        import uvloop

        return uvloop.new_event_loop()
    if name == 'rloop':
        import rloop

        return rloop.new_event_loop()
    for attempt in range(5):
        try:
            import oxloop

            return oxloop.new_event_loop()
        except ImportError:
            if attempt == 4:
                raise
            for mod in [m for m in sys.modules if m == 'oxloop' or m.startswith('oxloop.')]:
                del sys.modules[mod]
            time.sleep(1.0)
    raise AssertionError('unreachable')


def serve(args: argparse.Namespace, start: Callable[[asyncio.AbstractEventLoop], Awaitable[str]]) -> None:
    """Run ``start(loop)`` (which begins listening and returns the address it listens
    on), say ready, then serve until killed or until --max-seconds have passed."""
    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    address = loop.run_until_complete(start(loop))
    print(f'ready {address}', flush=True)
    loop.call_later(args.max_seconds, loop.stop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def sockname(server: asyncio.AbstractServer) -> str:
    name = server.sockets[0].getsockname()
    return name if isinstance(name, str) else f'{name[0]}:{name[1]}'
