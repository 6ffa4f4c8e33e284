#!/usr/bin/env python
"""Network benchmarks: echo and HTTP servers on oxloop vs uvloop vs asyncio.

    .venv/bin/python benches/net.py            # full run (make bench, after micro.py)
    .venv/bin/python benches/net.py --quick    # short demonstration run (make demo)
    .venv/bin/python benches/net.py --only protocol,http --rounds 5

Every measurement starts a server program (benches/servers/<name>.py) on one loop,
pinned to one CPU, and loads it from another CPU with a native client: oxloop-loadgen
(crates/oxloop-loadgen, built here when missing or stale) for the echo servers, wrk
for HTTP. The client keeps N connections busy with request/response traffic (send a
message, wait for the whole echo, send the next) for a warm-up and then a measured
window; the result is requests/s and requests per server-CPU-second (the server's
utime + stime over the window, from /proc/PID/stat). Rounds are interleaved with a
rotated order, and uvloop runs twice (``uvloop`` and ``uvloop#2``) as an A/A control,
as in micro.py. See benches/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import aa_name, machine_info, pick_baseline

ROOT = Path(__file__).resolve().parent.parent
BENCHES_DIR = ROOT / 'benches'
SERVERS_DIR = BENCHES_DIR / 'servers'
# The TLS cases' test CA and server certificate (benches/certs/README.md).
CERTS_DIR = BENCHES_DIR / 'certs'
TLS_CA = CERTS_DIR / 'ca.pem'
TLS_CERT = CERTS_DIR / 'server.pem'
TLS_KEY = CERTS_DIR / 'server.key'
TLS_SERVER_NAME = 'localhost'
RESULTS_DIR = BENCHES_DIR / 'results'
LOADGEN_CRATE = ROOT / 'crates' / 'oxloop-loadgen'
ALL_LOOPS = ('oxloop', 'uvloop', 'uvloop#2', 'rloop', 'asyncio', 'floor')
KIB = 1024
READY_TIMEOUT = 20.0  # seconds for a server to print "ready"
START_ATTEMPTS = 3  # a server that dies before "ready" (e.g. oxloop being reinstalled) is retried
CLIENT_BOUND = 0.90  # client CPU share above which the client may be what limits req/s
WAIT_WARN = 0.05  # share of the window the server spent runnable but waiting for its CPU


# --------------------------------------------------------------------------------------
# The benchmarks


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    title: str
    server: str  # script in benches/servers/
    mode: str  # tcp | unix | udp | http
    size: int  # message bytes (echo); 0 for http
    conns: int
    doc: str = ''
    reconnect: bool = False  # a new connection per request (oxloop-loadgen --reconnect)
    tls: bool = False  # TLS 1.3 over every connection (server --certfile/--keyfile, oxloop-loadgen --tls)


def _echo_cases(
    group: str, server: str, mode: str, what: str, shapes: list[tuple[int, int]], doc: str, tls: bool = False
) -> list[Case]:
    out = []
    for size, conns in shapes:
        label = f'{size // KIB}k'
        out.append(
            Case(
                f'{group}_{label}_c{conns}',
                group,
                f'{what} {size // KIB} KiB x {conns}',
                server,
                mode,
                size,
                conns,
                doc,
                tls=tls,
            )
        )
    return out


CASES: list[Case] = [
    *_echo_cases(
        'protocol',
        'echo_protocol.py',
        'tcp',
        'TCP Protocol echo',
        [(KIB, 10), (KIB, 100), (100 * KIB, 10), (100 * KIB, 100)],
        'asyncio.Protocol: data_received -> transport.write',
    ),
    *_echo_cases(
        'streams',
        'echo_streams.py',
        'tcp',
        'TCP streams echo',
        [(KIB, 10), (100 * KIB, 10)],
        'asyncio.start_server: reader.read(64 KiB), writer.write + drain',
    ),
    *_echo_cases(
        'sock',
        'echo_sock.py',
        'tcp',
        'TCP sock_* echo',
        [(KIB, 10), (100 * KIB, 10)],
        'loop.sock_accept, one task per connection: sock_recv(64 KiB) / sock_sendall',
    ),
    *_echo_cases(
        'udp',
        'echo_udp.py',
        'udp',
        'UDP echo',
        [(KIB, 10), (KIB, 100)],
        'create_datagram_endpoint: datagram_received -> sendto; one connected client socket per "connection"',
    ),
    *_echo_cases(
        'unix',
        'echo_protocol.py',
        'unix',
        'Unix Protocol echo',
        [(KIB, 10), (100 * KIB, 10)],
        'create_unix_server, asyncio.Protocol: data_received -> transport.write',
    ),
    Case(
        'churn_1k_c10',
        'churn',
        'TCP connection churn 1 KiB x 10',
        'echo_protocol.py',
        'tcp',
        KIB,
        10,
        'a new connection per request: connect, 1 KiB echo, close (reset: no TIME_WAIT)',
        reconnect=True,
    ),
    *_echo_cases(
        'tls',
        'echo_protocol.py',
        'tcp',
        'TLS Protocol echo',
        [(KIB, 10), (KIB, 100), (64 * KIB, 10), (64 * KIB, 100)],
        "TLS 1.3, create_server(ssl=), the loop's TLS; asyncio.Protocol: data_received -> transport.write",
        tls=True,
    ),
    *_echo_cases(
        'tls_streams',
        'echo_streams.py',
        'tcp',
        'TLS streams echo',
        [(KIB, 10)],
        'TLS 1.3, asyncio.start_server(ssl=): reader.read(64 KiB), writer.write + drain',
        tls=True,
    ),
    Case('http_c10', 'http', 'HTTP/1.1 keep-alive x 10', 'http_server.py', 'http', 0, 10, 'wrk -t1 -c10, GET /'),
    Case('http_c100', 'http', 'HTTP/1.1 keep-alive x 100', 'http_server.py', 'http', 0, 100, 'wrk -t1 -c100, GET /'),
]
CASE_BY_NAME = {c.name: c for c in CASES}
GROUPS = list(dict.fromkeys(c.group for c in CASES))
QUICK_CASES = ['protocol_1k_c10', 'http_c10']


# --------------------------------------------------------------------------------------
# Contestants


@dataclass
class Contestant:
    name: str  # as shown: oxloop, uvloop, uvloop#2, asyncio, asyncio#2
    loop: str  # the server's --loop
    version: str


def _import_oxloop() -> Any:
    """oxloop may be being reinstalled right now: retry a failed import a few times."""
    for attempt in range(4):
        try:
            import oxloop

            return oxloop
        except ImportError:
            if attempt == 3:
                raise
            for mod in [m for m in sys.modules if m == 'oxloop' or m.startswith('oxloop.')]:
                del sys.modules[mod]
            time.sleep(1.5)
    raise AssertionError('unreachable')


def discover(wanted: list[str]) -> tuple[list[Contestant], list[str], dict[str, Any]]:
    notes: list[str] = []
    info: dict[str, Any] = {}
    available: dict[str, tuple[str, str]] = {}
    if 'oxloop' in wanted:
        try:
            oxloop = _import_oxloop()
            oxloop.new_event_loop().close()
            profile = getattr(oxloop, 'build_profile', '?')
            available['oxloop'] = ('oxloop', f'{getattr(oxloop, "__version__", "?")} ({profile})')
            info['oxloop'] = {'version': getattr(oxloop, '__version__', None), 'build_profile': profile}
            if profile != 'release':
                notes.append(f'oxloop build profile is {profile!r}: its numbers say nothing about speed (make bench)')
        except Exception as exc:  # noqa: BLE001 - any failure means: run without it
            notes.append(f'oxloop unavailable, skipped: {type(exc).__name__}: {exc}')
    if any(name.startswith('uvloop') for name in wanted):
        try:
            import uvloop

            available['uvloop'] = available['uvloop#2'] = ('uvloop', uvloop.__version__)
            info['uvloop'] = {'version': uvloop.__version__}
        except Exception as exc:  # noqa: BLE001 - any failure means: run without it
            notes.append(f'uvloop unavailable, skipped: {type(exc).__name__}: {exc}')
    if 'rloop' in wanted:
        try:
            import rloop

            available['rloop'] = ('rloop', getattr(rloop, '__version__', '?'))
            info['rloop'] = {'version': getattr(rloop, '__version__', None)}
        except Exception as exc:  # noqa: BLE001 - any failure means: run without it
            notes.append(f'rloop unavailable, skipped: {type(exc).__name__}: {exc}')
    if 'asyncio' in wanted:
        available['asyncio'] = ('asyncio', f'stdlib {platform.python_version()}')
    if 'floor' in wanted:
        # Not a loop: the same answers from plain Rust with no Python, i.e. the kernel's
        # part of every request; the ceiling of req/CPU-s on this machine.
        available['floor'] = ('floor', 'oxloop-floor (Rust epoll, no Python)')
    contestants = [Contestant(name, *available[name]) for name in wanted if name in available]
    if 'uvloop#2' in wanted and 'uvloop' not in available and 'asyncio' in available:
        contestants.append(Contestant('asyncio#2', *available['asyncio']))
        notes.append('A/A control: asyncio#2 vs asyncio instead')
    return contestants, notes, info


# --------------------------------------------------------------------------------------
# Processes: every child is tracked, pinned, killed with us (PR_SET_PDEATHSIG), and
# cleaned up in a finally, on Ctrl-C and on SIGTERM.

LIVE: set[subprocess.Popen[bytes]] = set()
PR_SET_PDEATHSIG = 1
_libc: Any = None


def _child_setup(cpu: int | None) -> Any:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return setup


def spawn(cmd: list[str], cpu: int | None, **kw: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for var in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE'):
        env.pop(var, None)
    proc = subprocess.Popen(cmd, preexec_fn=_child_setup(cpu), start_new_session=True, env=env, **kw)  # noqa: PLW1509
    LIVE.add(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 2.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    LIVE.discard(proc)


def stop_all() -> None:
    for proc in list(LIVE):
        with contextlib.suppress(Exception):
            stop(proc, grace=0.5)


def wait_rusage(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for a child (kill it after ``timeout``); returns (exit status, its CPU seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            LIVE.discard(proc)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            LIVE.discard(proc)
            raise TimeoutError(f'{Path(proc.args[0]).name} did not finish within {timeout:.0f} s')
        time.sleep(0.01)


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread waited, runnable, for a CPU (/proc/PID/schedstat)."""
    with open(f'/proc/{pid}/schedstat') as f:
        return int(f.read().split()[1]) / 1e9


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process from /proc/PID/stat."""
    with open(f'/proc/{pid}/stat') as f:
        stat = f.read()
    fields = stat[stat.rindex(')') + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path


def start_server(
    case: Case,
    contestant: Contestant,
    cpu: int | None,
    tmpdir: Path,
    max_seconds: float,
    wrapper: tuple[str, ...] = (),
    ready_timeout: float = READY_TIMEOUT,
) -> Server:
    """Start the case's server on one loop; ``wrapper`` prefixes the command (valgrind)."""
    if contestant.loop == 'floor':
        cmd = [*wrapper, str(floor_path()), '--mode', case.mode]
    else:
        cmd = [*wrapper, sys.executable, str(SERVERS_DIR / case.server), '--loop', contestant.loop]
    if case.mode == 'unix':
        path = tmpdir / f'{case.name}.sock'
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        cmd += ['--unix', str(path)]
    else:
        cmd += ['--port', '0']
    if case.tls:
        cmd += ['--certfile', str(TLS_CERT), '--keyfile', str(TLS_KEY)]
    cmd += ['--max-seconds', f'{max_seconds:.0f}']
    log = tmpdir / f'{case.name}-{contestant.loop}.log'
    last_error = ''
    for attempt in range(START_ATTEMPTS):
        with open(log, 'wb') as err:
            proc = spawn(cmd, cpu, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        line = _read_line(proc, ready_timeout)
        if line.startswith('ready'):
            return Server(proc, line.split(maxsplit=1)[1] if ' ' in line else '', log)
        stop(proc, grace=0.5)
        tail = log.read_text(errors='replace').strip().splitlines()[-3:]
        last_error = f'server did not get ready ({line or "no output"}): ' + ' | '.join(tail)
        if attempt + 1 < START_ATTEMPTS:
            time.sleep(2.0)
    raise RuntimeError(last_error)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    data = b''
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b'\n' not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors='replace').strip()


