"""Write flow control on stream transports: pause_writing() above the high-water mark,
resume_writing() at or below the low-water mark, in order and once per crossing."""

import asyncio
import hashlib
import os

from _net import MADE, PAUSE, RESUME, Recorder, capture_errors, run, stream_pair, wait_until

BIG = 8 * 1024 * 1024


class Flow(Recorder):
    """Records the write buffer size seen by each pause_writing()/resume_writing()."""

    def __init__(self):
        super().__init__()
        self.crossings = []
        self.resumed = None

    def pause_writing(self):
        super().pause_writing()
        self.crossings.append((PAUSE, self.transport.get_write_buffer_size()))
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        super().resume_writing()
        self.crossings.append((RESUME, self.transport.get_write_buffer_size()))
        self.resumed.set_result(None)


class Sink(Recorder):
    """Counts and hashes what it receives instead of keeping it."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.digest = hashlib.sha256()

    def data_received(self, data):
        self._note('data')
        self.count += len(data)
        self.digest.update(data)


def test_flow_pause_in_write_resume_after_drain(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path, client=Flow) as (client, server):
            tr = client.transport
            server.transport.pause_reading()
            tr.write(b'x' * BIG)
            # pause_writing() is called from inside write(), once.
            assert client.calls == [MADE, PAUSE]
            assert client.crossings[0][1] > 64 * 1024
            tr.write(b'y' * 1024)
            tr.write(b'z' * 1024)
            assert client.calls == [MADE, PAUSE]
            server.transport.resume_reading()
            await asyncio.wait_for(client.resumed, 10)
            assert client.calls == [MADE, PAUSE, RESUME]
            assert client.crossings[1][1] <= 16 * 1024
            assert await server.read(BIG + 2048, timeout=10) == b'x' * BIG + b'y' * 1024 + b'z' * 1024
            await wait_until(lambda: tr.get_write_buffer_size() == 0)
            assert client.calls == [MADE, PAUSE, RESUME]

    run(loop, main())


def test_flow_exact_high_water_boundary(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path, client=Flow) as (client, server):
            tr = client.transport
            server.transport.pause_reading()
            tr.set_write_buffer_limits(high=1 << 40)
            tr.write(b'x' * BIG)  # fills the kernel buffers; the rest stays in the transport
            await asyncio.sleep(0.02)
            size = tr.get_write_buffer_size()
            assert size > 0
            tr.set_write_buffer_limits(high=size + 10, low=0)
            assert client.calls == [MADE]
            tr.write(b'y' * 10)
            assert tr.get_write_buffer_size() == size + 10
            assert client.calls == [MADE]  # equal to the high-water mark: not above it
            tr.write(b'y')
            assert client.calls == [MADE, PAUSE]
            assert client.crossings == [(PAUSE, size + 11)]

    run(loop, main())


def test_flow_lowering_limits_pauses_at_once(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path, client=Flow) as (client, server):
            tr = client.transport
            server.transport.pause_reading()
            tr.set_write_buffer_limits(high=1 << 40)
            tr.write(b'x' * BIG)
            size = tr.get_write_buffer_size()
            assert client.calls == [MADE]
            tr.set_write_buffer_limits(high=size - 1)
            assert client.calls == [MADE, PAUSE]
            # Raising the limits again does not resume: only the buffer draining does.
            tr.set_write_buffer_limits(high=1 << 40)
            await asyncio.sleep(0.01)
            assert client.calls == [MADE, PAUSE]
            server.transport.resume_reading()
            await asyncio.wait_for(client.resumed, 10)
            assert client.calls == [MADE, PAUSE, RESUME]

    run(loop, main())


def test_flow_zero_limits(loop, kind, path):
    async def main():
        async with stream_pair(loop, kind, path, client=Flow) as (client, server):
            tr = client.transport
            tr.set_write_buffer_limits(high=0)
            assert tr.get_write_buffer_limits() == (0, 0)
            server.transport.pause_reading()
            tr.write(b'x' * BIG)
            assert client.calls == [MADE, PAUSE]
            server.transport.resume_reading()
            await asyncio.wait_for(client.resumed, 10)
            assert client.crossings[-1] == (RESUME, 0)

    run(loop, main())


def test_flow_many_crossings_in_order(loop, kind, path):
    total = 16 * 1024 * 1024
    chunk = os.urandom(64 * 1024)
    high, low = 256 * 1024, 64 * 1024

    async def main():
        async with stream_pair(loop, kind, path, client=Flow, server=Sink) as (client, server):
            tr = client.transport
            tr.set_write_buffer_limits(high=high, low=low)
            sent = 0
            expected = hashlib.sha256()
            while sent < total:
                if client.crossings and client.crossings[-1][0] == PAUSE:
                    await asyncio.wait_for(client.resumed, 10)
                tr.write(chunk)
                expected.update(chunk)
                sent += len(chunk)
            await wait_until(lambda: server.count == total, timeout=20)
            assert server.digest.hexdigest() == expected.hexdigest()
            kinds = [k for k, _ in client.crossings]
            assert kinds, 'the writer never got ahead of the reader'
            assert kinds == [PAUSE, RESUME] * (len(kinds) // 2)
            for k, size in client.crossings:
                if k == PAUSE:
                    assert size > high
                else:
                    assert size <= low

    run(loop, main(), timeout=30)


def test_flow_pause_writing_error_reaches_handler(loop, kind, path):
    contexts = capture_errors(loop)

    class BadPause(Recorder):
        def pause_writing(self):
            raise ValueError('pause')

    async def main():
        async with stream_pair(loop, kind, path, client=BadPause) as (client, server):
            server.transport.pause_reading()
            client.transport.write(b'x' * BIG)
            assert len(contexts) == 1
            # The transport goes on working.
            assert not client.transport.is_closing()
            server.transport.resume_reading()
            assert len(await server.read(BIG, timeout=10)) == BIG

    run(loop, main())
    assert contexts[0]['message'] == 'protocol.pause_writing() failed'
    assert isinstance(contexts[0]['exception'], ValueError)
    assert contexts[0]['transport'] is not None
    assert contexts[0]['protocol'] is not None


def test_flow_resume_writing_error_reaches_handler(loop, kind, path):
    contexts = capture_errors(loop)

    class BadResume(Recorder):
        def resume_writing(self):
            raise ValueError('resume')

    async def main():
        async with stream_pair(loop, kind, path, client=BadResume) as (client, server):
            client.transport.write(b'x' * BIG)
            assert len(await server.read(BIG, timeout=10)) == BIG
            await wait_until(lambda: contexts)

    run(loop, main())
    assert contexts[0]['message'] == 'protocol.resume_writing() failed'
    assert isinstance(contexts[0]['exception'], ValueError)
