"""connect_read_pipe/connect_write_pipe on os.pipe, FIFOs, a pty, /dev/null and sockets:
EOF, broken pipes, flow control, close/abort, the write-after-close warning."""

import asyncio
import errno
import logging
import os
import re
import socket
import tty

import pytest
from _net import DATA, EOF, LOST, MADE, PAUSE, RESUME, Recorder, capture_errors, run, wait_until


@pytest.fixture
def pipe():
    r, w = os.pipe()
    rf = open(r, 'rb', buffering=0)  # noqa: SIM115 - the transports own and close them
    wf = open(w, 'wb', buffering=0)  # noqa: SIM115
    yield rf, wf
    rf.close()
    wf.close()


def drain(fd: int) -> bytes:
    """Read what a non-blocking fd holds now."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b''.join(chunks)


def test_pipes_read_data_then_eof(loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_read_pipe(Recorder, rf)
        assert isinstance(tr, asyncio.ReadTransport)
        assert tr.get_extra_info('pipe') is rf
        assert proto.calls == [MADE]
        wf.write(b'through ')
        wf.write(b'the pipe')
        assert await proto.read(16) == b'through the pipe'
        wf.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.calls == [MADE, DATA, EOF, LOST]
        assert rf.closed  # the transport closes the pipe it owns

    run(loop, main())


def test_pipes_read_eof_received_result_ignored(loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_read_pipe(lambda: Recorder(eof_result=True), rf)
        wf.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.calls == [MADE, EOF, LOST]
        assert tr.is_closing()

    run(loop, main())


def test_pipes_read_pause_resume_close(loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_read_pipe(Recorder, rf)
        assert tr.is_reading()
        tr.pause_reading()
        tr.pause_reading()
        assert not tr.is_reading()
        wf.write(b'later')
        await asyncio.sleep(0.03)
        assert proto.data == b''
        tr.resume_reading()
        assert tr.is_reading()
        assert await proto.read(5) == b'later'
        tr.close()
        assert tr.is_closing()
        assert not tr.is_reading()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.calls == [MADE, DATA, LOST]

    run(loop, main())


def test_pipes_write_basics(loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        assert isinstance(tr, asyncio.WriteTransport)
        assert tr.get_extra_info('pipe') is wf
        assert tr.can_write_eof() is True
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        tr.write(b'one ')
        tr.write(bytearray(b'two '))
        tr.writelines([b'three', memoryview(b' four')])
        assert tr.get_write_buffer_size() == 0
        os.set_blocking(rf.fileno(), False)
        assert drain(rf.fileno()) == b'one two three four'
        tr.write_eof()
        assert tr.is_closing()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.calls == [MADE, LOST]
        assert wf.closed
        assert rf.read() == b''  # EOF for the reader

    run(loop, main())


def test_pipes_write_close_flushes(loop, pipe):
    rf, wf = pipe
    payload = os.urandom(1024 * 1024)

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 0
        tr.close()
        assert tr.is_closing()
        await asyncio.sleep(0.01)
        assert not proto.lost.done()
        _, rproto = await loop.connect_read_pipe(Recorder, rf)
        assert await asyncio.wait_for(proto.lost, 5) is None
        await asyncio.wait_for(rproto.lost, 5)
        assert rproto.data == payload
        assert proto.calls == [MADE, PAUSE, RESUME, LOST]

    run(loop, main())


def test_pipes_write_abort_drops_buffer(loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        tr.write(b'x' * (1024 * 1024))
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        assert tr.get_write_buffer_size() == 0
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.calls == [MADE, PAUSE, LOST]
        got = rf.read()
        assert len(got) < 1024 * 1024

    run(loop, main())


def test_pipes_write_to_closed_reader_is_broken_pipe(loop, pipe):
    rf, wf = pipe
    contexts = capture_errors(loop)

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        rf.close()
        tr.write(b'nobody reads this')
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, BrokenPipeError)
        assert proto.calls == [MADE, LOST]

    run(loop, main())
    assert contexts == []  # OSErrors are not reported to the exception handler


def test_pipes_reader_closes_while_buffered_is_broken_pipe(loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        tr.write(b'x' * (256 * 1024))
        assert tr.get_write_buffer_size() > 0
        rf.close()
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, BrokenPipeError)

    run(loop, main())


def test_pipes_reader_closes_while_idle(loop, pipe):
    # A write pipe learns that its reader went away even without writing: connection_lost(None).
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        rf.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert tr.is_closing()

    run(loop, main())


def test_pipes_write_flow_control(loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        tr.write(b'x' * (200 * 1024))  # the pipe holds 64 KiB
        assert proto.calls == [MADE, PAUSE]
        size = tr.get_write_buffer_size()
        assert size > 64 * 1024
        _, rproto = await loop.connect_read_pipe(Recorder, rf)
        await wait_until(lambda: RESUME in proto.calls)
        assert proto.calls == [MADE, PAUSE, RESUME]
        assert tr.get_write_buffer_size() <= 16 * 1024
        assert len(await rproto.read(200 * 1024)) == 200 * 1024
        tr.close()
        await asyncio.wait_for(rproto.lost, 5)
        await asyncio.wait_for(proto.lost, 5)

    run(loop, main())


def test_pipes_write_after_close_warns_after_threshold(loop, pipe, caplog):
    _, wf = pipe

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, wf)
        tr.close()
        await asyncio.wait_for(proto.lost, 5)
        with caplog.at_level(logging.WARNING, logger='asyncio'):
            for _ in range(5):
                tr.write(b'dropped')
            assert not [r for r in caplog.records if r.name == 'asyncio']
            tr.write(b'dropped')

    run(loop, main())
    records = [r for r in caplog.records if r.name == 'asyncio']
    assert [r.getMessage() for r in records] == ['pipe closed by peer or os.write(pipe, data) raised exception.']


def test_pipes_fifo(loop, tmp_dir):
    path = os.path.join(tmp_dir, 'fifo')
    os.mkfifo(path)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    rf = open(rfd, 'rb', buffering=0)  # noqa: SIM115
    wf = open(wfd, 'wb', buffering=0)  # noqa: SIM115

    async def main():
        _, rproto = await loop.connect_read_pipe(Recorder, rf)
        wtr, wproto = await loop.connect_write_pipe(Recorder, wf)
        wtr.write(b'fifo data')
        assert await rproto.read(9) == b'fifo data'
        wtr.close()
        assert await asyncio.wait_for(wproto.lost, 5) is None
        assert await asyncio.wait_for(rproto.lost, 5) is None
        assert rproto.calls == [MADE, DATA, EOF, LOST]

    try:
        run(loop, main())
    finally:
        rf.close()
        wf.close()


def test_pipes_pty_eio_ends_the_read_transport(loop):
    master, slave = os.openpty()
    tty.setraw(slave)
    mf = open(master, 'rb', buffering=0)  # noqa: SIM115
    contexts = capture_errors(loop)

    async def main():
        _, proto = await loop.connect_read_pipe(Recorder, mf)
        os.write(slave, b'tty bytes')
        assert await proto.read(9) == b'tty bytes'
        os.close(slave)
        exc = await asyncio.wait_for(proto.lost, 5)
        # Linux reports a hung-up pty as EIO: connection_lost() gets it, the handler does not.
        assert isinstance(exc, OSError)
        assert exc.errno == errno.EIO
        assert proto.calls == [MADE, DATA, LOST]

    try:
        run(loop, main())
    finally:
        mf.close()
    assert contexts == []


def test_pipes_pty_write(loop):
    master, slave = os.openpty()
    tty.setraw(slave)
    mf = open(master, 'wb', buffering=0)  # noqa: SIM115

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, mf)
        tr.write(b'to the tty')
        await wait_until(lambda: _readable(slave))
        assert os.read(slave, 100) == b'to the tty'
        tr.close()
        assert await asyncio.wait_for(proto.lost, 5) is None

    try:
        run(loop, main())
    finally:
        mf.close()
        os.close(slave)


def _readable(fd):
    import select

    return bool(select.select([fd], [], [], 0)[0])


def test_pipes_write_dev_null(loop):
    f = open('/dev/null', 'wb', buffering=0)  # noqa: SIM115

    async def main():
        tr, proto = await loop.connect_write_pipe(Recorder, f)
        tr.write(b'x' * (1024 * 1024))
        assert tr.get_write_buffer_size() == 0
        assert proto.calls == [MADE]
        tr.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert f.closed

    try:
        run(loop, main())
    finally:
        f.close()


def test_pipes_regular_file_rejected(loop, tmp_dir):
    path = os.path.join(tmp_dir, 'regular')
    with open(path, 'wb') as f:
        f.write(b'data')

    async def main(rf, af):
        with pytest.raises(ValueError, match=r'^Pipe transport is for pipes/sockets only\.$'):
            await loop.connect_read_pipe(Recorder, rf)
        with pytest.raises(ValueError, match=r'^Pipe transport is only for pipes, sockets and character devices$'):
            await loop.connect_write_pipe(Recorder, af)

    with open(path, 'rb') as rf, open(path, 'ab') as af:
        run(loop, main(rf, af))


def test_pipes_on_a_socket(loop):
    a, b = socket.socketpair()
    af = a.makefile('rwb', buffering=0)
    a.close()  # the file object keeps the socket open
    bf = b.makefile('rwb', buffering=0)
    b.close()

    async def main():
        wtr, wproto = await loop.connect_write_pipe(Recorder, af)
        rtr, rproto = await loop.connect_read_pipe(Recorder, bf)
        wtr.write(b'socket pipe')
        assert await rproto.read(11) == b'socket pipe'
        # Closing the read side: the write side sees its peer go.
        rtr.close()
        assert await asyncio.wait_for(rproto.lost, 5) is None
        assert await asyncio.wait_for(wproto.lost, 5) is None

    try:
        run(loop, main())
    finally:
        af.close()
        bf.close()


def test_pipes_read_data_received_error_reaches_handler_and_reading_goes_on(loop, pipe):
    # asyncio's read pipe does not catch it: the handler gets it as the callback's
    # exception, and the transport stays open.
    rf, wf = pipe
    errors = capture_errors(loop)

    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if data.startswith(b'boom'):
                raise ZeroDivisionError('in data_received')

    async def main():
        tr, proto = await loop.connect_read_pipe(Failing, rf)
        wf.write(b'boom')
        await wait_until(lambda: errors)
        assert not tr.is_closing()
        wf.write(b'more')
        assert await proto.read(8) == b'boommore'
        tr.close()
        await asyncio.wait_for(proto.lost, 5)

    run(loop, main())
    assert len(errors) == 1
    assert isinstance(errors[0]['exception'], ZeroDivisionError)
    assert errors[0]['message'].startswith('Exception in callback')


def test_pipes_repr(loop, pipe):
    rf, wf = pipe

    async def main():
        rt, rproto = await loop.connect_read_pipe(Recorder, rf)
        wt, wproto = await loop.connect_write_pipe(Recorder, wf)
        assert re.fullmatch(r'<_UnixReadPipeTransport fd=\d+ polling>', repr(rt)), repr(rt)
        assert re.fullmatch(r'<_UnixWritePipeTransport fd=\d+ idle bufsize=0>', repr(wt)), repr(wt)
        rt.close()
        wt.close()
        await asyncio.wait_for(rproto.lost, 5)
        await asyncio.wait_for(wproto.lost, 5)
        assert re.fullmatch(r'<_UnixReadPipeTransport closed fd=\d+ closed>', repr(rt)), repr(rt)

    run(loop, main())


def test_pipes_transport_methods_can_be_replaced_on_the_instance(loop, pipe):
    # asyncio's pipe transports are plain Python objects; CPython's subprocess tests
    # (and users' tests) replace methods on them.
    rf, _wf = pipe

    async def main():
        tr, proto = await loop.connect_read_pipe(Recorder, rf)
        calls = []
        tr.pause_reading = lambda: calls.append('pause')
        tr.pause_reading()
        assert calls == ['pause']
        assert tr.is_reading()
        tr.close()
        await asyncio.wait_for(proto.lost, 5)

    run(loop, main())