# --------------------------------------------------------------------------------------
# The load generators


def loadgen_path() -> Path:
    target = Path(os.environ.get('CARGO_TARGET_DIR', ROOT / 'target'))
    if not target.is_absolute():
        target = ROOT / target
    return target / 'release' / 'oxloop-loadgen'


def floor_path() -> Path:
    """The reference server, built with the load generator (same crate)."""
    return loadgen_path().with_name('oxloop-floor')


def ensure_loadgen() -> tuple[Path | None, str | None]:
    """Build the load generator if it is missing or older than its sources."""
    binary = loadgen_path()
    sources = [LOADGEN_CRATE / 'Cargo.toml', *LOADGEN_CRATE.rglob('*.rs')]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0.0)
    built = [binary, floor_path()]
    if all(b.exists() and b.stat().st_mtime >= newest for b in built):
        return binary, None
    cargo = shutil.which('cargo')
    if cargo is None:
        return (
            (binary, 'cargo not found; using the existing, older oxloop-loadgen') if binary.exists() else (None, None)
        )
    print('building oxloop-loadgen (cargo build --release -p oxloop-loadgen) ...', flush=True)
    done = subprocess.run(
        [cargo, 'build', '--release', '-p', 'oxloop-loadgen'], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not binary.exists():
        print(done.stderr[-3000:], file=sys.stderr)
        return None, None
    for b in built:
        if b.exists():
            b.touch()  # cargo may leave an up-to-date binary's mtime alone
    return binary, None


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, '-v'], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split('[')[0].strip() if first else '?'


