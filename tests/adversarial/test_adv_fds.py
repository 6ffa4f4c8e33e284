"""fd watching fed what users get wrong: bad file objects, huge and negative fds,
closed fds, fd numbers reused under a registration, re-entrant callbacks.

Every test runs on oxloop and on the stdlib loop; the expected answers are the
stdlib's (selectors.EpollSelector under selector_events).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import select
import socket
import warnings

import pytest

ADD_REMOVE = ('add_reader', 'add_writer', 'remove_reader', 'remove_writer')


def _noop() -> None:
    pass


def _call(loop, method: str, fileobj):
    """What ``loop.<method>(fileobj[, cb])`` does: ('ok', result) or the exception's
    (type, message, errno); a successful add is undone."""
    try:
        if method.startswith('add'):
            getattr(loop, method)(fileobj, _noop)
            getattr(loop, method.replace('add', 'remove'))(fileobj)
            return ('ok', None)
        return ('ok', getattr(loop, method)(fileobj))
    except Exception as e:  # noqa: BLE001 - the outcome is what is compared
        return (type(e).__name__, str(e), getattr(e, 'errno', None))


def _reuse_number(fd: int, new: socket.socket) -> socket.socket:
    """Put ``new``'s file at the (closed) fd number ``fd``, as the kernel does when it
    hands a freed number to the next open; returns the socket owning ``fd``."""
    os.dup2(new.fileno(), fd)
    owner = socket.socket(fileno=fd)
    new.close()
    owner.setblocking(False)
    return owner


def _pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


# ----- numbers ---------------------------------------------------------------------


@pytest.mark.parametrize('method', ADD_REMOVE)
@pytest.mark.parametrize(
    ('fd', 'expected_add', 'expected_remove'),
    [
        (2**31 - 1, ('OSError', '[Errno 9] Bad file descriptor', errno.EBADF), ('ok', False)),
        (3_000_000, ('OSError', '[Errno 9] Bad file descriptor', errno.EBADF), ('ok', False)),
        *[
            (n, ('OverflowError', 'Python int too large to convert to C int', None), ('ok', False))
            for n in (2**31, 2**32 + 5, 2**63, 2**64, 2**100)
        ],
        *[
            (n, ('ValueError', f'Invalid file descriptor: {n}', None), None)
            for n in (-1, -(2**31), -(2**63) - 1, -(2**100))
        ],
        *[
            (obj, ('ValueError', f'Invalid file object: {obj!r}', None), None)
            for obj in (1.5, '3', None, b'\x00', object)
        ],
    ],
    ids=repr,
)
def test_bad_fd_numbers_get_the_stdlib_answer(loop, method, fd, expected_add, expected_remove):
    expected = expected_add if method.startswith('add') or expected_remove is None else expected_remove
    assert _call(loop, method, fd) == expected
    # The loop is still usable.
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_closed_fd_is_refused_and_costs_nothing(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    for method in ('add_reader', 'add_writer'):
        with pytest.raises(OSError) as info:
            getattr(loop, method)(r, _noop)
        assert info.value.errno == errno.EBADF
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False


def test_huge_registered_fd_costs_no_table(run_python, loop_impl):
    """A watched fd near the process limit costs one entry, not a table up to it
    (it cost 24 bytes per fd number below it, 92 MiB for fd 3,000,000)."""
    code = """
        import os, resource, socket, sys
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with open('/proc/sys/fs/nr_open') as f:
            top = min(int(f.read()), 3_000_001)
        try:  # raising the hard limit needs root (CAP_SYS_RESOURCE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, max(top, hard)))
        except (OSError, ValueError):
            top = hard
        if top < 500_000:
            print('SKIP'); sys.exit(0)
        a, b = socket.socketpair()
        big = os.dup2(a.fileno(), top - 1)
        def rss():
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        before = rss()
        loop.add_reader(big, lambda: None)
        grown = rss() - before
        assert loop.remove_reader(big) is True
        loop.close()
        print('GROWN', grown)
    """
    out = run_python(code, impl=loop_impl)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == 'SKIP':
        pytest.skip('RLIMIT_NOFILE hard limit too low for a huge fd')
    grown = int(out.stdout.split()[-1])
    assert grown < 4 * 1024 * 1024


def _epoll_warns_of_bool() -> bool:
    """CPython 3.13+: select.epoll warns when handed a bool as an fd."""
    ep = select.epoll()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            ep.register(False, select.EPOLLIN)
        return any(issubclass(w.category, RuntimeWarning) for w in caught)
    finally:
        ep.close()


def test_bool_is_an_fd_as_in_selectors(loop):
    # selectors takes True/False as the ints they are (fd 1 and 0), and passes them on
    # to select.epoll, which warns (RuntimeWarning) on CPython 3.13+ where the
    # registration reaches the kernel: adding it and removing it.
    r, w = os.pipe()
    try:
        saved = os.dup(0)
        os.dup2(r, 0)
        try:
            if _epoll_warns_of_bool():
                warns = functools.partial(pytest.warns, RuntimeWarning, match='^bool is used as a file descriptor$')
            else:
                warns = contextlib.nullcontext
            with warns():
                loop.add_reader(False, _noop)
            key = loop._selector.get_key(0)
            assert key.fd == 0
            with warns():
                assert loop.remove_reader(False) is True
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    finally:
        os.close(r)
        os.close(w)


# ----- file objects ----------------------------------------------------------------


class _FileObj:
    def __init__(self, fileno):
        self._fileno = fileno

    def fileno(self):
        if isinstance(self._fileno, BaseException):
            raise self._fileno
        return self._fileno

    def __repr__(self):
        return '<FileObj>'


class _BadInt:
    def __int__(self):
        raise RuntimeError('no int')


@pytest.mark.parametrize('method', ADD_REMOVE)
@pytest.mark.parametrize(
    ('fileno', 'expected'),
    [
        (AttributeError('x'), ('ValueError', 'Invalid file object: <FileObj>', None)),
        (TypeError('x'), ('ValueError', 'Invalid file object: <FileObj>', None)),
        (ValueError('x'), ('ValueError', 'Invalid file object: <FileObj>', None)),
        (OSError(errno.EBADF, 'gone'), ('OSError', '[Errno 9] gone', errno.EBADF)),
        (RuntimeError('boom'), ('RuntimeError', 'boom', None)),
        ('abc', ('ValueError', 'Invalid file object: <FileObj>', None)),
        (None, ('ValueError', 'Invalid file object: <FileObj>', None)),
        (_BadInt(), ('RuntimeError', 'no int', None)),
        (-5, ('ValueError', 'Invalid file descriptor: -5', None)),
        (-(2**80), ('ValueError', f'Invalid file descriptor: {-(2**80)}', None)),
    ],
    ids=repr,
)
def test_fileno_that_raises_or_returns_junk(loop, method, fileno, expected):
    assert _call(loop, method, _FileObj(fileno)) == expected


@pytest.mark.parametrize('method', ADD_REMOVE)
def test_fileno_beyond_a_c_int(loop, method):
    got = _call(loop, method, _FileObj(2**70))
    if method.startswith('add'):
        assert got == ('OverflowError', 'Python int too large to convert to C int', None)
    else:
        assert got == ('ok', False)


def test_closed_loop_answers_before_looking_at_the_file_object(loop):
    loop.close()
    for bad in (-1, 2**80, _FileObj(RuntimeError('boom')), 'x'):
        assert loop._remove_reader(bad) is False
        assert loop._remove_writer(bad) is False
    with pytest.raises(RuntimeError, match='Event loop is closed'):
        loop._add_reader(-1, _noop)
    with pytest.raises(RuntimeError, match='Event loop is closed'):
        loop._add_writer(2**80, _noop)


# ----- closed socket objects -----------------------------------------------------------


def test_remove_closed_socket_object_finds_its_registration(loop):
    a, b = _pair()
    try:
        loop.add_reader(a, _noop)
        loop.add_writer(a, _noop)
        fd = a.fileno()
        a.close()
        # selectors finds the registration by the object itself once fileno() is -1.
        key = loop._selector.get_key(a)
        assert key.fileobj is a
        assert key.fd == fd
        assert key.events == 3
        # Both directions registered: removing one is an epoll MOD of a closed fd.
        with pytest.raises(OSError) as info:
            loop.remove_writer(a)
        assert info.value.errno == errno.EBADF
        # ... after which the registration is gone, as EpollSelector.modify drops it.
        with pytest.raises(ValueError, match='Invalid file descriptor: -1'):
            loop.remove_reader(a)
    finally:
        b.close()


def test_remove_closed_socket_object_one_direction(loop, run_briefly):
    a, b = _pair()
    try:
        calls = []
        loop.add_reader(a, calls.append, 'r')
        a.close()
        assert loop.remove_reader(a) is True
        with pytest.raises(ValueError, match='Invalid file descriptor: -1'):
            loop.remove_writer(a)
        with pytest.raises(ValueError, match='Invalid file descriptor: -1'):
            loop.add_reader(a, _noop)
        with pytest.raises(ValueError, match='Invalid file descriptor: -1'):
            loop._selector.get_key(a)
        run_briefly(loop)
        assert calls == []
    finally:
        b.close()


def test_add_other_direction_on_closed_socket_object(loop):
    a, b = _pair()
    try:
        handle_calls = []
        loop.add_reader(a, handle_calls.append, 'r')
        a.close()
        with pytest.raises(OSError) as info:
            loop.add_writer(a, _noop)
        assert info.value.errno == errno.EBADF
        # The registration went with the failed modify.
        with pytest.raises(ValueError):
            loop.remove_reader(a)
    finally:
        b.close()


def test_registered_key_keeps_the_first_file_object(loop):
    a, b = _pair()
    try:
        loop.add_reader(a, _noop)
        loop.add_writer(a.fileno(), _noop)
        key = loop._selector.get_key(a.fileno())
        assert key.fileobj is a
        assert key.events == 3
        assert loop.remove_reader(a.fileno()) is True
        assert loop.remove_writer(a) is True
        loop.add_reader(a.fileno(), _noop)
        assert loop._selector.get_key(a).fileobj == a.fileno()
        assert loop.remove_reader(a) is True
    finally:
        a.close()
        b.close()


# ----- fd numbers reused under a registration ---------------------------------------------


def test_reused_fd_other_direction_is_refused_not_rearmed(loop, run_briefly):
    """A pending sock_recv of a closed socket must not receive the bytes of the
    socket that got its fd number (the stale reader was re-armed by the new
    owner's add_writer)."""
    a, b = _pair()
    c, d = _pair()
    try:
        fut = asyncio.ensure_future(loop.sock_recv(a, 100), loop=loop)
        run_briefly(loop)
        assert not fut.done()
        fd = a.fileno()
        a.close()
        c = _reuse_number(fd, c)
        # The new owner's registration of the other direction: the kernel says the
        # registration is gone (ENOENT), which is reported.
        with pytest.raises(FileNotFoundError):
            loop.add_writer(c, _noop)
        d.send(b'for the new owner')
        run_briefly(loop, 3)
        assert not fut.done()
        assert c.recv(100) == b'for the new owner'
        # The new owner registers again and is served.
        got = []
        loop.add_reader(c, lambda: got.append(c.recv(100)))
        d.send(b'again')
        run_briefly(loop, 3)
        assert got == [b'again']
        assert not fut.done()
        assert loop.remove_reader(c) is True
        fut.cancel()
        run_briefly(loop)
    finally:
        for s in (a, b, c, d):
            s.close()


def test_reused_fd_same_direction_never_serves_the_old_owner(loop, run_briefly):
    a, b = _pair()
    c, d = _pair()
    try:
        old = []
        loop.add_reader(a, old.append, 'old')
        fd = a.fileno()
        a.close()
        c = _reuse_number(fd, c)
        d.send(b'new data')
        run_briefly(loop, 3)
        assert old == []
        # Replacing the stale reader needs no kernel call (selectors skips it when
        # the events are unchanged): it succeeds, and the old one is cancelled.
        new = []
        loop.add_reader(fd, new.append, 'new')
        run_briefly(loop, 3)
        assert old == []
        assert loop.remove_reader(fd) is True
    finally:
        for s in (a, b, c, d):
            s.close()


def test_reader_closing_its_fd_then_reuse(loop, run_briefly):
    a, b = _pair()
    c, d = _pair()
    try:
        calls = []

        def on_read():
            calls.append(a.recv(100))
            a.close()  # no remove_reader: the kernel forgets the closed fd

        fd = a.fileno()
        loop.add_reader(fd, on_read)
        b.send(b'x')
        run_briefly(loop, 3)
        assert calls == [b'x']
        c = _reuse_number(fd, c)
        d.send(b'y')
        run_briefly(loop, 3)
        assert calls == [b'x']
        assert c.recv(10) == b'y'
        # The stale registration is still known, and removing it is quiet.
        assert loop.remove_reader(fd) is True
    finally:
        for s in (a, b, c, d):
            s.close()


def test_fork_does_not_rearm_a_reused_fd(run_python, loop_impl):
    code = """
        import os, socket, sys
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        for s in (a, b, c, d):
            s.setblocking(False)
        old = []
        loop.add_reader(a.fileno(), lambda: old.append(1))
        fd = a.fileno()
        a.close()
        os.dup2(c.fileno(), fd)
        pid = os.fork()
        if pid == 0:
            d.send(b'for the new owner of the number')
            for _ in range(3):
                loop.call_soon(loop.stop)
                loop.run_forever()
            os._exit(3 if old else 0)
        _, status = os.waitpid(pid, 0)
        print('CHILD', os.waitstatus_to_exitcode(status), old)
    """
    out = run_python(code, impl=loop_impl)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['CHILD', '0', '[]']


def test_fork_keeps_live_registrations(run_python, loop_impl):
    code = """
        import os, socket
        a, b = socket.socketpair()
        a.setblocking(False)
        got = []
        loop.add_reader(a.fileno(), lambda: got.append(a.recv(10)))
        pid = os.fork()
        if pid == 0:
            b.send(b'hi')
            for _ in range(3):
                loop.call_soon(loop.stop)
                loop.run_forever()
            os._exit(0 if got == [b'hi'] else 3)
        _, status = os.waitpid(pid, 0)
        print('CHILD', os.waitstatus_to_exitcode(status))
    """
    out = run_python(code, impl=loop_impl)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['CHILD', '0']


# ----- re-entrant callbacks -------------------------------------------------------------


def test_reader_removes_and_adds_itself(loop, run_briefly):
    a, b = _pair()
    try:
        calls = []

        def on_read():
            calls.append(a.recv(1))
            assert loop.remove_reader(a) is True
            loop.add_reader(a, on_read)
            loop.add_writer(a, _noop)
            assert loop.remove_writer(a) is True

        loop.add_reader(a, on_read)
        b.send(b'abc')
        run_briefly(loop, 5)
        assert b''.join(calls) == b'abc'
        assert loop.remove_reader(a) is True
    finally:
        a.close()
        b.close()


def test_reader_removes_another_ready_reader(loop, run_briefly):
    a, b = _pair()
    c, d = _pair()
    try:
        calls = []

        def first(name, other):
            calls.append(name)
            loop.remove_reader(other)

        loop.add_reader(a, first, 'a', c)
        loop.add_reader(c, first, 'c', a)
        b.send(b'x')
        d.send(b'x')
        run_briefly(loop)
        # Whichever ran first cancelled the other before it ran.
        assert len(calls) == 1
    finally:
        for s in (a, b, c, d):
            s.close()


def test_file_object_calling_back_into_the_loop(loop, run_briefly):
    """__repr__ and fileno() that re-enter the loop while it looks the object up."""
    a, b = _pair()
    try:
        seen = []

        class Reentrant:
            def fileno(self):
                seen.append(loop._selector.get_map() is not None)
                loop.call_soon(seen.append, 'soon')
                return a.fileno()

            def __repr__(self):
                loop.add_writer(b, _noop)
                loop.remove_writer(b)
                seen.append('repr')
                return '<Reentrant>'

        obj = Reentrant()
        with pytest.raises(KeyError, match='<Reentrant> is not registered'):
            loop._selector.get_key(obj)
        loop.add_reader(obj, _noop)
        assert loop._selector.get_key(obj).fileobj is obj
        assert loop.remove_reader(obj) is True
        run_briefly(loop)
        assert 'repr' in seen
        assert 'soon' in seen
    finally:
        a.close()
        b.close()


def test_invalid_file_object_repr_calling_back_into_the_loop(loop):
    class Bad:
        def fileno(self):
            return 'junk'

        def __repr__(self):
            loop.call_soon(_noop)
            loop.remove_reader(0)
            return '<Bad>'

    for method in ADD_REMOVE:
        assert _call(loop, method, Bad()) == ('ValueError', 'Invalid file object: <Bad>', None)


def test_reader_callback_closes_the_loop_fd_registrations(loop, run_briefly):
    a, b = _pair()
    try:
        calls = []

        def on_read():
            calls.append(1)
            loop.remove_reader(a)
            a.close()

        loop.add_reader(a, on_read)
        loop.add_writer(b, _noop)
        b.send(b'x')
        run_briefly(loop, 3)
        assert calls == [1]
        assert loop.remove_writer(b) is True
    finally:
        a.close()
        b.close()
