"""add_reader / remove_reader / add_writer / remove_writer (level-triggered, like asyncio)."""

import os
import socket

import pytest


@pytest.fixture
def closed_fd():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


def test_readers_called_when_readable(loop, sock_pair, run_with_deadline):
    a, b = sock_pair
    got = []

    def on_read(sock, tag):
        got.append((tag, sock.recv(100)))
        loop.stop()

    loop.add_reader(a.fileno(), on_read, a, 'tag')
    loop.call_later(0.01, b.send, b'hello')
    try:
        assert run_with_deadline(loop)
    finally:
        assert loop.remove_reader(a.fileno()) is True
    assert got == [('tag', b'hello')]


def test_readers_not_called_when_idle(loop, sock_pair, run_briefly):
    a, _ = sock_pair
    calls = []
    loop.add_reader(a, calls.append, 'read')
    run_briefly(loop, 3)
    assert calls == []
    assert loop.remove_reader(a) is True


def test_readers_level_triggered(loop, sock_pair, run_briefly):
    a, b = sock_pair
    calls = []
    loop.add_reader(a.fileno(), calls.append, 'ready')
    b.send(b'x')
    run_briefly(loop, 4)
    # The data was never read: the reader is called on every iteration.
    assert len(calls) >= 3
    a.recv(10)
    calls.clear()
    run_briefly(loop, 3)
    assert calls == []
    assert loop.remove_reader(a.fileno())


def test_readers_accepts_object_with_fileno(loop, sock_pair, run_with_deadline):
    a, b = sock_pair

    class FileLike:
        def fileno(self):
            return a.fileno()

    got = []

    def on_read():
        got.append(a.recv(10))
        loop.stop()

    loop.add_reader(FileLike(), on_read)
    b.send(b'obj')
    assert run_with_deadline(loop)
    assert got == [b'obj']
    # Registered through an object, removable through the fd number.
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(FileLike()) is False


def test_readers_remove_return_values(loop, sock_pair):
    a, _ = sock_pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    loop.add_reader(a, print)
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False
    loop.add_writer(a, print)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False


def test_readers_removed_reader_not_called(loop, sock_pair, run_briefly):
    a, b = sock_pair
    calls = []
    loop.add_reader(a, calls.append, 'read')
    b.send(b'x')
    assert loop.remove_reader(a) is True
    run_briefly(loop, 2)
    assert calls == []


def test_readers_remove_from_callback(loop, sock_pair, run_briefly):
    a, b = sock_pair
    calls = []

    def on_read():
        calls.append('read')
        loop.remove_reader(a)

    loop.add_reader(a, on_read)
    b.send(b'x')
    run_briefly(loop, 4)
    assert calls == ['read']


def test_readers_replacing_reader(loop, sock_pair, run_briefly):
    a, b = sock_pair
    calls = []
    loop.add_reader(a, calls.append, 'old')
    loop.add_reader(a, calls.append, 'new')
    b.send(b'x')
    run_briefly(loop, 2)
    assert calls and set(calls) == {'new'}
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_readers_replace_reader_while_queued(loop, sock_pair, run_briefly):
    # In one iteration asyncio polls, then queues fd callbacks after the callbacks
    # already in the ready queue. A callback ahead of the queued reader replaces it:
    # the old handle is cancelled and must not run; the new one runs next iteration.
    a, b = sock_pair
    calls = []
    b.send(b'x')
    loop.add_reader(a, calls.append, 'old')
    loop.call_soon(loop.add_reader, a, calls.append, 'new')
    run_briefly(loop)
    assert calls == []
    run_briefly(loop)
    assert calls == ['new']
    assert loop.remove_reader(a) is True


def test_readers_remove_reader_while_queued(loop, sock_pair, run_briefly):
    a, b = sock_pair
    calls = []
    b.send(b'x')
    loop.add_reader(a, calls.append, 'reader')
    loop.add_writer(a, calls.append, 'writer')
    loop.call_soon(loop.remove_reader, a)
    loop.call_soon(loop.remove_writer, a)
    run_briefly(loop, 2)
    assert calls == []


def test_readers_writer_called_when_writable(loop, sock_pair, run_with_deadline):
    a, _ = sock_pair
    calls = []

    def on_write(arg):
        calls.append(arg)
        loop.stop()

    loop.add_writer(a.fileno(), on_write, 'w')
    assert run_with_deadline(loop)
    assert calls == ['w']
    assert loop.remove_writer(a.fileno()) is True


def test_readers_writer_level_triggered(loop, sock_pair, run_briefly):
    a, _ = sock_pair
    calls = []
    loop.add_writer(a, calls.append, 'w')
    run_briefly(loop, 3)
    assert len(calls) >= 2
    assert loop.remove_writer(a) is True


def test_readers_reader_and_writer_same_fd(loop, sock_pair, run_briefly):
    a, b = sock_pair
    calls = []
    loop.add_reader(a, calls.append, 'r')
    loop.add_writer(a, calls.append, 'w')
    b.send(b'x')
    run_briefly(loop, 2)
    assert 'r' in calls and 'w' in calls
    assert loop.remove_writer(a) is True
    calls.clear()
    run_briefly(loop, 2)
    assert calls and set(calls) == {'r'}
    assert loop.remove_reader(a) is True
    calls.clear()
    loop.add_writer(a, calls.append, 'w')
    run_briefly(loop, 2)
    assert calls and set(calls) == {'w'}
    assert loop.remove_writer(a) is True


def test_readers_replacing_writer(loop, sock_pair, run_briefly):
    a, _ = sock_pair
    calls = []
    loop.add_writer(a, calls.append, 'old')
    loop.add_writer(a, calls.append, 'new')
    run_briefly(loop, 2)
    assert calls and set(calls) == {'new'}
    assert loop.remove_writer(a) is True