@dataclass
class Settings:
    duration: float
    warmup: float
    server_cpu: int | None
    client_cpu: int | None
    loadgen: Path | None
    wrk: str | None
    prime: bool
    tmpdir: Path


def _sync_window(proc: subprocess.Popen[bytes], hooks: tuple[Callable[[], None], Callable[[], None]]) -> bytes:
    """Drives oxloop-loadgen --sync-stdin: runs hooks[0] once the client says
    'connected' and hooks[1] once it says 'finished', letting it go on after each.
    Returns what the client wrote on stderr instead, if it failed first."""
    assert proc.stdin is not None and proc.stderr is not None
    for word, hook in zip((b'connected', b'finished'), hooks, strict=True):
        line = proc.stderr.readline()
        if line.strip() != word:
            return line
        hook()
        try:
            proc.stdin.write(b'go\n')
            proc.stdin.flush()  # communicate() closes it
        except BrokenPipeError:
            break
    return b''


def run_loadgen(
    case: Case,
    server: Server,
    s: Settings,
    window_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """One client run. ``window_hooks``: called once every connection is open (and its
    TLS handshake done) before the first request, and once the last request of the window
    has completed before the connections close (instructions.py counts in between)."""
    assert s.loadgen is not None
    cmd = [
        str(s.loadgen),
        '--mode',
        case.mode,
        '--addr',
        server.address,
        '--conns',
        str(case.conns),
        '--size',
        str(case.size),
        '--warmup',
        f'{s.warmup:g}',
        '--duration',
        f'{s.duration:g}',
        '--server-pid',
        str(server.proc.pid),
        # The header (connection id, request number) and the length of every echo are
        # checked; the full content of every echo for small messages, of every 8th for
        # large ones (comparing 100 KiB costs the client ~10 % of its CPU).
        '--verify-every',
        '1' if case.size <= 4 * KIB else '8',
    ]
    if not s.prime:
        cmd.append('--no-prime')
    if case.reconnect:
        cmd.append('--reconnect')
    if case.tls:
        cmd += ['--tls', '--ca', str(TLS_CA), '--server-name', TLS_SERVER_NAME]
    if window_hooks is not None:
        cmd.append('--sync-stdin')
    proc = spawn(
        cmd,
        s.client_cpu,
        stdin=subprocess.PIPE if window_hooks else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        early = _sync_window(proc, window_hooks) if window_hooks is not None else b''
        out, err = proc.communicate(timeout=s.warmup + s.duration + 60)
        err = early + err
    except subprocess.TimeoutExpired:
        stop(proc, grace=0.5)
        raise TimeoutError('oxloop-loadgen did not finish in time') from None
    finally:
        LIVE.discard(proc)
    lines = out.decode(errors='replace').strip().splitlines()
    if not lines:
        raise RuntimeError(f'oxloop-loadgen failed (exit {proc.returncode}): {err.decode(errors="replace").strip()}')
    raw = json.loads(lines[-1])
    if raw['errors']:
        raise RuntimeError(f'{raw["errors"]} failed requests: ' + '; '.join(raw['error_samples']))
    if not raw['requests']:
        raise RuntimeError('no request completed in the measured window')
    seconds = raw['seconds']
    server_cpu = raw['server_cpu_s']
    return {
        'requests': raw['requests'],
        'seconds': seconds,
        'rps': raw['requests'] / seconds,
        'server_cpu_s': server_cpu,
        'client_cpu_s': raw['client_cpu_s'],
        'rps_per_cpu': raw['requests'] / server_cpu if server_cpu else None,
        'server_util': server_cpu / seconds if server_cpu is not None else None,
        'client_util': raw['client_cpu_s'] / seconds if raw['client_cpu_s'] is not None else None,
        'server_wait': raw['server_wait_s'] / seconds if raw['server_wait_s'] is not None else None,
        'client_wait': raw['client_wait_s'] / seconds if raw['client_wait_s'] is not None else None,
        'mib_per_s': raw['bytes'] / seconds / 2**20,
        'latency_us': raw['latency_us'],
        'lost': raw['lost'],
        'loadgen': raw,
    }


_WRK_UNITS = {'us': 1e-6, 'ms': 1e-3, 's': 1.0, 'm': 60.0, 'h': 3600.0}


def parse_wrk(text: str) -> dict[str, Any]:
    m = re.search(r'(\d+) requests in ([\d.]+)(us|ms|s|m|h),', text)
    if not m:
        raise RuntimeError('cannot parse the output of wrk: ' + ' | '.join(text.strip().splitlines()[-4:]))
    out: dict[str, Any] = {'requests': int(m.group(1)), 'seconds': float(m.group(2)) * _WRK_UNITS[m.group(3)]}
    m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', text)
    out['socket_errors'] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r'Non-2xx or 3xx responses: (\d+)', text)
    out['non_2xx'] = int(m.group(1)) if m else 0
    latency = {}
    for pct, value, unit in re.findall(r'^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$', text, re.MULTILINE):
        latency[f'p{pct}'] = round(float(value) * _WRK_UNITS[unit] * 1e6)
    out['latency_us'] = latency
    return out


def run_wrk(case: Case, server: Server, s: Settings) -> dict[str, Any]:
    assert s.wrk is not None
    url = f'http://{server.address}/'
    base = [s.wrk, '-t1', f'-c{case.conns}', '--timeout', '5s', '--latency']
    # wrk takes whole seconds; its warm-up is a separate, shorter run.
    warm_seconds = max(1, round(s.warmup))
    warm = spawn([*base, f'-d{warm_seconds}s', url], s.client_cpu, stdout=subprocess.DEVNULL)
    try:
        status = warm.wait(timeout=warm_seconds + 60)
    finally:
        stop(warm, grace=0.5)
    if status != 0:
        raise RuntimeError(f'wrk warm-up failed (exit {status})')
    duration = max(1, round(s.duration))
    cpu0, wait0 = cpu_seconds(server.proc.pid), runqueue_wait(server.proc.pid)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out_file:
        proc = spawn([*base, f'-d{duration}s', url], s.client_cpu, stdout=out_file, stderr=subprocess.STDOUT)
        status, client_cpu = wait_rusage(proc, duration + 60)
        wall = time.perf_counter() - t0
        cpu1, wait1 = cpu_seconds(server.proc.pid), runqueue_wait(server.proc.pid)
        out_file.seek(0)
        text = out_file.read().decode(errors='replace')
    if status != 0:
        raise RuntimeError(f'wrk failed (exit {status}): {text.strip()[-300:]}')
    w = parse_wrk(text)
    if w['socket_errors'] or w['non_2xx']:
        raise RuntimeError(f'wrk: {w["socket_errors"]} socket errors, {w["non_2xx"]} non-2xx responses')
    if not w['requests']:
        raise RuntimeError('wrk completed no request')
    server_cpu = cpu1 - cpu0
    return {
        'requests': w['requests'],
        'seconds': w['seconds'],
        'rps': w['requests'] / w['seconds'],
        'server_cpu_s': server_cpu,
        'client_cpu_s': client_cpu,
        'rps_per_cpu': w['requests'] / server_cpu if server_cpu > 0 else None,
        # The CPU window is the whole wrk process (start-up and connects included).
        'server_util': server_cpu / wall,
        'client_util': client_cpu / wall,
        'server_wait': (wait1 - wait0) / wall,
        'client_wait': None,
        'mib_per_s': None,
        'latency_us': w['latency_us'],
        'lost': 0,
        'wrk': w,
    }


def measure(case: Case, contestant: Contestant, s: Settings) -> dict[str, Any]:
    max_seconds = 3 * (s.warmup + s.duration) + 120
    server = start_server(case, contestant, s.server_cpu, s.tmpdir, max_seconds)
    try:
        result = run_wrk(case, server, s) if case.mode == 'http' else run_loadgen(case, server, s)
        if server.proc.poll() is not None:
            raise RuntimeError(f'the server exited (status {server.proc.returncode}) during the measurement')
        return result
    except Exception as exc:
        tail = server.log.read_text(errors='replace').strip().splitlines()[-2:] if server.log.exists() else []
        if tail:
            raise RuntimeError(f'{exc} [server stderr: {" | ".join(tail)}]') from exc
        raise
    finally:
        stop(server.proc)
        if case.mode == 'unix':
            with contextlib.suppress(FileNotFoundError):
                (s.tmpdir / f'{case.name}.sock').unlink()


# --------------------------------------------------------------------------------------
# Statistics and output

METRICS = ('rps', 'rps_per_cpu')


@dataclass
class CaseResult:
    case: Case
    rounds: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # name -> round -> measurement
    errors: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None

    def values(self, name: str, metric: str) -> list[float]:
        return [m[metric] for m in self.rounds.get(name, {}).values() if m.get(metric)]

    def ratios(self, name: str, baseline: str, metric: str) -> list[float]:
        a, b = self.rounds.get(name, {}), self.rounds.get(baseline, {})
        return [a[r][metric] / b[r][metric] for r in sorted(a) if r in b and a[r].get(metric) and b[r].get(metric)]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarise(result: CaseResult, names: list[str], baseline: str | None) -> dict[str, Any]:
    case = result.case
    out: dict[str, Any] = {
        'title': case.title,
        'description': case.doc,
        'mode': case.mode,
        'server': case.server,
        'size': case.size,
        'conns': case.conns,
        'contestants': {},
        'errors': result.errors,
        'skipped': result.skipped,
    }
    for name in names:
        rounds = result.rounds.get(name)
        if not rounds:
            continue
        entry: dict[str, Any] = {'rounds': {str(r): m for r, m in sorted(rounds.items())}}
        for key in ('rps', 'rps_per_cpu', 'server_util', 'client_util', 'server_wait', 'client_wait', 'mib_per_s'):
            entry['median_' + key] = _median(result.values(name, key))
        entry['max_server_wait'] = max((m.get('server_wait') or 0 for m in rounds.values()), default=None)
        entry['median_latency_p50_us'] = _median([m['latency_us'].get('p50') or 0 for m in rounds.values()])
        entry['median_latency_p99_us'] = _median([m['latency_us'].get('p99') or 0 for m in rounds.values()])
        entry['lost'] = sum(m.get('lost', 0) for m in rounds.values())
        if name != 'floor' and result.rounds.get('floor'):
            # How close a loop comes to the floor (the machine's ceiling), round by round.
            ratios = result.ratios(name, 'floor', 'rps_per_cpu')
            if ratios:
                entry['rps_per_cpu_ratio_vs_floor'] = ratios
                entry['rps_per_cpu_median_vs_floor'] = statistics.median(ratios)
        if baseline and name != baseline and result.rounds.get(baseline):
            for metric in METRICS:
                ratios = result.ratios(name, baseline, metric)
                if not ratios:
                    continue
                entry[f'{metric}_ratio_vs_{baseline}'] = ratios
                entry[f'{metric}_median_ratio'] = statistics.median(ratios)
                entry[f'{metric}_min_ratio'] = min(ratios)
                entry[f'{metric}_max_ratio'] = max(ratios)
                entry[f'{metric}_best_ratio'] = max(result.values(name, metric)) / max(result.values(baseline, metric))
        out['contestants'][name] = entry
    return out


def fmt_rate(x: float | None) -> str:
    if x is None:
        return '-'
    for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if x >= scale:
            return f'{x / scale:.1f}{suffix}'
    return f'{x:.0f}'


def fmt_pct(x: float | None) -> str:
    return '-' if x is None else f'{100 * x:.0f}%'


def fmt_us(x: float | None) -> str:
    if x is None:
        return '-'
    return f'{x / 1000:.1f} ms' if x >= 10_000 else f'{x:.0f} us'


def fmt_ratio(entry: dict[str, Any] | None, metric: str, aa: dict[str, Any] | None) -> str:
    if not entry or f'{metric}_median_ratio' not in entry:
        return ''
    r = entry[f'{metric}_median_ratio']
    noise = (
        aa is not None and f'{metric}_min_ratio' in aa and aa[f'{metric}_min_ratio'] <= r <= aa[f'{metric}_max_ratio']
    )
    return f'{r:.2f}x' + ('~' if noise else ' ')


def fmt_band(entry: dict[str, Any] | None, metric: str) -> str:
    if not entry or f'{metric}_median_ratio' not in entry:
        return '-'
    return f'{entry[f"{metric}_median_ratio"]:.2f}x [{entry[f"{metric}_min_ratio"]:.2f}-{entry[f"{metric}_max_ratio"]:.2f}]'


def render(headers: list[str], rows: list[list[str]], split: int, left: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return ('  '.join(parts[:split]) + '  |  ' + '  '.join(parts[split:])).rstrip()

    out = [line(headers)]
    out.append('-' * max(len(x) for x in out))
    out += [line(r) for r in rows]
    return out


def print_case(summary: dict[str, Any], names: list[str], baseline: str | None, s: Settings) -> None:
    aa = aa_name(baseline)
    aa_entry = summary['contestants'].get(aa) if aa else None
    short = {'uvloop': 'uv'}.get(baseline or '', baseline or '')
    is_echo = summary['mode'] != 'http'
    headers = ['', 'req/s', 'req/CPU-s', 'srv CPU', 'cli CPU', 'p50', 'p99']
    if is_echo and summary['size'] >= 64 * KIB:
        headers.insert(3, 'MiB/s')
    headers += [f'req/s vs {short}', f'req/CPU-s vs {short}']
    rows = []
    notes = []
    waited: list[str] = []
    for name in names:
        c = summary['contestants'].get(name)
        if c is None:
            err = summary['errors'].get(name)
            rows.append([name, 'ERR' if err else '-', *[''] * (len(headers) - 2)])
            continue
        row = [
            name,
            fmt_rate(c['median_rps']),
            fmt_rate(c['median_rps_per_cpu']),
            fmt_pct(c['median_server_util']),
            fmt_pct(c['median_client_util']),
            fmt_us(c['median_latency_p50_us']),
            fmt_us(c['median_latency_p99_us']),
        ]
        if 'MiB/s' in headers:
            row.insert(3, f'{c["median_mib_per_s"]:.0f}')
        if name == aa:
            row += [fmt_band(c, 'rps'), fmt_band(c, 'rps_per_cpu')]
        elif name == baseline:
            row += ['', '']
        else:
            row += [fmt_ratio(c, 'rps', aa_entry), fmt_ratio(c, 'rps_per_cpu', aa_entry)]
        rows.append(row)
        cu, su = c['median_client_util'], c['median_server_util']
        if cu is not None and su is not None and cu >= CLIENT_BOUND and su < CLIENT_BOUND:
            notes.append(f'{name}: client CPU {fmt_pct(cu)}, server {fmt_pct(su)}: req/s may be client-bound')
        if c['max_server_wait'] and c['max_server_wait'] >= WAIT_WARN:
            waited.append(f'{name} {fmt_pct(c["max_server_wait"])}')
        if c['lost']:
            notes.append(f'{name}: {c["lost"]} datagrams lost (resent after 0.2 s)')
    for line in render(headers, rows, split=len(headers) - 2):
        print('  ' + line)
    for name, err in summary['errors'].items():
        print(f'  {name} failed: {err}')
    if waited:
        notes.append(
            "other processes held the server's CPU (runqueue wait, worst window): " + ', '.join(waited) + ': disturbed'
        )
    for note in notes:
        print(f'  note: {note}')


def print_summary(summaries: list[tuple[str, dict[str, Any]]], names: list[str], baseline: str | None) -> None:
    aa = aa_name(baseline) if aa_name(baseline) in names else None
    others = [n for n in names if n not in (baseline, aa)]
    short = {'uvloop': 'uv', 'oxloop': 'oxloop', 'asyncio': 'asyncio'}
    base = short.get(baseline or '', baseline or '')
    headers = ['benchmark']
    for metric in ('req/s', 'req/CPU-s'):
        headers += [
            f'{short.get(o, o)}/{base}' if i else f'{metric}: {short.get(o, o)}/{base}' for i, o in enumerate(others)
        ]
        if aa:
            headers.append('A/A [min-max]')
    rows = []
    for name, s in summaries:
        row = [name]
        aa_entry = s['contestants'].get(aa) if aa else None
        for metric in METRICS:
            for o in others:
                c = s['contestants'].get(o)
                row.append(fmt_ratio(c, metric, aa_entry) or ('ERR' if o in s['errors'] else '-'))
            if aa:
                row.append(fmt_band(aa_entry, metric))
        rows.append(row)
    width = len(others) + (1 if aa else 0)
    lines = render(headers, rows, split=1 + width)
    print()
    print('Summary: median over rounds of the per-round ratio vs ' + f'{baseline} (>1: better than {baseline})')
    for line in lines:
        print('  ' + line)
    if aa:
        print(f'  "~": inside the A/A band ({aa}/{baseline} over the rounds): not distinguishable from noise.')
    if 'floor' in names:
        loops = [n for n in names if n not in ('floor', aa)]
        rows = [
            [
                name,
                *[
                    f'{c["rps_per_cpu_median_vs_floor"]:.2f}x'
                    if (c := s['contestants'].get(n)) and 'rps_per_cpu_median_vs_floor' in c
                    else '-'
                    for n in loops
                ],
            ]
            for name, s in summaries
        ]
        print()
        print(
            'Share of the floor: req/CPU-s, median over rounds of the per-round ratio to the floor (1.00x: the ceiling)'
        )
        for line in render(['benchmark', *[f'{short.get(n, n)}/floor' for n in loops]], rows, split=1):
            print('  ' + line)


# --------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help=f'short run: {", ".join(QUICK_CASES)}; 3 rounds (make demo)')
    p.add_argument('--rounds', type=int, help='interleaved rounds (default 3)')
    p.add_argument('--duration', type=float, help='measured seconds per measurement (default 2; wrk: whole seconds)')
    p.add_argument('--warmup', type=float, help='warm-up seconds before each measured window (default 0.5; wrk: 1)')
    p.add_argument('--only', help='comma-separated groups (' + ','.join(GROUPS) + ') or benchmark names (--list)')
    p.add_argument('--loops', default=','.join(ALL_LOOPS), help=f'comma-separated (default {",".join(ALL_LOOPS)})')
    p.add_argument('--no-pin', action='store_true', help='do not pin the server and the client to separate CPUs')
    p.add_argument(
        '--no-prime', action='store_true', help='measure a fresh server process (no throwaway connection first)'
    )
    p.add_argument('--no-json', action='store_true', help='do not write benches/results/net-<timestamp>.json')
    p.add_argument('--list', action='store_true', help='list the benchmarks and exit')
    args = p.parse_args(argv)
    args.rounds = args.rounds or 3
    args.duration = args.duration or 2.0
    args.warmup = 0.5 if args.warmup is None else args.warmup
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0:
        p.error('--rounds must be >= 1, --duration > 0, --warmup >= 0')
    names = [x.strip() for x in args.loops.split(',') if x.strip()]
    unknown = [x for x in names if x not in ALL_LOOPS]
    if unknown or not names:
        p.error(f'unknown loop(s) {unknown}; choose from {",".join(ALL_LOOPS)}')
    args.loop_names = list(dict.fromkeys(names))
    if args.only:
        selected: list[Case] = []
        for item in (x.strip() for x in args.only.split(',') if x.strip()):
            if item in CASE_BY_NAME:
                selected.append(CASE_BY_NAME[item])
            elif item in GROUPS:
                selected += [c for c in CASES if c.group == item]
            else:
                p.error(f'unknown benchmark {item!r}; choose from {",".join(GROUPS)} or {",".join(CASE_BY_NAME)}')
        args.cases = list(dict.fromkeys(selected))
    elif args.quick:
        args.cases = [CASE_BY_NAME[n] for n in QUICK_CASES]
    else:
        args.cases = list(CASES)
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f'signal {signum}')


def pick_cpus(no_pin: bool) -> tuple[int | None, int | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return None, None, 'not pinned (--no-pin)'
    if len(cpus) < 2:
        return None, None, 'not pinned: only one CPU usable, server and client share it'
    return cpus[0], cpus[1], f'server on CPU {cpus[0]}, client on CPU {cpus[1]}'


def main(argv: list[str] | None = None) -> int:
    global _libc
    args = parse_args(argv)
    if args.list:
        for c in CASES:
            print(f'{c.name:18} {c.title:31} {c.server:17} {c.doc}')
        return 0
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)

    contestants, notes, info = discover(args.loop_names)
    if not contestants:
        print('no event loop to benchmark')
        return 1
    baseline = pick_baseline(contestants)
    names = [c.name for c in contestants]
    machine = machine_info(cpus_usable=sorted(os.sched_getaffinity(0)), **info)
    server_cpu, client_cpu, pinning = pick_cpus(args.no_pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # keep this script off the server's CPU too

    needs_loadgen = any(c.mode != 'http' for c in args.cases)
    needs_wrk = any(c.mode == 'http' for c in args.cases)
    loadgen, note = ensure_loadgen() if needs_loadgen or 'floor' in names else (None, None)
    if note:
        notes.append(note)
    if 'floor' in names and not floor_path().exists():
        notes.append('oxloop-floor is missing and could not be built: the floor is left out')
        contestants = [c for c in contestants if c.name != 'floor']
        names.remove('floor')
    if needs_loadgen and loadgen is None:
        notes.append('oxloop-loadgen is missing and could not be built: the echo benchmarks are skipped')
    wrk = shutil.which('wrk') if needs_wrk else None
    if needs_wrk and wrk is None:
        notes.append('wrk not found (apt-get install wrk): the HTTP benchmarks are skipped')

    machine['wrk'] = wrk_version(wrk) if wrk else None
    machine['pinning'] = pinning
    versions = ', '.join(f'{c.name} {c.version}' for c in contestants if not c.name.endswith('#2'))
    print(
        f'machine: {machine["cpu_count"]} CPUs ({len(machine["cpus_usable"])} usable, {machine["cpu_model"]}), '
        f'{machine["implementation"]} {machine["python"]}, load {machine["loadavg_at_start"][0]:.2f}'
    )
    print(f'loops: {versions}')
    if 'oxloop' in info:
        profile = info['oxloop']['build_profile']
        print(f'oxloop.build_profile: {profile}' + ('' if profile == 'release' else '   <-- WARNING: not release'))
    print(f'clients: oxloop-loadgen{"" if loadgen else " (missing)"}, {machine["wrk"] or "wrk (missing)"}; {pinning}')
    print(
        f'method: {args.rounds} interleaved rounds, rotated order, a fresh server process per measurement, '
        f'{args.warmup:g} s warm-up + {args.duration:g} s measured; ratios vs {baseline}'
    )
    if machine['loadavg_at_start'][0] > 0.5 * len(machine['cpus_usable']):
        print('warning: the machine is busy; expect a wide A/A band')
    for n in notes:
        print(f'note: {n}')

    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    json_path = RESULTS_DIR / f'net-{stamp}.json'
    doc: dict[str, Any] = {
        'timestamp': datetime.datetime.now().isoformat(timespec='seconds'),
        'machine': machine,
        'args': {
            'quick': args.quick,
            'rounds': args.rounds,
            'duration': args.duration,
            'warmup': args.warmup,
            'loops': names,
            'prime': not args.no_prime,
        },
        'baseline': baseline,
        'aa_control': aa_name(baseline) if aa_name(baseline) in names else None,
        'notes': notes,
        'benchmarks': {},
    }
    tmpdir = Path(tempfile.mkdtemp(prefix='oxloop-net-'))
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        loadgen=loadgen,
        wrk=wrk,
        prime=not args.no_prime,
        tmpdir=tmpdir,
    )
    summaries: list[tuple[str, dict[str, Any]]] = []
    t_start = time.perf_counter()
    interrupted = False
    try:
        for case in args.cases:
            result = CaseResult(case)
            if case.mode == 'http' and wrk is None:
                result.skipped = 'wrk not installed'
            elif case.mode != 'http' and loadgen is None:
                result.skipped = 'oxloop-loadgen not available'
            if result.skipped:
                print(f'\n{case.title}: skipped ({result.skipped})')
            else:
                print(f'\n{case.title}   [{case.doc}] ', end='', flush=True)
                t_case = time.perf_counter()
                for r in range(args.rounds):
                    alive = [c for c in contestants if c.name not in result.errors]
                    k = r % len(alive) if alive else 0
                    for c in alive[k:] + alive[:k]:
                        try:
                            result.rounds.setdefault(c.name, {})[r] = measure(case, c, settings)
                        except Exception as exc:  # noqa: BLE001 - reported, the others go on
                            result.errors[c.name] = f'round {r}: {type(exc).__name__}: {exc}'
                            result.rounds.pop(c.name, None)
                        print('.', end='', flush=True)
                print(f' {time.perf_counter() - t_case:.0f} s')
            summary = summarise(result, names, baseline)
            doc['benchmarks'][case.name] = summary
            if not result.skipped:
                print_case(summary, names, baseline, settings)
                summaries.append((case.name, summary))
            if not args.no_json:
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps(doc, indent=1) + '\n')
    except KeyboardInterrupt:
        interrupted = True
        print('\ninterrupted: stopping the servers and clients')
    finally:
        stop_all()
        shutil.rmtree(tmpdir, ignore_errors=True)

    doc['total_seconds'] = time.perf_counter() - t_start
    if summaries:
        print_summary(summaries, names, baseline)
    print(
        '\nreq/s: median over rounds. req/CPU-s: requests per second of server CPU time (utime+stime over the window).'
        '\nsrv/cli CPU: CPU time over wall time of the window (100% = one CPU busy).'
    )
    for n in notes:
        print(f'note: {n}')
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        doc['interrupted'] = interrupted
        json_path.write_text(json.dumps(doc, indent=1) + '\n')
        print(f'\nfull results: {os.path.relpath(json_path)}  (total {doc["total_seconds"]:.0f} s)')
    return 130 if interrupted else 0


if __name__ == '__main__':
    sys.exit(main())
