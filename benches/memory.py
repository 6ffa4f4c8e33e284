#!/usr/bin/env python
"""Memory per idle connection: a server on each loop holding N idle TCP connections.

    .venv/bin/python benches/memory.py                 # 5,000 connections, every loop
    .venv/bin/python benches/memory.py --conns 2000 --loops oxloop,uvloop

Each loop runs in a child process of its own: it starts a server whose protocol does
nothing, opens 100 connections to warm the allocator up, reads its RSS, opens N more
with plain client sockets in the same process (the same objects on every loop, so
the difference is the server side: the loop's transport, its protocol object and the
accepted socket), waits until the server has made every connection, collects garbage
and reads its RSS again. The figure is the RSS growth over N, in bytes per
connection; fewer is better. Run it more than once on a busy machine: the allocator's
arenas make single runs vary by a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import socket
import subprocess
import sys
import time

LOOPS = ('oxloop', 'uvloop', 'rloop', 'asyncio')
WARMUP = 100


def rss_bytes() -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no VmRSS in /proc/self/status')


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == 'oxloop':
        import oxloop

        return oxloop.new_event_loop()
    if name == 'uvloop':
        import uvloop

        return uvloop.new_event_loop()
    if name == 'rloop':
        import rloop

        return rloop.new_event_loop()
    return asyncio.new_event_loop()


async def hold(conns: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    made = 0

    class Idle(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal made
            made += 1
            self.transport = transport

    server = await loop.create_server(Idle, '127.0.0.1', 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    clients: list[socket.socket] = []

    async def connect(n: int) -> None:
        target = made + n
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(('127.0.0.1', port))
            except BlockingIOError:
                pass
            clients.append(s)
            if len(clients) % 256 == 0:
                await asyncio.sleep(0)  # let the server accept
        deadline = time.monotonic() + 60
        while made < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f'the server made {made} of {target} connections')
            await asyncio.sleep(0.01)

    await connect(WARMUP)
    gc.collect()
    before = rss_bytes()
    await connect(conns)
    await asyncio.sleep(0.1)
    gc.collect()
    after = rss_bytes()
    for s in clients:
        s.close()
    server.close()
    return {'conns': conns, 'rss_before': before, 'rss_after': after, 'per_conn': (after - before) / conns}


def child(name: str, conns: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (conns + WARMUP) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    loop = new_loop(name)
    try:
        result = loop.run_until_complete(hold(conns))
    finally:
        loop.close()
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--conns', type=int, default=5000, help='idle connections the server holds (default 5000)')
    p.add_argument('--loops', default=','.join(LOOPS), help=f'comma-separated, from {",".join(LOOPS)}')
    p.add_argument('--child', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.conns)
        return 0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    conns = min(args.conns, (hard - 256) // 2 - WARMUP)
    if conns < args.conns:
        print(f'note: RLIMIT_NOFILE hard limit {hard}: {conns} connections instead of {args.conns}')
    print(f'memory per idle TCP connection: a server holding {conns} idle connections (clients in the same process)')
    rows = []
    for name in [n.strip() for n in args.loops.split(',') if n.strip()]:
        proc = subprocess.run(
            [sys.executable, __file__, '--child', name, '--conns', str(conns)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ['?'])[-1]
            rows.append((name, None, reason))
            continue
        rows.append((name, json.loads(proc.stdout.strip().splitlines()[-1])['per_conn'], ''))
    best = min((per for _, per, _ in rows if per is not None), default=None)
    print(f'  {"loop":8}  {"bytes/conn":>10}  {"vs best":>8}')
    for name, per, reason in rows:
        if per is None:
            print(f'  {name:8}  {"ERR":>10}  {reason[:80]}')
        else:
            print(f'  {name:8}  {per:10,.0f}  {per / best:7.2f}x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
