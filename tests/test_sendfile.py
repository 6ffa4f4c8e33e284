"""loop.sendfile() on transports and loop.sock_sendfile() on sockets: whole files, offset and
count, file positions, fallback=True/False, non-regular files, argument checks."""

import asyncio
import io
import os
import socket

import pytest
from _net import DatagramRecorder, Recorder, run, stream_pair, wait_until

SIZE = 1024 * 1024 + 123


@pytest.fixture(scope='module')
def content():
    return os.urandom(SIZE)


@pytest.fixture
def data_file(tmp_dir, content):
    path = os.path.join(tmp_dir, 'data.bin')
    with open(path, 'wb') as f:
        f.write(content)
    with open(path, 'rb') as f:
        yield f


def finish(loop):
    loop.run_until_complete(loop.shutdown_default_executor())


def test_sendfile_whole_file(loop, kind, path, data_file, content):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            sent = await loop.sendfile(client.transport, data_file)
            assert sent == SIZE
            assert data_file.tell() == SIZE
            # The transport goes on working afterwards, both ways.
            client.transport.write(b'trailer')
            assert await server.read(SIZE + 7, timeout=10) == content + b'trailer'
            assert client.transport.is_reading()
            server.transport.write(b'reply')
            assert await client.read(5) == b'reply'

    run(loop, main())


def test_sendfile_offset_and_count(loop, kind, path, data_file, content):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            sent = await loop.sendfile(client.transport, data_file, 1000, 5000)
            assert sent == 5000
            assert data_file.tell() == 6000
            assert await server.read(5000) == content[1000:6000]
            # A count past the end sends what is there.
            sent = await loop.sendfile(client.transport, data_file, SIZE - 10, 1000)
            assert sent == 10
            assert data_file.tell() == SIZE
            assert await server.read(5010) == content[1000:6000] + content[-10:]

    run(loop, main())


def test_sendfile_empty_file(loop, kind, path, tmp_dir):
    empty = os.path.join(tmp_dir, 'empty')
    open(empty, 'wb').close()

    async def main(f):
        async with stream_pair(loop, kind, path) as (client, _):
            assert await loop.sendfile(client.transport, f) == 0
            assert f.tell() == 0

    with open(empty, 'rb') as f:
        run(loop, main(f))


def test_sendfile_native_without_fallback(loop, kind, path, data_file, content):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            assert await loop.sendfile(client.transport, data_file, fallback=False) == SIZE
            assert await server.read(SIZE, timeout=10) == content

    run(loop, main())


def test_sendfile_non_regular_file(loop, kind, path, content):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            buf = io.BytesIO(content[:100_000])
            with pytest.raises(asyncio.SendfileNotAvailableError, match='^not a regular file$'):
                await loop.sendfile(client.transport, buf, fallback=False)
            assert buf.tell() == 0
            assert not client.transport.is_closing()
            # fallback=True reads and writes it the slow way.
            assert await loop.sendfile(client.transport, buf, 10) == 100_000 - 10
            assert buf.tell() == 100_000
            assert await server.read(100_000 - 10) == content[10:100_000]

    run(loop, main())
    finish(loop)


def test_sendfile_keeps_order_with_buffered_writes(loop, kind, path, data_file, content):
    async def main():
        async with stream_pair(loop, kind, path) as (client, server):
            tr = client.transport
            server.transport.pause_reading()
            tr.write(b'H' * (4 * 1024 * 1024))  # more than the kernel takes: some stays buffered
            assert tr.get_write_buffer_size() > 0
            task = asyncio.ensure_future(loop.sendfile(tr, data_file))
            await asyncio.sleep(0.02)
            assert not task.done()
            with pytest.raises(RuntimeError, match='^unable to write; sendfile is in progress$'):
                tr.write(b'x')
            server.transport.resume_reading()
            assert await asyncio.wait_for(task, 10) == SIZE
            data = await server.read(4 * 1024 * 1024 + SIZE, timeout=10)
            assert data == b'H' * (4 * 1024 * 1024) + content

    run(loop, main())


