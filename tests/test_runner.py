"""``python -m oxloop``: each case runs a program through the runner and the same program
as ``python script.py`` / ``python -m module`` / ``python -m asyncio`` would, in child
processes, and compares them. The loop type has no stdlib counterpart: it is asserted."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

OXLOOP_LOOP = 'oxloop._loop.Loop'

# Prints what a program sees of how it was started, as JSON.
REPORT = """\
import asyncio, json, sys
import __main__

def loop_types():
    async def running():
        return type(asyncio.get_running_loop())
    seen = [asyncio.run(running())]
    with asyncio.Runner() as runner:
        seen.append(runner.run(running()))
    loop = asyncio.new_event_loop()
    seen.append(type(loop))
    loop.close()
    return sorted({f'{t.__module__}.{t.__qualname__}' for t in seen})

print(json.dumps({
    'argv': sys.argv,
    'name': __name__,
    'file': __file__,
    'main_is_this_module': sys.modules['__main__'] is __main__ and __main__.__dict__ is globals(),
    'path0': sys.path[0],
    'spec': __spec__.name if __spec__ is not None else None,
    'package': __package__,
    'loops': loop_types(),
}))
"""


def _python(*args: str, cwd: str, stdin: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ('PYTHONASYNCIODEBUG', 'PYTHONDEVMODE', 'PYTHONSTARTUP', 'PYTHONSAFEPATH', 'PYTHONPATH')
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _write(directory: str, relpath: str, source: str) -> str:
    path = os.path.join(directory, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(textwrap.dedent(source))
    return path


def _same_result(ours: subprocess.CompletedProcess[str], stdlib: subprocess.CompletedProcess[str]) -> None:
    assert (ours.returncode, ours.stdout, ours.stderr) == (stdlib.returncode, stdlib.stdout, stdlib.stderr)


def test_runner_script_sees_what_python_script_gives(tmp_dir):
    _write(tmp_dir, 'app/main.py', REPORT)
    # Options after the script are the program's, not the runner's.
    args = ('app/main.py', 'one', '-m', 'x', '--help', '--version')
    ours = _python('-m', 'oxloop', *args, cwd=tmp_dir)
    stdlib = _python(*args, cwd=tmp_dir)
    assert (ours.returncode, ours.stderr) == (0, '') and (stdlib.returncode, stdlib.stderr) == (0, '')
    seen, expected = json.loads(ours.stdout), json.loads(stdlib.stdout)
    assert seen['loops'] == [OXLOOP_LOOP]
    assert OXLOOP_LOOP not in expected['loops']
    # runpy gives sys.argv[0] and __file__ from one path: the absolute one, which is
    # what `python script.py` makes __file__ (README: the one difference).
    assert seen['argv'] == [expected['file'], *expected['argv'][1:]]
    assert expected['path0'] == os.path.join(os.path.realpath(tmp_dir), 'app')
    for key in ('name', 'file', 'main_is_this_module', 'path0', 'spec'):
        assert seen[key] == expected[key], key
    # runpy.run_path's __package__ for a script: '' where python gives None (both mean
    # "no package": a relative import fails the same way).
    assert (seen['package'], expected['package']) == ('', None)
    assert seen['name'] == '__main__' and seen['main_is_this_module']


def test_runner_script_through_a_symlink_has_the_real_directory_on_sys_path(tmp_dir):
    target = _write(tmp_dir, 'real/main.py', REPORT)
    os.symlink(target, os.path.join(tmp_dir, 'link.py'))
    ours = json.loads(_python('-m', 'oxloop', 'link.py', cwd=tmp_dir).stdout)
    stdlib = json.loads(_python('link.py', cwd=tmp_dir).stdout)
    assert ours['path0'] == stdlib['path0'] == os.path.join(os.path.realpath(tmp_dir), 'real')
    assert ours['file'] == stdlib['file']


@pytest.mark.parametrize(
    'ending',
    [
        'pass',
        'sys.exit(3)',
        "sys.exit('a message on stderr')",
        'raise SystemExit(None)',
        'os._exit(5)',
        'def deep():\n    raise ValueError("boom")\ndeep()',
        'asyncio.run(fail())',
        'import nosuchmodule_oxloop',
    ],
    ids=[
        'normal',
        'exit-3',
        'exit-message',
        'exit-none',
        'os-exit',
        'exception',
        'exception-in-asyncio-run',
        'import-error',
    ],
)
def test_runner_script_exit_status_and_traceback(tmp_dir, ending):
    # Full paths: the traceback names the file as __file__ does, on both.
    script = _write(
        tmp_dir,
        'prog.py',
        'import asyncio, os, sys\nprint("out", flush=True)\n'
        'async def fail():\n    await asyncio.sleep(0)\n    raise KeyError("in a task")\n' + ending + '\n',
    )
    _same_result(_python('-m', 'oxloop', script, cwd=tmp_dir), _python(script, cwd=tmp_dir))


def test_runner_script_exception_traceback_has_no_runner_frames(tmp_dir):
    script = _write(tmp_dir, 'prog.py', 'def f():\n    1 / 0\nf()\n')
    ours = _python('-m', 'oxloop', script, cwd=tmp_dir)
    assert ours.returncode == 1
    assert ours.stderr.startswith(f'Traceback (most recent call last):\n  File "{script}", line 3, in <module>\n')
    assert 'runpy' not in ours.stderr and 'oxloop' not in ours.stderr
    assert ours.stderr.endswith('ZeroDivisionError: division by zero\n')


def test_runner_script_syntax_error(tmp_dir):
    script = _write(tmp_dir, 'bad.py', 'x = (\n')
    _same_result(_python('-m', 'oxloop', script, cwd=tmp_dir), _python(script, cwd=tmp_dir))


def test_runner_script_keyboard_interrupt(tmp_dir):
    # Uncaught, it ends the process by SIGINT after printing the traceback.
    script = _write(
        tmp_dir, 'ki.py', 'import asyncio\nasync def main():\n    raise KeyboardInterrupt\nasyncio.run(main())\n'
    )
    ours, stdlib = _python('-m', 'oxloop', script, cwd=tmp_dir), _python(script, cwd=tmp_dir)
    assert ours.returncode == stdlib.returncode == -signal.SIGINT
    # The frames in between are each loop's own run_until_complete.
    first = f'Traceback (most recent call last):\n  File "{script}", line 4, in <module>\n'
    last = f'  File "{script}", line 3, in main\n    raise KeyboardInterrupt\nKeyboardInterrupt\n'
    for result in (ours, stdlib):
        assert result.stderr.startswith(first) and result.stderr.endswith(last)


def test_runner_script_excepthook_of_the_program_gets_its_traceback(tmp_dir):
    script = _write(
        tmp_dir,
        'hook.py',
        """\
        import sys, traceback
        def hook(etype, value, tb):
            print('hook:', [f.name for f in traceback.extract_tb(tb)], value is sys.last_value)
        sys.excepthook = hook
        def f():
            raise RuntimeError('x')
        f()
        """,
    )
    ours = _python('-m', 'oxloop', script, cwd=tmp_dir)
    _same_result(ours, _python(script, cwd=tmp_dir))
    assert ours.stdout == "hook: ['<module>', 'f'] True\n"


def test_runner_directory_with_main(tmp_dir):
    _write(tmp_dir, 'appdir/__main__.py', REPORT)
    appdir = os.path.join(tmp_dir, 'appdir')
    ours = json.loads(_python('-m', 'oxloop', appdir, 'arg', cwd=tmp_dir).stdout)
    stdlib = json.loads(_python(appdir, 'arg', cwd=tmp_dir).stdout)
    assert ours['loops'] == [OXLOOP_LOOP]
    for key in ('argv', 'name', 'file', 'path0', 'spec', 'main_is_this_module'):
        assert ours[key] == stdlib[key], key


def _package(tmp_dir: str) -> None:
    _write(tmp_dir, 'pkg/__init__.py', '')
    _write(tmp_dir, 'pkg/__main__.py', REPORT)
    _write(tmp_dir, 'pkg/tool.py', REPORT)
    _write(tmp_dir, 'pkg/fails.py', 'import sys\ndef f():\n    raise LookupError(sys.argv[1:])\nf()\n')
    _write(tmp_dir, 'pkg/quits.py', 'import sys\nsys.exit(int(sys.argv[1]))\n')


@pytest.mark.parametrize('module', ['pkg', 'pkg.tool'])
def test_runner_module_sees_what_python_m_gives(tmp_dir, module):
    _package(tmp_dir)
    ours = _python('-m', 'oxloop', '-m', module, 'a', '-m', '--help', cwd=tmp_dir)
    stdlib = _python('-m', module, 'a', '-m', '--help', cwd=tmp_dir)
    assert (ours.returncode, ours.stderr) == (0, '') and (stdlib.returncode, stdlib.stderr) == (0, '')
    seen, expected = json.loads(ours.stdout), json.loads(stdlib.stdout)
    assert seen['loops'] == [OXLOOP_LOOP]
    assert OXLOOP_LOOP not in expected['loops']
    del seen['loops'], expected['loops']
    assert seen == expected
    assert seen['path0'] == os.path.realpath(tmp_dir) or seen['path0'] == tmp_dir


def test_runner_module_joined_option(tmp_dir):
    _package(tmp_dir)
    seen = json.loads(_python('-m', 'oxloop', '-mpkg.tool', 'b', cwd=tmp_dir).stdout)
    assert seen['argv'][1:] == ['b'] and seen['spec'] == 'pkg.tool'


@pytest.mark.parametrize(('module', 'args'), [('pkg.fails', ('x', 'y')), ('pkg.quits', ('4',)), ('pkg.quits', ('0',))])
def test_runner_module_exit_status_and_traceback(tmp_dir, module, args):
    # The traceback is byte for byte python -m's, runpy's two outer frames included.
    _package(tmp_dir)
    _same_result(_python('-m', 'oxloop', '-m', module, *args, cwd=tmp_dir), _python('-m', module, *args, cwd=tmp_dir))


def test_runner_missing_script(tmp_dir):
    ours, stdlib = _python('-m', 'oxloop', 'nosuch.py', 'arg', cwd=tmp_dir), _python('nosuch.py', 'arg', cwd=tmp_dir)
    assert stdlib.returncode == 2
    assert "can't open file" in stdlib.stderr and '[Errno 2] No such file or directory' in stdlib.stderr
    _same_result(ours, stdlib)


@pytest.mark.parametrize('module', ['nosuch_oxloop_module', 'pkg.nosuch', 'nosuchpkg.sub'])
def test_runner_missing_module(tmp_dir, module):
    _package(tmp_dir)
    ours, stdlib = _python('-m', 'oxloop', '-m', module, cwd=tmp_dir), _python('-m', module, cwd=tmp_dir)
    assert stdlib.returncode == 1 and 'No module named' in stdlib.stderr
    _same_result(ours, stdlib)


def test_runner_package_without_main(tmp_dir):
    _write(tmp_dir, 'lib/__init__.py', '')
    _same_result(_python('-m', 'oxloop', '-m', 'lib', cwd=tmp_dir), _python('-m', 'lib', cwd=tmp_dir))


def test_runner_help(tmp_dir):
    for flag in ('-h', '--help'):
        result = _python('-m', 'oxloop', flag, cwd=tmp_dir)
        assert result.returncode == 0 and result.stderr == ''
        assert result.stdout.startswith('usage: python -m oxloop')
        assert '-m module' in result.stdout and 'asyncio REPL' in result.stdout


def test_runner_version(tmp_dir):
    import oxloop

    for flag in ('-V', '--version'):
        result = _python('-m', 'oxloop', flag, cwd=tmp_dir)
        assert (result.returncode, result.stderr) == (0, '')
        assert (
            result.stdout
            == f'oxloop {oxloop.__version__} ({platform.python_implementation()} {platform.python_version()})\n'
        )


def test_runner_unknown_option(tmp_dir):
    result = _python('-m', 'oxloop', '--nope', cwd=tmp_dir)
    assert result.returncode == 2 and result.stdout == ''
    assert 'unknown option --nope' in result.stderr and 'usage: python -m oxloop' in result.stderr


REPL_INPUT = """\
await asyncio.sleep(0, result=41) + 1
loop = asyncio.get_running_loop()
loop is asyncio.get_event_loop()
print('running:', type(loop).__module__ + '.' + type(loop).__qualname__)
twice = lambda x: asyncio.sleep(0.01, result=2 * x)
await asyncio.gather(twice(1), twice(2))
1 / 0
'still alive'
"""


def _futures_line(stderr: str) -> str:
    return re.sub(r'(futures/_base\.py", line )\d+', r'\1N', stderr)


def test_runner_repl(tmp_dir):
    ours = _python('-m', 'oxloop', cwd=tmp_dir, stdin=REPL_INPUT)
    stdlib = _python('-m', 'asyncio', cwd=tmp_dir, stdin=REPL_INPUT)
    assert f'running: {OXLOOP_LOOP}\n' in ours.stdout
    assert 'running: oxloop' not in stdlib.stdout
    stdlib_loop = stdlib.stdout.split('running: ')[1].split('\n')[0]
    assert ours.stdout == stdlib.stdout.replace(stdlib_loop, OXLOOP_LOOP)
    assert ours.returncode == stdlib.returncode == 0
    # The REPL thread waits in concurrent.futures' result() or finds it done: which of
    # its two lines shows in a traceback is a race on either loop.
    assert _futures_line(ours.stderr) == _futures_line(stdlib.stderr)
    for line in ('42', 'True', '[2, 4]', "'still alive'"):
        assert f'{line}\n' in ours.stdout
    assert 'ZeroDivisionError: division by zero' in ours.stderr
    assert ours.stderr.endswith('exiting asyncio REPL...\n')


def test_runner_repl_exit_status(tmp_dir):
    stdin = 'import sys\nsys.exit(0)\n'
    _same_result(_python('-m', 'oxloop', cwd=tmp_dir, stdin=stdin), _python('-m', 'asyncio', cwd=tmp_dir, stdin=stdin))


def test_unclosed_loop_set_as_current_closes_quietly_at_shutdown(run_python, loop_impl):
    # The asyncio REPL leaves its loop open and set as the current loop: the policy
    # keeps it until asyncio's own globals go at interpreter shutdown, and __del__
    # closes it then (oxloop's close() used to read its module's globals, None by then).
    result = run_python('asyncio.set_event_loop(loop)\ndel loop\n', impl=loop_impl)
    assert (result.returncode, result.stdout, result.stderr) == (0, '', '')


def _interrupt(
    args: tuple[str, ...], cwd: str, first_input: str, then: str
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Start ``python *args``, feed it ``first_input``, send SIGINT once it printed 'go',
    feed it ``then``; return what it printed first and the whole result."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proc.stdin.write(first_input)
        proc.stdin.flush()
        first = proc.stdout.readline()
        time.sleep(0.1)  # into the blocking wait
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(then, timeout=10)
    finally:
        proc.kill()
        proc.wait()
    return first, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_runner_repl_ctrl_c_cancels_the_running_await(tmp_dir):
    # As python -m asyncio: the awaited task is cancelled, the REPL goes on.
    line = "print('go', flush=True); await asyncio.sleep(30)\n"
    results = [_interrupt(('-m', mod), tmp_dir, line, "'after'\n") for mod in ('oxloop', 'asyncio')]
    (ours_first, ours), (stdlib_first, stdlib) = results
    assert ours_first == stdlib_first == '>>> go\n'
    assert ours.stdout == stdlib.stdout == ">>> 'after'\n>>> "
    assert ours.returncode == stdlib.returncode == 0
    assert ours.stderr == stdlib.stderr
    assert '\nKeyboardInterrupt\n' in ours.stderr


def test_runner_script_ctrl_c_while_blocked(tmp_dir):
    script = _write(
        tmp_dir, 'blocked.py', "import asyncio, sys\nprint('go', flush=True)\nasyncio.run(asyncio.sleep(30))\n"
    )
    (ours_first, ours), (stdlib_first, stdlib) = (
        _interrupt(('-m', 'oxloop', script), tmp_dir, '', ''),
        _interrupt((script,), tmp_dir, '', ''),
    )
    assert ours_first == stdlib_first == 'go\n'
    assert ours.returncode == stdlib.returncode == -signal.SIGINT
    # asyncio.run turns the cancelled main task into a KeyboardInterrupt, the same way
    # on both loops (the same frames: run_until_complete is the stdlib's on oxloop).
    _same_result(ours, stdlib)
    assert ours.stderr.endswith('raise KeyboardInterrupt()\nKeyboardInterrupt\n')
