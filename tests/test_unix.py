"""Unix stream sockets: create_unix_server/create_unix_connection (paths, stale files,
the abstract namespace, sock=), connect_accepted_socket on a Unix socket."""

import asyncio
import errno
import inspect
import os
import pathlib
import socket

import pytest
from _net import DATA, EOF, LOST, MADE, Recorder, run, wait_until


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class Accepting:
    def __init__(self, proto=Echo):
        self.proto = proto
        self.protos = []

    def __call__(self):
        p = self.proto()
        self.protos.append(p)
        return p


def test_unix_roundtrip_and_call_sequence(loop, path):
    factory = Accepting()

    async def main():
        async with await loop.create_unix_server(factory, path) as server:
            assert server.sockets[0].family == socket.AF_UNIX
            assert server.sockets[0].getsockname() == path
            tr, proto = await loop.create_unix_connection(Recorder, path)
            tr.write(b'unix ')
            tr.writelines([b'stream', b'!'])
            assert await proto.read(12) == b'unix stream!'
            tr.write_eof()
            await asyncio.wait_for(proto.lost, 5)
            assert proto.calls == [MADE, DATA, EOF, LOST]
            await asyncio.wait_for(factory.protos[0].lost, 5)
            assert factory.protos[0].calls == [MADE, DATA, EOF, LOST]

    run(loop, main())


def test_unix_extra_info(loop, path):
    factory = Accepting()

    async def main():
        async with await loop.create_unix_server(factory, path):
            tr, proto = await loop.create_unix_connection(Recorder, path)
            try:
                await wait_until(lambda: factory.protos and factory.protos[0].transport is not None)
                accepted = factory.protos[0].transport
                assert tr.get_extra_info('peername') == path
                assert tr.get_extra_info('sockname') == ''
                assert accepted.get_extra_info('sockname') == path
                assert accepted.get_extra_info('peername') == ''
                sock = tr.get_extra_info('socket')
                assert sock.family == socket.AF_UNIX
                assert sock.type == socket.SOCK_STREAM
            finally:
                tr.close()
                await proto.lost
                await factory.protos[0].lost

    run(loop, main())


def test_unix_server_pathlib_path(loop, tmp_dir):
    path = pathlib.Path(tmp_dir) / 'p'

    async def main():
        async with await loop.create_unix_server(Accepting(), path) as server:
            assert server.sockets[0].getsockname() == str(path)
            tr, proto = await loop.create_unix_connection(Recorder, path)
            tr.write(b'pathlib')
            assert await proto.read(7) == b'pathlib'
            tr.close()
            await proto.lost

    run(loop, main())


def test_unix_server_removes_stale_socket_file(loop, tmp_dir):
    path = os.path.join(tmp_dir, 'stale')
    old = socket.socket(socket.AF_UNIX)
    old.bind(path)
    old.close()
    assert os.path.exists(path)

    async def main():
        async with await loop.create_unix_server(Accepting(), path):
            tr, proto = await loop.create_unix_connection(Recorder, path)
            tr.write(b'fresh')
            assert await proto.read(5) == b'fresh'
            tr.close()
            await proto.lost

    run(loop, main())


def test_unix_server_regular_file_in_the_way(loop, tmp_dir):
    path = os.path.join(tmp_dir, 'file')
    with open(path, 'w') as f:
        f.write('keep me')

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(Accepting(), path)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == f'[Errno {errno.EADDRINUSE}] Address {path!r} is already in use'

    run(loop, main())
    with open(path) as f:
        assert f.read() == 'keep me'


def test_unix_server_close_unlinks_socket_file_as_this_version(loop, path):
    # CPython 3.11 and 3.12 leave the socket file when the server closes; 3.13
    # unlinks it (create_unix_server(cleanup_socket=True), the default).
    cleans_up = 'cleanup_socket' in inspect.signature(asyncio.SelectorEventLoop.create_unix_server).parameters

    async def main():
        server = await loop.create_unix_server(Accepting(), path)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert os.path.exists(path) != cleans_up


def test_unix_abstract_namespace(loop):
    name = f'\0oxloop-test-{os.getpid()}-{id(loop)}'

    async def main():
        async with await loop.create_unix_server(Accepting(), name) as server:
            assert server.sockets[0].getsockname() == name.encode()
            tr, proto = await loop.create_unix_connection(Recorder, name)
            try:
                assert tr.get_extra_info('peername') == name.encode()
                tr.write(b'abstract')
                assert await proto.read(8) == b'abstract'
            finally:
                tr.close()
                await proto.lost

    run(loop, main())