def test_sendfile_argument_errors(loop, kind, path, data_file, tmp_dir):
    text_path = os.path.join(tmp_dir, 'text')
    with open(text_path, 'w') as f:
        f.write('text')

    async def main(text):
        async with stream_pair(loop, kind, path) as (client, _):
            tr = client.transport
            with pytest.raises(ValueError, match='^file should be opened in binary mode$'):
                await loop.sendfile(tr, text)
            with pytest.raises(TypeError, match=r"^count must be a positive integer \(got '1'\)$"):
                await loop.sendfile(tr, data_file, 0, '1')
            with pytest.raises(ValueError, match=r'^count must be a positive integer \(got 0\)$'):
                await loop.sendfile(tr, data_file, 0, 0)
            with pytest.raises(TypeError, match=r"^offset must be a non-negative integer \(got '1'\)$"):
                await loop.sendfile(tr, data_file, '1')
            with pytest.raises(ValueError, match=r'^offset must be a non-negative integer \(got -1\)$'):
                await loop.sendfile(tr, data_file, -1)
            assert not tr.is_closing()
            tr.close()
            with pytest.raises(RuntimeError, match='^Transport is closing$'):
                await loop.sendfile(tr, data_file)

    with open(text_path) as text:
        run(loop, main(text))


def test_sendfile_unsupported_transports(loop, data_file):
    r, w = os.pipe()
    os.close(r)
    wf = open(w, 'wb', buffering=0)  # noqa: SIM115

    async def main():
        dtr, dproto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=('127.0.0.1', 0))
        try:
            with pytest.raises(RuntimeError, match='^sendfile is not supported for transport '):
                await loop.sendfile(dtr, data_file)
            ptr, pproto = await loop.connect_write_pipe(Recorder, wf)
            with pytest.raises(RuntimeError, match='^sendfile is not supported for transport '):
                await loop.sendfile(ptr, data_file)
            ptr.close()
            await asyncio.wait_for(pproto.lost, 5)
        finally:
            dtr.close()
            wf.close()
            await asyncio.wait_for(dproto.lost, 5)

    run(loop, main())


async def recv_exactly(loop, sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_sendfile_sock_sendfile(loop, sock_pair, data_file, content):
    a, b = sock_pair

    async def main():
        reader = asyncio.ensure_future(recv_exactly(loop, b, SIZE))
        assert await loop.sock_sendfile(a, data_file) == SIZE
        assert data_file.tell() == SIZE
        assert await reader == content
        assert await loop.sock_sendfile(a, data_file, 5, 100) == 100
        assert data_file.tell() == 105
        assert await recv_exactly(loop, b, 100) == content[5:105]

    run(loop, main())


def test_sendfile_sock_sendfile_fallback(loop, sock_pair, content):
    a, b = sock_pair

    async def main():
        buf = io.BytesIO(content[:50_000])
        with pytest.raises(asyncio.SendfileNotAvailableError, match='^not a regular file$'):
            await loop.sock_sendfile(a, buf, fallback=False)
        reader = asyncio.ensure_future(recv_exactly(loop, b, 40_000))
        assert await loop.sock_sendfile(a, buf, 10_000) == 40_000
        assert buf.tell() == 50_000
        assert await reader == content[10_000:50_000]

    run(loop, main())
    finish(loop)


def test_sendfile_sock_sendfile_checks(loop, data_file):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    blocking_a, blocking_b = socket.socketpair()

    async def main():
        with pytest.raises(ValueError, match='^only SOCK_STREAM type sockets are supported$'):
            await loop.sock_sendfile(udp, data_file)
        loop.set_debug(True)
        with pytest.raises(ValueError, match='^the socket must be non-blocking$'):
            await loop.sock_sendfile(blocking_a, data_file)

    try:
        run(loop, main())
    finally:
        udp.close()
        blocking_a.close()
        blocking_b.close()


def test_sendfile_large_with_slow_reader(loop, kind, path, tmp_dir):
    big = os.urandom(8 * 1024 * 1024)
    fpath = os.path.join(tmp_dir, 'big')
    with open(fpath, 'wb') as f:
        f.write(big)

    async def main(f):
        async with stream_pair(loop, kind, path) as (client, server):
            task = asyncio.ensure_future(loop.sendfile(client.transport, f))
            for _ in range(5):
                server.transport.pause_reading()
                await asyncio.sleep(0.005)
                server.transport.resume_reading()
                await asyncio.sleep(0.005)
            assert await asyncio.wait_for(task, 10) == len(big)
            await wait_until(lambda: len(server.data) == len(big), timeout=10)
            assert server.data == big

    with open(fpath, 'rb') as f:
        run(loop, main(f))
