"""Every Python block in the docs is a complete program, and runs.

``docs/*.md`` (but servers.md, see below) and README.md: each fenced ``python`` block runs in a child interpreter
(this venv's), and must exit 0 within the time limit. Blocks that are not Python
(shell commands, layouts) are fenced without a language.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# docs/servers.md's snippets start servers that run until stopped: each is the program
# a named test in tests/integration/ runs, and that test is where it runs.
DOCS = [ROOT / 'README.md', *sorted(p for p in (ROOT / 'docs').glob('*.md') if p.name != 'servers.md')]
BLOCK = re.compile(r'^```python\n(.*?)^```', re.DOTALL | re.MULTILINE)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, match in enumerate(BLOCK.finditer(doc.read_text())):
            found.append((f'{doc.name}#{i + 1}', match.group(1)))
    return found


@pytest.mark.parametrize(('where', 'source'), _blocks(), ids=[where for where, _ in _blocks()])
def test_docs_block_runs(where, source, tmp_path):
    script = tmp_path / 'block.py'
    script.write_text(source)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, f'{where} failed:\n{proc.stderr[-3000:]}'
