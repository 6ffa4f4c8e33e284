"""The stream transport API over TCP and Unix sockets: write/writelines/write_eof, close and
abort, reading pauses, write buffer limits, extra info, protocols (swapping them, the call
sequence, eof_received's return value, BufferedProtocol), isinstance checks, ResourceWarning."""

import asyncio
import contextvars
import gc
import logging
import os
import socket
from asyncio import selector_events

import pytest
from _net import DATA, EOF, LOST, MADE, PAUSE, RESUME, Recorder, capture_errors, run, stream_pair, wait_until

BIG = 8 * 1024 * 1024  # more than the kernel buffers of a socket pair hold


def test_transport_isinstance(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            for tr in (client.transport, server.transport):
                assert isinstance(tr, asyncio.Transport)
                assert isinstance(tr, asyncio.ReadTransport)
                assert isinstance(tr, asyncio.WriteTransport)
                assert isinstance(tr, asyncio.BaseTransport)

    run(loop, main())


def test_transport_write_accepts_bytes_like(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = client.transport
            tr.write(b'ab')
            tr.write(bytearray(b'cd'))
            tr.write(memoryview(b'xefx')[1:3])
            tr.write(b'')
            tr.writelines([b'g', bytearray(b'h'), memoryview(b'i')])
            tr.writelines([])
            assert await server.read(9) == b'abcdefghi'
            await asyncio.sleep(0.01)
            assert server.data == b'abcdefghi'

    run(loop, main())


def test_transport_write_rejects_str(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, _):
            with pytest.raises(TypeError, match="^data argument must be a bytes-like object, not 'str'$"):
                client.transport.write('text')
            with pytest.raises(TypeError, match="^data argument must be a bytes-like object, not 'int'$"):
                client.transport.write(1)

    run(loop, main())


def test_transport_small_write_is_sent_at_once(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            client.transport.write(b'x' * 1000)
            assert client.transport.get_write_buffer_size() == 0
            assert await server.read(1000) == b'x' * 1000

    run(loop, main())


def test_transport_write_eof_half_close(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path, server=lambda: Recorder(eof_result=True)) as (client, server):
            tr = client.transport
            assert tr.can_write_eof() is True
            tr.write(b'request')
            tr.write_eof()
            tr.write_eof()  # a second call is a no-op
            with pytest.raises(RuntimeError, match=r'^Cannot call write\(\) after write_eof\(\)$'):
                tr.write(b'more')
            await asyncio.wait_for(server.eof, 5)
            assert server.data == b'request'
            assert server.calls == [MADE, DATA, EOF]
            # eof_received() returned True: the server side stays open and can answer.
            assert not server.transport.is_closing()
            server.transport.write(b'response')
            assert await client.read(8) == b'response'
            assert not tr.is_closing()
            server.transport.close()
            await asyncio.wait_for(client.lost, 5)
            assert client.calls == [MADE, DATA, EOF, LOST]
            assert server.calls == [MADE, DATA, EOF, LOST]

    run(loop, main())


@pytest.mark.parametrize('result', [None, False, 0])
def test_transport_eof_received_falsy_closes(loop, kind, path, result):
    async def main():
        async with stream_pair(loop, kind, path, server=lambda: Recorder(eof_result=result)) as (client, server):
            client.transport.write_eof()
            assert await asyncio.wait_for(server.lost, 5) is None
            assert server.calls == [MADE, EOF, LOST]
            assert server.transport.is_closing()
            # ...and the client, whose peer closed, sees EOF in turn.
            await asyncio.wait_for(client.lost, 5)
            assert client.calls == [MADE, EOF, LOST]

    run(loop, main())


def test_transport_eof_received_error_is_fatal(loop, kind, path):
    contexts = capture_errors(loop)

    class Bad(Recorder):
        def eof_received(self):
            super().eof_received()
            raise ValueError('eof')

    async def main():
        async with stream_pair(loop, kind, path, server=Bad) as (client, server):
            client.transport.write_eof()
            exc = await asyncio.wait_for(server.lost, 5)
            assert isinstance(exc, ValueError)

    run(loop, main())
    assert len(contexts) == 1
    assert contexts[0]['message'] == 'Fatal error: protocol.eof_received() call failed.'
    assert isinstance(contexts[0]['exception'], ValueError)


def test_transport_close_flushes_then_connection_lost(loop, kind, path):
    payload = os.urandom(BIG)

    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = client.transport
            server.transport.pause_reading()
            tr.write(payload)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            assert tr.is_closing()
            assert not tr.is_reading()
            await asyncio.sleep(0.02)
            assert not client.lost.done()  # still flushing
            server.transport.resume_reading()
            assert await asyncio.wait_for(client.lost, 10) is None
            await asyncio.wait_for(server.lost, 10)
            assert server.data == payload
            assert server.calls == [MADE, DATA, EOF, LOST]
            # The 8 MiB write went over the high-water mark; the flush brought it back down.
            assert client.calls == [MADE, PAUSE, RESUME, LOST]

    run(loop, main())


def test_transport_close_is_asynchronous_and_idempotent(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = client.transport
            tr.close()
            tr.close()
            assert tr.is_closing()
            assert client.calls == [MADE]  # connection_lost() comes on a later iteration
            assert await asyncio.wait_for(client.lost, 5) is None
            await asyncio.sleep(0.01)
            assert client.calls == [MADE, LOST]
            assert tr.get_extra_info('socket') is not None  # extra info survives close
            await asyncio.wait_for(server.lost, 5)

    run(loop, main())


def test_transport_abort_drops_buffer(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = client.transport
            server.transport.pause_reading()
            tr.write(b'x' * BIG)
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing()
            assert tr.get_write_buffer_size() == 0
            assert client.calls == [MADE, PAUSE]
            assert await asyncio.wait_for(client.lost, 5) is None
            # Dropping the buffer does not call resume_writing().
            assert client.calls == [MADE, PAUSE, LOST]
            server.transport.resume_reading()
            await asyncio.wait_for(server.lost, 5)
            assert len(server.data) < BIG

    run(loop, main())


def test_transport_abort_after_close(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, _):
            client.transport.close()
            client.transport.abort()
            assert await asyncio.wait_for(client.lost, 5) is None
            await asyncio.sleep(0.01)
            assert client.calls == [MADE, LOST]

    run(loop, main())


def test_transport_pause_resume_reading(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = server.transport
            assert tr.is_reading()
            tr.pause_reading()
            assert not tr.is_reading()
            tr.pause_reading()  # idempotent
            client.transport.write(b'held back')
            await asyncio.sleep(0.05)
            assert server.data == b''
            tr.resume_reading()
            assert tr.is_reading()
            tr.resume_reading()  # idempotent
            assert await server.read(9) == b'held back'
            tr.close()
            assert not tr.is_reading()
            tr.pause_reading()  # no-ops on a closing transport
            tr.resume_reading()
            assert not tr.is_reading()

    run(loop, main())


def test_transport_pause_reading_holds_eof(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            server.transport.pause_reading()
            client.transport.write(b'last')
            client.transport.write_eof()
            await asyncio.sleep(0.05)
            assert server.calls == [MADE]
            server.transport.resume_reading()
            await asyncio.wait_for(server.lost, 5)
            assert server.calls == [MADE, DATA, EOF, LOST]
            assert server.data == b'last'

    run(loop, main())


def test_transport_write_buffer_limits(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, _):
            tr = client.transport
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            assert tr.get_write_buffer_size() == 0
            tr.set_write_buffer_limits(high=1000)
            assert tr.get_write_buffer_limits() == (250, 1000)
            tr.set_write_buffer_limits(low=100)
            assert tr.get_write_buffer_limits() == (100, 400)
            tr.set_write_buffer_limits(high=10, low=10)
            assert tr.get_write_buffer_limits() == (10, 10)
            tr.set_write_buffer_limits(high=0)
            assert tr.get_write_buffer_limits() == (0, 0)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            with pytest.raises(ValueError, match=r'^high \(1\) must be >= low \(2\) must be >= 0$'):
                tr.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError, match=r'^high \(10\) must be >= low \(-1\) must be >= 0$'):
                tr.set_write_buffer_limits(high=10, low=-1)
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)

    run(loop, main())


def test_transport_get_extra_info_defaults(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, _):
            tr = client.transport
            assert tr.get_extra_info('no-such-key') is None
            assert tr.get_extra_info('no-such-key', 'dflt') == 'dflt'
            assert tr.get_extra_info('peercert') is None
            assert tr.get_extra_info('sslcontext') is None
            sock = tr.get_extra_info('socket')
            assert sock.fileno() >= 0
            assert sock.getsockname() == tr.get_extra_info('sockname')
            assert sock.getpeername() == tr.get_extra_info('peername')
            assert sock.gettimeout() == 0

    run(loop, main())


def test_transport_socket_in_use_by_transport(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, _):
            fd = client.transport.get_extra_info('socket').fileno()
            with pytest.raises(RuntimeError, match=f'^File descriptor {fd} is used by transport '):
                loop.add_reader(fd, lambda: None)
            with pytest.raises(RuntimeError, match=f'^File descriptor {fd} is used by transport '):
                loop.add_writer(fd, lambda: None)

    run(loop, main())


def test_transport_set_protocol(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = server.transport
            assert tr.get_protocol() is server
            client.transport.write(b'one')
            assert await server.read(3) == b'one'
            other = Recorder()
            tr.set_protocol(other)
            assert tr.get_protocol() is other
            client.transport.write(b'two')
            await wait_until(lambda: other.data == b'two')
            assert server.data == b'one'
            assert other.calls == [DATA]  # set_protocol() does not call connection_made()
            client.transport.close()
            await asyncio.wait_for(other.lost, 5)
            assert other.calls == [DATA, EOF, LOST]
            assert server.calls == [MADE, DATA]
            server.lost.set_result(None)  # for the pair's cleanup

    run(loop, main())


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, size=7):
        loop = asyncio.get_running_loop()
        self.size = size
        self.calls = []
        self.data = bytearray()
        self.hints = []
        self.transport = None
        self.buf = None
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.calls.append(MADE)
        self.transport = transport

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        self.buf = bytearray(self.size)
        return self.buf

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= self.size
        if not self.calls or self.calls[-1] != 'updated':
            self.calls.append('updated')
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.calls.append(EOF)

    def connection_lost(self, exc):
        self.calls.append(LOST)
        self.lost.set_result(exc)


def test_transport_buffered_protocol(loop, kind, path):
    payload = os.urandom(100_000)

    async def main():
        async with stream_pair(loop, kind, path, server=Buffered) as (client, server):
            client.transport.write(payload)
            client.transport.write_eof()
            assert await asyncio.wait_for(server.lost, 5) is None
            assert bytes(server.data) == payload
            assert server.calls == [MADE, 'updated', EOF, LOST]
            assert all(isinstance(h, int) for h in server.hints)

    run(loop, main())


def test_transport_buffered_protocol_memoryview_buffer(loop, kind, path):
    class ViewBuffered(Buffered):
        def get_buffer(self, sizehint):
            self.buf = bytearray(self.size)
            return memoryview(self.buf)

    async def main():
        async with stream_pair(loop, kind, path, server=lambda: ViewBuffered(size=3)) as (client, server):
            client.transport.write(b'0123456789')
            await wait_until(lambda: len(server.data) == 10)
            assert server.data == b'0123456789'

    run(loop, main())


def test_transport_buffered_protocol_empty_buffer_is_fatal(loop, kind, path):
    contexts = capture_errors(loop)

    async def main():
        async with stream_pair(loop, kind, path, server=lambda: Buffered(size=0)) as (client, server):
            client.transport.write(b'data')
            exc = await asyncio.wait_for(server.lost, 5)
            assert isinstance(exc, RuntimeError)
            assert str(exc) == 'get_buffer() returned an empty buffer'
            await asyncio.wait_for(client.lost, 5)

    run(loop, main())
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx['message'] == 'Fatal error: protocol.get_buffer() call failed.'
    assert isinstance(ctx['exception'], RuntimeError)
    assert set(ctx) >= {'message', 'exception', 'transport', 'protocol'}


def test_transport_buffered_protocol_set_protocol_switches_mode(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            buffered = Buffered(size=4)
            server.transport.set_protocol(buffered)
            client.transport.write(b'switched')
            await wait_until(lambda: len(buffered.data) == 8)
            assert buffered.data == b'switched'
            assert server.data == b''
            client.transport.close()
            await asyncio.wait_for(buffered.lost, 5)
            server.lost.set_result(None)

    run(loop, main())


def test_transport_unclosed_resource_warning(loop):
    a, b = socket.socketpair()

    async def main():
        tr, _ = await loop.connect_accepted_socket(Recorder, a)
        tr.pause_reading()  # nothing in the loop refers to a transport that is not reading
        return tr.get_extra_info('socket').fileno()

    fd = run(loop, main())
    with pytest.warns(ResourceWarning, match='unclosed transport'):
        gc.collect()
    # The collected transport closed its socket.
    assert a.fileno() == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    b.close()


def test_transport_write_in_connection_made(loop, kind, path):
    class Greeter(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b'hello from connection_made')

    async def main():
        async with stream_pair(loop, kind, path, server=Greeter) as (client, _):
            assert await client.read(26) == b'hello from connection_made'

    run(loop, main())


def test_transport_pause_reading_in_connection_made(loop, kind, path):
    # Reading starts after connection_made(); pausing there must hold it off.
    class Paused(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        async with stream_pair(loop, kind, path, server=Paused) as (client, server):
            assert not server.transport.is_reading()
            client.transport.write(b'held')
            await asyncio.sleep(0.1)
            assert server.data == b''
            server.transport.resume_reading()
            assert await server.read(4) == b'held'

    run(loop, main())


def test_transport_close_in_connection_made(loop, kind, path):
    class Refuser(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b'bye')
            transport.close()

    async def main():
        async with stream_pair(loop, kind, path, server=Refuser) as (client, server):
            assert await asyncio.wait_for(server.lost, 5) is None
            assert server.calls == [MADE, LOST]
            assert await asyncio.wait_for(client.lost, 5) is None
            assert client.data == b'bye'
            assert client.calls == [MADE, DATA, EOF, LOST]

    run(loop, main())


def test_transport_pause_reading_inside_data_received(loop, kind, path):
    class Pauser(Recorder):
        def __init__(self):
            super().__init__()
            self.deliveries = 0

        def data_received(self, data):
            super().data_received(data)
            self.deliveries += 1
            self.transport.pause_reading()

    async def main():
        async with stream_pair(loop, kind, path, server=Pauser) as (client, server):
            client.transport.write(b'first')
            await wait_until(lambda: server.deliveries == 1)
            for _ in range(20):
                client.transport.write(b'x' * 1000)
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)
            assert server.deliveries == 1
            total = len(server.data)
            server.transport.resume_reading()
            await wait_until(lambda: server.deliveries == 2)
            await asyncio.sleep(0.02)
            assert server.deliveries == 2  # paused again at once
            assert len(server.data) > total

    run(loop, main())


@pytest.mark.parametrize('how', ['close', 'abort'])
def test_transport_close_inside_data_received(loop, kind, path, how):
    class Closer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            getattr(self.transport, how)()

    async def main():
        async with stream_pair(loop, kind, path, server=Closer) as (client, server):
            client.transport.write(b'a' * 10)
            assert await asyncio.wait_for(server.lost, 5) is None
            client.transport.write(b'b' * 10)
            await asyncio.sleep(0.02)
            assert server.calls == [MADE, DATA, LOST]
            assert server.data == b'a' * 10

    run(loop, main())


def test_transport_write_eof_after_buffered_data(loop, kind, path):
    payload = os.urandom(BIG)

    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = client.transport
            server.transport.pause_reading()
            tr.write(payload)
            assert tr.get_write_buffer_size() > 0
            tr.write_eof()
            assert not tr.is_closing()
            with pytest.raises(RuntimeError, match=r'^Cannot call write\(\) after write_eof\(\)$'):
                tr.write(b'x')
            server.transport.resume_reading()
            await asyncio.wait_for(server.lost, 10)
            assert server.data == payload
            assert server.calls == [MADE, DATA, EOF, LOST]
            # The server closed after its EOF: the client, still reading, sees EOF too.
            assert await asyncio.wait_for(client.lost, 5) is None

    run(loop, main())


def test_transport_connection_lost_error_still_closes_socket(loop, kind, path):
    contexts = capture_errors(loop)

    class BadLost(Recorder):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise ValueError('lost')

    async def main():
        async with stream_pair(loop, kind, path, client=BadLost) as (client, _):
            sock = client.transport.get_extra_info('socket')
            client.transport.close()
            await asyncio.wait_for(client.lost, 5)
            await wait_until(lambda: contexts)
            assert sock.fileno() == -1

    run(loop, main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]['exception'], ValueError)


class BadUpdate(Buffered):
    def buffer_updated(self, nbytes):
        raise ValueError('updated')


class BadGet(Buffered):
    def get_buffer(self, sizehint):
        raise ValueError('get')


class ReadOnly(Buffered):
    def get_buffer(self, sizehint):
        return b'read-only buffer'


@pytest.mark.parametrize(
    ('protocol', 'exc_type', 'message'),
    [
        (BadUpdate, ValueError, 'Fatal error: protocol.buffer_updated() call failed.'),
        (BadGet, ValueError, 'Fatal error: protocol.get_buffer() call failed.'),
        (ReadOnly, TypeError, 'Fatal read error on socket transport'),
    ],
    ids=['buffer_updated-raises', 'get_buffer-raises', 'readonly-buffer'],
)
def test_transport_buffered_protocol_failure_is_fatal(loop, kind, path, protocol, exc_type, message):
    contexts = capture_errors(loop)

    async def main():
        async with stream_pair(loop, kind, path, server=protocol) as (client, server):
            client.transport.write(b'data')
            exc = await asyncio.wait_for(server.lost, 5)
            assert isinstance(exc, exc_type)

    run(loop, main())
    assert [c['message'] for c in contexts] == [message]


@pytest.mark.parametrize('exc_type', [KeyboardInterrupt, SystemExit])
def test_transport_base_exception_in_data_received_propagates(loop, kind, path, exc_type):
    class Interrupting(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise exc_type()

    state = {}

    async def setup():
        cm = stream_pair(loop, kind, path, server=Interrupting)
        state['cm'] = cm
        state['pair'] = await cm.__aenter__()

    async def wait_forever():
        client, _ = state['pair']
        client.transport.write(b'interrupt')
        await asyncio.sleep(5)

    run(loop, setup())
    waiting = loop.create_task(wait_forever())
    with pytest.raises(exc_type):
        loop.run_until_complete(waiting)
    # The loop is usable afterwards; clean up.
    _, server = state['pair']
    assert server.data == b'interrupt'

    async def teardown():
        await state['cm'].__aexit__(None, None, None)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    run(loop, teardown())


def test_transport_protocol_methods_looked_up_per_call(loop, kind, path):
    # asyncio's transports call self._protocol.data_received(...) each time: a method
    # replaced on the protocol instance (e.g. by unittest.mock.patch.object) takes effect.
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            seen = []
            server.data_received = lambda data: seen.append(('patched', data))
            server.eof_received = lambda: seen.append(('patched eof', None))
            client.transport.write(b'to the patch')
            client.transport.write_eof()
            await wait_until(lambda: len(seen) == 2, timeout=2)
            assert seen == [('patched', b'to the patch'), ('patched eof', None)]
            assert server.data == b''

    run(loop, main())


def test_transport_writelines_takes_any_iterable(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            client.transport.writelines(bytes([c]) for c in b'generated')
            client.transport.writelines((b'-', b'tuple'))
            assert await server.read(15) == b'generated-tuple'
            with pytest.raises(TypeError):
                client.transport.writelines(['text'])

    run(loop, main())


def test_transport_checks_order_after_write_eof(loop, kind, path):
    # write() checks the type, then write_eof(), then emptiness. writelines() is a
    # write() of the joined items up to 3.11; since 3.12 the stdlib transport has its
    # own, which says so.
    own_writelines = 'writelines' in vars(selector_events._SelectorSocketTransport)
    method = 'writelines' if own_writelines else 'write'

    async def main():
        async with stream_pair(loop, kind, path) as (client, _):
            tr = client.transport
            tr.write_eof()
            with pytest.raises(TypeError):
                tr.write('text')
            with pytest.raises(RuntimeError, match=r'^Cannot call write\(\) after write_eof\(\)$'):
                tr.write(b'')
            with pytest.raises(RuntimeError, match=rf'^Cannot call {method}\(\) after write_eof\(\)$'):
                tr.writelines([])

    run(loop, main())


def test_transport_empty_writes_after_close_are_not_counted(loop, kind, path, caplog):
    async def main():
        async with stream_pair(loop, kind, path) as (client, _):
            tr = client.transport
            tr.close()
            with pytest.raises(TypeError):
                tr.write('still type-checked')
            with caplog.at_level(logging.WARNING, logger='asyncio'):
                for _ in range(10):
                    tr.write(b'')
                for _ in range(4):
                    tr.write(b'x')
                assert not [r for r in caplog.records if r.name == 'asyncio']
                tr.write(b'x')
            await asyncio.wait_for(client.lost, 5)

    run(loop, main())
    assert [r.getMessage() for r in caplog.records if r.name == 'asyncio'] == ['socket.send() raised exception.']


def test_transport_callbacks_run_in_the_transport_context(loop):
    # asyncio registers the reader with a copy of the context current when the
    # transport was made; data_received runs in it, one context for the whole
    # connection (a value it sets is there next time), isolated from the caller's.
    var = contextvars.ContextVar('var', default='unset')
    seen = []

    class Proto(asyncio.Protocol):
        def data_received(self, data):
            seen.append(var.get())
            var.set('set in data_received')

    async def main():
        var.set('set before connecting')
        a, b = socket.socketpair()
        try:
            tr, _ = await loop.connect_accepted_socket(Proto, a)
            var.set('set after connecting')
            for _ in range(2):
                b.send(b'x')
                n = len(seen)
                await wait_until(lambda n=n: len(seen) > n)
            tr.close()
        finally:
            b.close()
        assert var.get() == 'set after connecting'

    run(loop, main())
    assert seen == ['set before connecting', 'set in data_received']
