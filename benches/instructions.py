#!/usr/bin/env python
"""Instructions per request: the network servers under callgrind, loop by loop.

    .venv/bin/python benches/instructions.py                     # every case of net.py
    .venv/bin/python benches/instructions.py --only protocol_1k_c10,http_c10

On a loopback benchmark most of a server's CPU time is the kernel's (TCP, wake-ups),
and it varies by tens of percent from one minute to the next on a shared machine; the
user-space work is what an event loop controls. This counts it exactly: each server
runs under ``valgrind --tool=callgrind`` with instrumentation off, is warmed up, then
counts instructions (Ir) only while the client runs a fixed window, and the figure is
the process's Ir over the requests answered in that window. The same requests, the
same Python server code, the same interpreter: the difference is the loop. Counts are
repeatable to about 1 %, so two builds or two loops compare without an A/A band.

The TLS cases count from the moment every connection is open and its handshake done
to the completion of the window's last request, before any connection closes
(oxloop-loadgen --sync-stdin): records only, no handshakes or closes (which would
otherwise weigh heavily in the count). The other cases count from the client's start,
as they always have (their connects weigh little).

Uses net.py's cases, servers and clients (oxloop-loadgen, wrk); needs valgrind
(``make tools``). Prints Ir/request per loop and the ratio to uvloop's (>1: fewer
instructions than uvloop).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import net

LOOPS = ('oxloop', 'uvloop', 'rloop', 'asyncio', 'floor')
WINDOW = 3.0  # seconds of counted load (under valgrind a server runs ~20-50x slower)


def totals(out_dir: Path) -> int:
    """The largest 'totals:' of the callgrind dumps (the one of the counted window)."""
    best = 0
    for path in out_dir.glob('cg.*'):
        m = re.search(r'^totals:\s+(\d+)', path.read_text(errors='replace'), re.MULTILINE)
        if m:
            best = max(best, int(m.group(1)))
    return best


def control(pid: int, *args: str) -> None:
    subprocess.run(['callgrind_control', *args, str(pid)], capture_output=True, check=True)


def load(
    case: net.Case,
    server: net.Server,
    settings: net.Settings,
    seconds: float,
    window_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> int:
    """Run the client for ``seconds``; returns the requests answered. ``window_hooks``:
    see net.run_loadgen."""
    if case.mode == 'http':
        assert settings.wrk is not None
        url = f'http://{server.address}/'
        out = subprocess.run(
            [settings.wrk, '-t1', f'-c{case.conns}', f'-d{max(1, round(seconds))}s', '--timeout', '10s', url],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(net.parse_wrk(out.stdout)['requests'])
    settings.duration = seconds
    return int(net.run_loadgen(case, server, settings, window_hooks)['requests'])


def measure(case: net.Case, contestant: net.Contestant, settings: net.Settings, window: float) -> float:
    out_dir = Path(tempfile.mkdtemp(prefix='oxloop-cg-'))
    wrapper = (
        'valgrind',
        '--tool=callgrind',
        '--instr-atstart=no',
        f'--callgrind-out-file={out_dir}/cg.%p',
    )
    server = net.start_server(case, contestant, None, settings.tmpdir, 600, wrapper=wrapper, ready_timeout=120)
    try:
        load(case, server, settings, 1.0)  # warm-up, not counted
        pid = server.proc.pid
        if case.tls:
            hooks = (lambda: control(pid, '-i', 'on'), lambda: control(pid, '-i', 'off'))
            requests = load(case, server, settings, window, window_hooks=hooks)
        else:
            control(pid, '-i', 'on')
            requests = load(case, server, settings, window)
        control(server.proc.pid, '-i', 'off')
        control(server.proc.pid, '-d')
    finally:
        net.stop(server.proc, grace=5.0)
    ir = totals(out_dir)
    keep = os.environ.get('OXLOOP_KEEP_CALLGRIND')  # a directory: keep the profiles there
    if keep:
        for f in out_dir.iterdir():
            shutil.copy(f, Path(keep) / f'{case.name}.{contestant.name}.{f.name}')
    shutil.rmtree(out_dir, ignore_errors=True)
    if not requests or not ir:
        raise RuntimeError(f'nothing counted ({requests} requests, {ir} Ir)')
    return ir / requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', help='comma-separated benchmark names or groups of net.py (default: all)')
    p.add_argument('--loops', default='oxloop,uvloop,asyncio', help=f'from {",".join(LOOPS)}')
    p.add_argument('--window', type=float, default=WINDOW, help=f'counted seconds of load (default {WINDOW:g})')
    args = p.parse_args(argv)
    if shutil.which('valgrind') is None or shutil.which('callgrind_control') is None:
        print('valgrind not found (make tools, or apt-get install valgrind): nothing to count')
        return 1
    wanted = [x.strip() for x in (args.only or '').split(',') if x.strip()]
    cases = [c for c in net.CASES if not wanted or c.name in wanted or c.group in wanted]
    loadgen, _ = net.ensure_loadgen()
    wrk = shutil.which('wrk')
    contestants, notes, _ = net.discover([n for n in args.loops.split(',') if n in LOOPS])
    for n in notes:
        print(f'note: {n}')
    names = [c.name for c in contestants]
    tmpdir = Path(tempfile.mkdtemp(prefix='oxloop-ir-'))
    settings = net.Settings(
        duration=args.window,
        warmup=0.0,
        server_cpu=None,
        client_cpu=None,
        loadgen=loadgen,
        wrk=wrk,
        prime=False,
        tmpdir=tmpdir,
    )
    print(f'instructions (Ir) per request in the server process, {args.window:g} s counted window under callgrind')
    header = ['benchmark', *[f'{n} Ir/req' for n in names]]
    header += [f'{n}: uv/{n}' for n in names if n != 'uvloop' and 'uvloop' in names]
    rows = []
    try:
        for case in cases:
            if (case.mode == 'http' and wrk is None) or (case.mode != 'http' and loadgen is None):
                print(f'{case.name}: skipped (client missing)')
                continue
            per: dict[str, float] = {}
            for c in contestants:
                try:
                    per[c.name] = measure(case, c, settings, args.window)
                except Exception as exc:  # noqa: BLE001 - reported, the others go on
                    print(f'{case.name} {c.name}: {type(exc).__name__}: {exc}')
            row = [case.name, *[f'{per[n]:,.0f}' if n in per else 'ERR' for n in names]]
            if 'uvloop' in names:
                row += [
                    f'{per["uvloop"] / per[n]:.2f}x' if n in per and 'uvloop' in per else '-'
                    for n in names
                    if n != 'uvloop'
                ]
            rows.append(row)
            print('  ' + '  '.join(row), flush=True)
    finally:
        net.stop_all()
        shutil.rmtree(tmpdir, ignore_errors=True)
    print()
    for line in net.render(header, rows, split=1 + len(names)):
        print('  ' + line)
    print('\nuv/X: uvloop Ir per request over X Ir per request (>1: X executes fewer instructions than uvloop).')
    return 0


if __name__ == '__main__':
    sys.exit(main())
