#!/usr/bin/env python
"""Instructions per operation of the loop primitives, loop by loop, under callgrind.

    .venv/bin/python benches/micro_instructions.py                  # make bench-instructions
    .venv/bin/python benches/micro_instructions.py --only call_soon --loops oxloop,rloop

Each micro.py body runs twice per loop in a fresh process under
``valgrind --tool=callgrind``: once with ``n`` operations and once with ``2 n``. The
difference of the two totals, divided by ``n``, is what one operation costs: process
start-up, imports, loop creation and the warm-up cancel out. Instruction counts are
exact and repeatable on a noisy machine, where wall-clock time is not; they count user
space only (no syscall cost), so they complement micro.py's timings, never replace them.
``OXLOOP_KEEP_CALLGRIND=dir`` keeps the profiles (callgrind_annotate reads them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import micro

# Fewer operations than micro.py's timed runs: callgrind runs ~50x slower, and the
# difference of two runs needs only enough operations to drown a few thousand
# instructions of jitter (per-op figures are stable to <1 % at these sizes).
SIZES = {
    'call_soon': 20_000,
    'call_soon_chain': 10_000,
    'call_later_cancel': 20_000,
    'timers': 20_000,
    'sleep0': 10_000,
    'create_task': 5_000,
    'future': 10_000,
    'threadsafe_local': 20_000,
}

CHILD = """
import sys
sys.path.insert(0, {benches!r})
import micro
bench = micro.BENCH_BY_NAME[{name!r}]
contestants, notes, _ = micro.discover([{loop!r}])
if not contestants:
    raise SystemExit(str(notes))
loop = contestants[0].factory()
try:
    bench.body(loop, bench.size(200), micro.noop)  # warm-up: first-use costs out of the window
    bench.body(loop, {n}, micro.noop)
finally:
    loop.close()
"""


def total_instructions(out_file: Path) -> int:
    for line in out_file.read_text().splitlines():
        if line.startswith(('totals:', 'summary:')):
            return int(line.split()[1])
    raise RuntimeError(f'no totals in {out_file}')


def run_once(loop: str, name: str, n: int, keep: Path | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'callgrind.out'
        code = CHILD.format(benches=str(Path(__file__).resolve().parent), name=name, loop=loop, n=n)
        subprocess.run(
            ['valgrind', '--tool=callgrind', f'--callgrind-out-file={out}', sys.executable, '-c', code],
            # A fixed hash seed: dict lookups at start-up otherwise differ between
            # the n and 2n runs by ~60 instructions per op.
            env={**os.environ, 'PYTHONHASHSEED': '0'},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=600,
        )
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, keep / f'callgrind.{name}.{loop}.{n}')
        return total_instructions(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', help='comma-separated benchmark names (default: all of ' + ', '.join(SIZES) + ')')
    parser.add_argument('--loops', default='oxloop,rloop,uvloop,asyncio', help='comma-separated loops')
    args = parser.parse_args(argv)
    if shutil.which('valgrind') is None:
        print('valgrind is not installed (make tools installs it)', file=sys.stderr)
        return 1
    names = args.only.split(',') if args.only else list(SIZES)
    loops = args.loops.split(',')
    keep = Path(os.environ['OXLOOP_KEEP_CALLGRIND']) if os.environ.get('OXLOOP_KEEP_CALLGRIND') else None
    print(f'instructions per operation (callgrind, user space); python {sys.version.split()[0]}')
    print(f'{"benchmark":<18}' + ''.join(f'{lp:>15}' for lp in loops) + '   oxloop/best-peer')
    for name in names:
        bench = micro.BENCH_BY_NAME[name]
        n = bench.size(SIZES.get(name, 10_000))
        per_op: dict[str, float] = {}
        for lp in loops:
            try:
                low = run_once(lp, name, n, keep)
                high = run_once(lp, name, 2 * n, keep)
            except (subprocess.SubprocessError, RuntimeError) as exc:
                print(f'  {name} on {lp}: {type(exc).__name__}: {exc}', file=sys.stderr)
                continue
            per_op[lp] = (high - low) / (n * bench.ops_per_n)
        # oxloop+timing is oxloop itself (with callback timing on), not a peer.
        peers = [v for k, v in per_op.items() if not k.startswith('oxloop')]
        ratio = f'{per_op["oxloop"] / min(peers):.2f}' if 'oxloop' in per_op and peers else '-'
        cells = ''.join(f'{per_op[lp]:>15,.0f}' if lp in per_op else f'{"ERR":>15}' for lp in loops)
        print(f'{name:<18}{cells}   {ratio:>8}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