def test_unix_server_and_connection_sock(loop, path):
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    csock = socket.socket(socket.AF_UNIX)
    factory = Accepting()

    async def main():
        async with await loop.create_unix_server(factory, sock=lsock) as server:
            assert server.sockets[0].fileno() == lsock.fileno()
            assert lsock.gettimeout() == 0
            csock.connect(path)
            tr, proto = await loop.create_unix_connection(Recorder, sock=csock)
            assert csock.gettimeout() == 0
            tr.write(b'sock=')
            assert await proto.read(5) == b'sock='
            tr.close()
            await proto.lost
            assert csock.fileno() == -1
        assert lsock.fileno() == -1

    try:
        run(loop, main())
    finally:
        lsock.close()
        csock.close()


def test_unix_create_connection_accepts_unix_sock(loop, path):
    # create_connection() takes any SOCK_STREAM socket, AF_UNIX included.

    async def main():
        async with await loop.create_unix_server(Accepting(), path):
            csock = socket.socket(socket.AF_UNIX)
            csock.connect(path)
            tr, proto = await loop.create_connection(Recorder, sock=csock)
            tr.write(b'generic')
            assert await proto.read(7) == b'generic'
            tr.close()
            await proto.lost

    run(loop, main())


def test_unix_argument_errors(loop, path):

    async def main():
        tcp = socket.socket()
        udgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ustream = socket.socket(socket.AF_UNIX)
        try:
            with pytest.raises(ValueError, match='^path and sock can not be specified at the same time$'):
                await loop.create_unix_server(Accepting(), path, sock=ustream)
            with pytest.raises(ValueError, match='^path was not specified, and no sock specified$'):
                await loop.create_unix_server(Accepting())
            for bad in (tcp, udgram):
                with pytest.raises(ValueError, match='^A UNIX Domain Stream Socket was expected, got '):
                    await loop.create_unix_server(Accepting(), sock=bad)
                with pytest.raises(ValueError, match='^A UNIX Domain Stream Socket was expected, got '):
                    await loop.create_unix_connection(Recorder, sock=bad)
            with pytest.raises(ValueError, match='^path and sock can not be specified at the same time$'):
                await loop.create_unix_connection(Recorder, path, sock=ustream)
            with pytest.raises(ValueError, match='^no path and sock were specified$'):
                await loop.create_unix_connection(Recorder)
            with pytest.raises(ValueError, match='^server_hostname is only meaningful with ssl$'):
                await loop.create_unix_connection(Recorder, path, server_hostname='x')
        finally:
            tcp.close()
            udgram.close()
            ustream.close()

    run(loop, main())


def test_unix_connect_missing_path(loop, tmp_dir):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(Recorder, os.path.join(tmp_dir, 'missing'))

    run(loop, main())


def test_unix_connect_stale_socket_refused(loop, tmp_dir):
    path = os.path.join(tmp_dir, 'stale')
    old = socket.socket(socket.AF_UNIX)
    old.bind(path)
    old.close()

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(Recorder, path)

    run(loop, main())


def test_unix_server_start_serving_false(loop, path):
    factory = Accepting()

    async def main():
        async with await loop.create_unix_server(factory, path, start_serving=False) as server:
            assert not server.is_serving()
            with pytest.raises(ConnectionRefusedError):
                await loop.create_unix_connection(Recorder, path)
            await server.start_serving()
            assert server.is_serving()
            tr, proto = await loop.create_unix_connection(Recorder, path)
            tr.write(b'now')
            assert await proto.read(3) == b'now'
            tr.close()
            await proto.lost

    run(loop, main())


def test_unix_connect_accepted_socketpair(loop):
    a, b = socket.socketpair()

    async def main():
        b.setblocking(False)
        tr, proto = await loop.connect_accepted_socket(Recorder, a)
        assert tr.get_extra_info('socket').family == socket.AF_UNIX
        await loop.sock_sendall(b, b'pair')
        assert await proto.read(4) == b'pair'
        tr.write(b'back')
        assert await loop.sock_recv(b, 4) == b'back'
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.lost, 5)
        assert proto.calls == [MADE, DATA, EOF, LOST]

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()
