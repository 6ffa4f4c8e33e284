"""``python -m oxloop``: run a script, a module or an asyncio REPL with oxloop as asyncio's loop.

The program runs through :mod:`runpy` after :func:`oxloop.install`, so every
``asyncio.run``, ``asyncio.Runner`` and ``asyncio.new_event_loop`` in it makes an oxloop
loop. ``sys.argv``, ``sys.path[0]``, ``__main__``, exit statuses and tracebacks follow
``python script.py`` / ``python -m module``; the REPL is the stdlib's ``asyncio`` REPL.
"""

from __future__ import annotations

import os
import platform
import runpy
import sys
from collections.abc import Sequence
from types import TracebackType

import oxloop

USAGE = """\
usage: python -m oxloop [-h] [-V] [script.py | -m module] [args ...]

Run a Python program with oxloop as asyncio's event loop: every asyncio.run(),
asyncio.Runner and asyncio.new_event_loop() in it makes an oxloop loop.

  script.py [args ...]   run a script (or a directory or zip file with a __main__.py),
                         as `python script.py args ...` does
  -m module [args ...]   run a library module as a script, as `python -m module args ...`
                         does (a package runs its __main__ submodule)
  (nothing)              open an asyncio REPL on oxloop, as `python -m asyncio` does

options (before the script or module; what follows them is the program's):
  -h, --help             show this help and exit
  -V, --version          show oxloop's and the interpreter's versions and exit
"""


def version_text() -> str:
    """What ``--version`` prints: oxloop's version and the interpreter's."""
    return f'oxloop {oxloop.__version__} ({platform.python_implementation()} {platform.python_version()})'


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``argv`` are the arguments after ``python -m oxloop``."""
    args = list(sys.argv[1:] if argv is None else argv)
    module = None
    while args:
        arg = args.pop(0)
        if arg in ('-h', '--help'):
            sys.stdout.write(USAGE)
            return
        if arg in ('-V', '--version'):
            print(version_text())
            return
        if arg.startswith('-m') and not arg.startswith('--'):
            # -m module, or -mmodule as python takes it
            module = arg[2:] or (args.pop(0) if args else '')
            if not module:
                _usage_error('option -m needs a module name')
            break
        if arg == '--':
            if not args:
                _usage_error('-- needs a script after it')
            break
        if arg.startswith('-'):
            _usage_error(f'unknown option {arg}')
        args.insert(0, arg)
        break
    oxloop.install()
    if module is not None:
        _run_module(module, args)
    elif args:
        _run_script(args[0], args[1:])
    else:
        _run_repl()


def _usage_error(message: str) -> None:
    # CPython's status for a bad command line.
    sys.stderr.write(f'python -m oxloop: {message}\n{USAGE.splitlines()[0]}\nTry `python -m oxloop --help` for more.\n')
    sys.exit(2)


def _run_script(path: str, args: list[str]) -> None:
    # `python script.py` gives __file__ and the code's file name as the script's absolute
    # path (cwd joined, not normalised); runpy takes both from the path it is given.
    # sys.argv[0] comes from the same path, so it is absolute too.
    full_path = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    sys.argv = [full_path, *args]
    if not sys.flags.safe_path:
        # `python -m oxloop` put the working directory first; `python script.py` puts the
        # script's (real) directory there, and run_path inserts a directory or zip itself.
        if os.path.isdir(full_path) or not os.path.exists(full_path) or _is_zip(full_path):
            del sys.path[0]
        else:
            sys.path[0] = os.path.dirname(os.path.realpath(full_path))
    try:
        runpy.run_path(full_path, run_name='__main__')
    except SystemExit:
        raise
    except BaseException as exc:
        _handle_failure(exc, keep_outer_runpy=False)
        raise


def _is_zip(path: str) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _run_module(name: str, args: list[str]) -> None:
    # CPython shows '-m' as sys.argv[0] while it looks the module up, then its file.
    sys.argv = ['-m', *args]
    try:
        runpy.run_module(name, run_name='__main__', alter_sys=True)
    except SystemExit:
        raise
    except BaseException as exc:
        _handle_failure(exc, keep_outer_runpy=True)
        raise


def _run_repl() -> None:
    # The stdlib's asyncio REPL calls asyncio.new_event_loop(), which the installed
    # policy answers with an oxloop loop (3.11 to 3.13).
    runpy.run_module('asyncio', run_name='__main__', alter_sys=True)


def _raised_by_runpy(exc: BaseException) -> bool:
    """Whether runpy itself raised ``exc`` (a module or file it could not find or open),
    not the program it ran."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get('__name__') == 'runpy'


def _handle_failure(exc: BaseException, *, keep_outer_runpy: bool) -> None:
    """Report runpy's own errors as CPython does (this raises SystemExit); for the
    program's exceptions, which the caller re-raises, leave the runner's frames out of
    the traceback the interpreter prints."""
    if _raised_by_runpy(exc):
        if isinstance(exc, OSError) and not keep_outer_runpy:
            # CPython's message and status for a script it cannot open.
            program = sys.orig_argv[0] if sys.orig_argv else sys.executable
            sys.stderr.write(f"{program}: can't open file {exc.filename!r}: [Errno {exc.errno}] {exc.strerror}\n")
            raise SystemExit(2) from None
        if type(exc) is ImportError:
            # What `python -m` prints for a module it cannot find or run (runpy._Error).
            raise SystemExit(f'{sys.executable}: {exc}') from None
    _hide_runner_frames(exc, keep_outer_runpy=keep_outer_runpy)


def _hide_runner_frames(exc: BaseException, *, keep_outer_runpy: bool) -> None:
    """Make the traceback the interpreter prints for ``exc`` start at the program's code.

    The exception still has to leave through the runner and runpy, which add their frames
    in front; the interpreter hands the whole traceback to ``sys.excepthook``, so a
    one-shot hook splices those frames out there. ``python -m module`` shows runpy's two
    outer frames (``_run_module_as_main``, ``_run_code``); ``keep_outer_runpy`` keeps them.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    inner_runpy = tb
    last_runpy = None
    while tb is not None and tb.tb_frame.f_globals.get('__name__') == 'runpy':
        last_runpy, tb = tb, tb.tb_next
    # The program's code is what runpy's _run_code executed; anything else below runpy
    # (importlib compiling the module, say) means the program never started.
    program_tb = tb if last_runpy is not None and last_runpy.tb_frame.f_code.co_name == '_run_code' else None
    if program_tb is None and keep_outer_runpy:
        # As `python -m` does, show runpy's frames down to the error (a syntax error).
        program_tb = inner_runpy
    previous_hook = sys.excepthook

    def excepthook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if sys.excepthook is excepthook:
            sys.excepthook = previous_hook
        if value is exc:
            tb = _splice(tb, program_tb, keep_outer_runpy=keep_outer_runpy)
            value.__traceback__ = tb
        previous_hook(etype, value, tb)

    sys.excepthook = excepthook


def _splice(
    tb: TracebackType | None, program_tb: TracebackType | None, *, keep_outer_runpy: bool
) -> TracebackType | None:
    if not keep_outer_runpy:
        return program_tb
    head = tb
    last_outer = None
    while tb is not None and tb.tb_frame.f_globals.get('__name__') == 'runpy':
        last_outer, tb = tb, tb.tb_next
    if last_outer is None:
        return program_tb
    last_outer.tb_next = program_tb
    return head
