"""Run oxloop's Python tests on every CPython minor version the machine has.

For each minor version from 3.11 (``requires-python``) to the newest one asyncio could
run on here, find one interpreter (preferring one that ships the stdlib ``test``
package, as pyenv's builds do and Debian's do not), give it a venv under ``.venvs/``,
install oxloop into it with ``pip install .`` from the checkout, and run the behaviour
suite and CPython's conformance suite. Print one table: version x passed/failed/skipped.
Any failure on any version fails the run; a version the machine lacks is reported as
"not found".

    python tools/matrix.py                 # every version found
    python tools/matrix.py --only 3.12     # one version (repeatable)
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / '.venvs'
REQUIREMENTS = ROOT / 'requirements-test.txt'
# requires-python is >=3.11; versions past the newest found are listed as not found
# so that a machine with a newer CPython is noticed.
MINORS = range(11, 16)
SUITES = {
    'behaviour': ['tests', '--ignore=tests/cpython'],
    'conformance': ['tests/cpython'],
}


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0
    note: str = ''

    def cell(self) -> str:
        if self.note:
            return self.note
        extra = f' ({self.xfailed} xfail)' if self.xfailed else ''
        return f'{self.passed}/{self.failed}/{self.skipped}{extra}'


@dataclass
class Row:
    version: str
    interpreter: str | None = None
    results: dict[str, Counts] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ''

    @property
    def ok(self) -> bool:
        if self.interpreter is None:
            return True  # not found: reported, not a failure
        return not self.error and all(not c.failed and not c.note.startswith('error') for c in self.results.values())


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, check=False, **kwargs)


def _has_test_package(python: str) -> bool:
    probe = _run([python, '-c', 'import test.test_asyncio'], capture_output=True)
    return probe.returncode == 0


def _candidates(minor: int) -> list[str]:
    """Interpreters of 3.<minor>, newest patch release of pyenv's first, then PATH's."""
    version = f'3.{minor}'
    found: list[str] = []
    pyenv_root = os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')
    pattern = os.path.join(pyenv_root, 'versions', f'{version}.*', 'bin', f'python{version}')

    def patch(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name[len(version) + 1 :]
        return tuple(int(p) if p.isdigit() else -1 for p in name.split('.'))

    # Only final releases: a name like 3.13.0t (free-threaded) or 3.13-dev is another build.
    pyenv = [p for p in glob.glob(pattern) if Path(p).parent.parent.name[len(version) + 1 :].isdigit()]
    found.extend(sorted(pyenv, key=patch, reverse=True))
    on_path = shutil.which(f'python{version}')
    if on_path and os.path.realpath(on_path) not in {os.path.realpath(p) for p in found}:
        found.append(on_path)
    return found


def find_interpreter(minor: int) -> tuple[str | None, bool]:
    """(interpreter, ships the test package) for 3.<minor>."""
    candidates = _candidates(minor)
    for python in candidates:
        if _has_test_package(python):
            return python, True
    return (candidates[0], False) if candidates else (None, False)


def prepare_venv(python: str, version: str) -> Path:
    venv = VENVS / f'py{version}'
    vpy = venv / 'bin' / 'python'
    if not vpy.exists():
        subprocess.run([python, '-m', 'venv', str(venv)], check=True)
    stamp = venv / '.requirements'
    wanted = REQUIREMENTS.read_text()
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([str(vpy), '-m', 'pip', 'install', '-q', '--upgrade', 'pip'], check=True)
        subprocess.run([str(vpy), '-m', 'pip', 'install', '-q', '-r', str(REQUIREMENTS)], check=True)
        stamp.write_text(wanted)
    # The release build from the checkout, as a user gets it; every version shares
    # the checkout's cargo target directory.
    subprocess.run(
        [str(vpy), '-m', 'pip', 'install', '-q', '--no-deps', '--force-reinstall', str(ROOT)],
        check=True,
    )
    return vpy


def _counts(junit: Path) -> Counts:
    counts = Counts()
    tree = ET.parse(junit)
    for case in tree.iter('testcase'):
        outcome = 'passed'
        for child in case:
            if child.tag in ('failure', 'error'):
                outcome = 'failed'
                break
            if child.tag == 'skipped':
                outcome = 'xfailed' if child.get('type') == 'pytest.xfail' else 'skipped'
        setattr(counts, outcome, getattr(counts, outcome) + 1)
    return counts


def run_suite(vpy: Path, version: str, suite: str) -> Counts:
    junit = VENVS / 'reports' / f'py{version}-{suite}.xml'
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    cmd = [str(vpy), '-m', 'pytest', *SUITES[suite], '-q', '-p', 'no:cacheprovider', f'--junitxml={junit}']
    print(f'\n=== CPython {version}: {suite} suite ===', flush=True)
    proc = _run(cmd, cwd=ROOT)
    if not junit.exists():
        return Counts(note=f'error (pytest exit {proc.returncode})')
    counts = _counts(junit)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not counts.failed):
        counts.note = f'error (pytest exit {proc.returncode})'
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', action='append', help='run only this minor version, e.g. 3.12 (repeatable)')
    args = parser.parse_args()
    started = time.monotonic()
    rows: list[Row] = []
    for minor in MINORS:
        version = f'3.{minor}'
        if args.only and version not in args.only:
            continue
        row = Row(version)
        rows.append(row)
        python, has_tests = find_interpreter(minor)
        if python is None:
            continue
        row.interpreter = python
        t0 = time.monotonic()
        try:
            vpy = prepare_venv(python, version)
        except subprocess.CalledProcessError as exc:
            row.error = f'setup failed: {exc}'
            row.seconds = time.monotonic() - t0
            continue
        row.results['behaviour'] = run_suite(vpy, version, 'behaviour')
        if has_tests:
            row.results['conformance'] = run_suite(vpy, version, 'conformance')
        else:
            row.results['conformance'] = Counts(note='no stdlib test package')
        row.seconds = time.monotonic() - t0

    print('\n' + '=' * 100)
    print('oxloop on every CPython found (passed/failed/skipped)')
    width = max([len('interpreter'), *(len(r.interpreter or '') for r in rows)]) + 2
    header = f'{"version":<9}{"interpreter":<{width}}{"behaviour":<20}{"conformance":<20}{"time":>6}  result'
    print(header)
    print('-' * len(header))
    for row in rows:
        if row.interpreter is None:
            print(f'{row.version:<9}{"not found":<{width}}{"":<20}{"":<20}{"":>6}  -')
            continue
        cells = [row.results.get(s, Counts(note='-')).cell() for s in SUITES]
        status = 'ok' if row.ok else (row.error or 'FAILED')
        print(f'{row.version:<9}{row.interpreter:<{width}}{cells[0]:<20}{cells[1]:<20}{row.seconds:>5.0f}s  {status}')
    print(f'total wall time: {time.monotonic() - started:.0f} s')
    ran = [r for r in rows if r.interpreter is not None]
    if not ran:
        print('no interpreter found')
        return 1
    return 0 if all(r.ok for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