def test_readers_eof_is_readable(loop, sock_pair, run_with_deadline):
    a, b = sock_pair
    got = []

    def on_read():
        got.append(a.recv(10))
        loop.stop()

    loop.add_reader(a, on_read)
    b.close()
    assert run_with_deadline(loop)
    assert got == [b'']
    loop.remove_reader(a)


def test_readers_pipe(loop, run_with_deadline):
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        got = []

        def on_read():
            got.append(os.read(r, 100))
            loop.stop()

        loop.add_reader(r, on_read)
        loop.call_soon(os.write, w, b'pipe')
        assert run_with_deadline(loop)
        assert got == [b'pipe']
        assert loop.remove_reader(r) is True
    finally:
        os.close(r)
        os.close(w)


def test_readers_many_fds(loop, run_with_deadline):
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        got = set()

        def on_read(i, sock):
            sock.recv(10)
            got.add(i)
            loop.remove_reader(sock)
            if len(got) == len(pairs):
                loop.stop()

        for i, (a, _) in enumerate(pairs):
            loop.add_reader(a, on_read, i, a)
        for _, b in pairs:
            b.send(b'x')
        assert run_with_deadline(loop)
        assert got == set(range(len(pairs)))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_readers_exception_goes_to_handler(loop, sock_pair, run_briefly):
    a, b = sock_pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad():
        a.recv(10)
        raise ValueError('reader failed')

    loop.add_reader(a, bad)
    b.send(b'x')
    run_briefly(loop, 2)
    loop.remove_reader(a)
    assert len(contexts) == 1
    assert isinstance(contexts[0]['exception'], ValueError)
    assert contexts[0]['message'].startswith('Exception in callback ')


def test_readers_remove_after_fd_closed(loop):
    a, b = socket.socketpair()
    try:
        loop.add_reader(a.fileno(), print)
        loop.add_writer(b.fileno(), print)
        fa, fb = a.fileno(), b.fileno()
    finally:
        a.close()
        b.close()
    # asyncio's selector forgets the fd without complaining.
    assert loop.remove_reader(fa) is True
    assert loop.remove_writer(fb) is True


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_readers_negative_fd(loop, method):
    with pytest.raises(ValueError, match='Invalid file descriptor: -1'):
        getattr(loop, method)(-1, print)


@pytest.mark.parametrize('method', ['add_reader', 'add_writer', 'remove_reader', 'remove_writer'])
@pytest.mark.parametrize('bad', [object(), 'abc', 1.5, None], ids=['object', 'str', 'float', 'None'])
def test_readers_invalid_file_object(loop, method, bad):
    args = (print,) if method.startswith('add') else ()
    with pytest.raises(ValueError, match='^Invalid file object: '):
        getattr(loop, method)(bad, *args)


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_readers_closed_fd(loop, method, closed_fd):
    with pytest.raises(OSError) as info:
        getattr(loop, method)(closed_fd, print)
    assert info.value.errno == 9  # EBADF
    assert getattr(loop, method.replace('add', 'remove'))(closed_fd) is False


@pytest.mark.parametrize('method', ['remove_reader', 'remove_writer'])
def test_readers_remove_unknown_fd(loop, method, closed_fd):
    assert getattr(loop, method)(closed_fd) is False


def test_readers_closed_loop(loop, sock_pair):
    a, _ = sock_pair
    loop.add_reader(a, print)
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.add_reader(a, print)
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.add_writer(a, print)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_readers_fd_reused_after_remove(loop, run_with_deadline):
    a, b = socket.socketpair()
    loop.add_reader(a, print)
    loop.remove_reader(a)
    fd = a.fileno()
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        got = []
        if fd not in (c.fileno(), d.fileno()):
            pytest.skip('the kernel did not hand out the same fd number again')
        sock, peer = (c, d) if c.fileno() == fd else (d, c)

        def on_read():
            got.append(sock.recv(10))
            loop.stop()

        loop.add_reader(fd, on_read)
        peer.send(b'reused')
        assert run_with_deadline(loop)
        assert got == [b'reused']
        assert loop.remove_reader(fd) is True
    finally:
        c.close()
        d.close()


def test_readers_regular_file_rejected(loop, tmp_path):
    path = tmp_path / 'file'
    path.write_bytes(b'data')
    with open(path, 'rb') as f:
        # epoll cannot watch regular files: EPERM, like asyncio's selector.
        with pytest.raises(PermissionError):
            loop.add_reader(f, print)
        assert loop.remove_reader(f) is False


def test_readers_reader_before_writer_same_fd(loop, sock_pair, run_briefly):
    a, b = sock_pair
    calls = []
    b.send(b'x')
    loop.add_writer(a, calls.append, 'writer')
    loop.add_reader(a, calls.append, 'reader')
    run_briefly(loop)
    assert calls == ['reader', 'writer']
    loop.remove_reader(a)
    loop.remove_writer(a)


def test_readers_remove_other_queued_reader(loop, run_briefly):
    # Two fds are reported ready in the same iteration; whichever callback runs first
    # removes both readers: the other, already queued, must not run.
    p1, p2 = socket.socketpair(), socket.socketpair()
    calls = []
    try:
        (a1, b1), (a2, b2) = p1, p2
        b1.send(b'x')
        b2.send(b'x')

        def on_read(name, me, other):
            calls.append(name)
            loop.remove_reader(other)
            loop.remove_reader(me)

        loop.add_reader(a1, on_read, 'a1', a1, a2)
        loop.add_reader(a2, on_read, 'a2', a2, a1)
        run_briefly(loop, 2)
    finally:
        for sock in (*p1, *p2):
            sock.close()
    assert calls in (['a1'], ['a2'])
