"""TLS fed what users get wrong, each outcome compared with the stdlib loop's.

``ssl=`` of the wrong type, TLS-only keywords without TLS, hostile timeouts, ``start_tls``
misused (not a context, a closed transport, twice), writes after close and of the wrong
type, app protocols that close or abort from inside their callbacks, and app protocols
that raise. Each scenario runs on the loop under test and on a fresh stdlib loop; where
the stdlib's answer depends on the Python version it is only computed, elsewhere it is also
written down.
"""

from __future__ import annotations

import asyncio
import gc
import math
import socket
import ssl
import warnings

import pytest
from _net import capture_errors, wait_until
from _tls import client_context, server_context
from conftest import new_loop

TIMEOUT = 10.0


def describe(exc: BaseException | None):
    """An exception as (type name, message); None stays None."""
    return None if exc is None else (type(exc).__name__, str(exc))


def on_loop(impl: str, scenario, *args):
    """Run ``scenario(loop, *args)`` on a fresh loop of ``impl``; return what it returned.

    ResourceWarnings (objects left unclosed, found by the garbage collector once the loop
    is closed and dropped) are counted in ``LEAKS[impl]`` rather than failing the test:
    the stdlib loop leaks a socket on some of these paths (see
    test_adv_tls_client_ssl_of_wrong_type)."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('ignore', ResourceWarning)
        gc.collect()  # what earlier tests left behind is not this run's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        lp = new_loop(impl)
        try:
            return lp.run_until_complete(asyncio.wait_for(scenario(lp, *args), TIMEOUT))
        finally:
            lp.set_exception_handler(None)  # it holds the reported exceptions and their frames
            lp.close()
            del lp
            gc.collect()
            LEAKS[impl] = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


LEAKS: dict[str, list[str]] = {}


def compare(loop_impl: str, scenario, *args):
    """(outcome on the loop under test, outcome on the stdlib loop). The loop under test
    may not leave more unclosed objects behind than the stdlib loop does."""
    got = on_loop(loop_impl, scenario, *args)
    leaks = LEAKS[loop_impl]
    expected = on_loop('asyncio', scenario, *args)
    assert len(leaks) <= len(LEAKS['asyncio']), leaks
    return got, expected


class Recorder(asyncio.Protocol):
    """Records the call sequence (with connection_lost's argument described)."""

    def __init__(self) -> None:
        self.calls: list = []
        self.data = bytearray()
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append('made')

    def data_received(self, data):
        self.data += data
        if not self.calls or self.calls[-1] != 'data':
            self.calls.append('data')

    def eof_received(self):
        self.calls.append('eof')

    def connection_lost(self, exc):
        self.calls.append(('lost', describe(exc)))
        if not self.lost.done():
            self.lost.set_result(exc)


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


async def tls_echo_server(lp, **kw):
    protos: list[Recorder] = []

    def make():
        p = Echo()
        protos.append(p)
        return p

    server = await lp.create_server(make, '127.0.0.1', 0, ssl=kw.pop('ssl', None) or server_context(), **kw)
    return server, protos, server.sockets[0].getsockname()[:2]


async def shut(server, protos) -> None:
    """Close the server and every connection it made; wait for them."""
    for p in protos:
        if p.transport is not None and not p.transport.is_closing():
            p.transport.close()
    for p in protos:
        if p.transport is not None:
            await asyncio.wait_for(asyncio.shield(p.lost), 5)
    server.close()
    await server.wait_closed()


async def roundtrip(tr, proto, data=b'ping') -> bytes:
    tr.write(data)
    await wait_until(lambda: len(proto.data) >= len(data) or proto.lost.done())
    return bytes(proto.data)


async def failing_client(lp, addr):
    """Connect with TLS to a server whose TLS setup may fail: 'refused' when the client's
    handshake fails (the server closes, or its handshake times out after 0.2 s), else
    what the echo server sent back."""
    try:
        tr, proto = await lp.create_connection(
            Recorder, *addr, ssl=client_context(), server_hostname='localhost', ssl_handshake_timeout=0.2
        )
    except (ConnectionError, ssl.SSLError):
        return 'refused'
    echoed = await roundtrip(tr, proto)  # the server is an echo server
    tr.close()
    await proto.lost
    return echoed


# ----- 1. wrong types and keywords that need TLS -----------------------------------------


WRONG_SSL = {
    'str': 'yes',
    'int': 1,
    'bytes': b'ctx',
    'object': object(),
    'context_class': ssl.SSLContext,
    'ssl_object_class': ssl.SSLObject,
}


@pytest.mark.parametrize('value', WRONG_SSL.values(), ids=WRONG_SSL.keys())
def test_adv_tls_client_ssl_of_wrong_type(loop_impl, value):
    # The stdlib loop accepts any true value as ``ssl=`` and fails once connected, when it
    # calls the value's wrap_bio() (and leaves the connected socket to the garbage
    # collector: a ResourceWarning); the loop stays usable.
    async def scenario(lp):
        server, protos, addr = await tls_echo_server(lp)
        try:
            await lp.create_connection(Recorder, *addr, ssl=value, server_hostname='localhost')
        except Exception as exc:  # noqa: BLE001 - the outcome is compared
            got = describe(exc)
        else:
            got = 'connected'
        await asyncio.sleep(0.05)
        tr, proto = await lp.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
        assert await roundtrip(tr, proto) == b'ping'
        tr.close()
        await proto.lost
        await shut(server, protos)
        return got

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    assert expected[0] in ('AttributeError', 'TypeError')


@pytest.mark.parametrize('value', [True, 'yes', 1, object()], ids=['True', 'str', 'int', 'object'])
def test_adv_tls_server_ssl_of_wrong_type(loop_impl, value):
    # create_server refuses ssl=True (TypeError); the stdlib loop accepts other non-context
    # values and fails each connection instead: in debug mode the handler hears why, and
    # the client's handshake fails (the stdlib loop leaves the accepted socket open until
    # the garbage collector finds it, so its client times out; closing it is as good).
    async def scenario(lp):
        lp.set_debug(True)
        errors = capture_errors(lp)
        try:
            server = await lp.create_server(Recorder, '127.0.0.1', 0, ssl=value)
        except Exception as exc:  # noqa: BLE001
            return describe(exc)
        async with server:
            client = await failing_client(lp, server.sockets[0].getsockname()[:2])
            await wait_until(lambda: errors)
        return client, [(e['message'], describe(e.get('exception'))) for e in errors]

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    if value is True:
        assert expected == ('TypeError', 'ssl argument must be an SSLContext or None')


def test_adv_tls_keywords_that_need_ssl(loop_impl, tmp_dir):
    path = f'{tmp_dir}/s'

    async def scenario(lp):
        server = await lp.create_server(Recorder, '127.0.0.1', 0)
        userver = await lp.create_unix_server(Recorder, path)
        addr = server.sockets[0].getsockname()[:2]
        out = []
        for kw in (
            {'server_hostname': 'localhost'},
            {'ssl_handshake_timeout': 1},
            {'ssl_shutdown_timeout': 1},
            {'ssl': None, 'server_hostname': 'localhost'},
            {'ssl': False, 'ssl_handshake_timeout': 1},
        ):
            for connect in (
                lambda kw=kw: lp.create_connection(Recorder, *addr, **kw),
                lambda kw=kw: lp.create_unix_connection(Recorder, path, **kw),
            ):
                try:
                    tr, _ = await connect()
                    tr.close()
                    out.append('connected')
                except Exception as exc:  # noqa: BLE001
                    out.append(describe(exc))
        for kw in ({'ssl_handshake_timeout': 1}, {'ssl_shutdown_timeout': 1}):
            try:
                s = await lp.create_server(Recorder, '127.0.0.1', 0, **kw)
                s.close()
                out.append('served')
            except Exception as exc:  # noqa: BLE001
                out.append(describe(exc))
        # TLS over a Unix socket, or over a given socket, needs a server_hostname.
        try:
            await lp.create_unix_connection(Recorder, path, ssl=client_context())
        except Exception as exc:  # noqa: BLE001
            out.append(describe(exc))
        sock = socket.create_connection(addr)
        try:
            await lp.create_connection(Recorder, sock=sock, ssl=client_context())
        except Exception as exc:  # noqa: BLE001
            out.append(describe(exc))
        finally:
            sock.close()
        server.close()
        userver.close()
        await server.wait_closed()
        await userver.wait_closed()
        return out

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    assert expected[0] == ('ValueError', 'server_hostname is only meaningful with ssl')
    assert expected[2] == ('ValueError', 'ssl_handshake_timeout is only meaningful with ssl')
    assert expected[4] == ('ValueError', 'ssl_shutdown_timeout is only meaningful with ssl')
    assert expected[-2] == ('ValueError', 'you have to pass server_hostname when using ssl')
    assert expected[-1] == ('ValueError', 'You must set server_hostname when using ssl without a host')


# ----- 2. hostile timeouts ------------------------------------------------------------------


TIMEOUTS = {
    'zero': 0,
    'negative_zero': -0.0,
    'negative': -1,
    'tiny': 1e-300,
    'huge_float': 1e300,
    'inf': math.inf,
    'huge_int': 10**100,
    'true': True,
    'none': None,
    'str': '1',
    'bytes': b'1',
    'list': [1],
}


@pytest.mark.parametrize('name', ['ssl_handshake_timeout', 'ssl_shutdown_timeout'])
@pytest.mark.parametrize('value', TIMEOUTS.values(), ids=TIMEOUTS.keys())
def test_adv_tls_client_timeout_values(loop_impl, name, value):
    # create_connection checks the value (ValueError for <= 0, the comparison's TypeError
    # for a non-number); accepted values give a working connection.
    async def scenario(lp):
        server, protos, addr = await tls_echo_server(lp)
        try:
            tr, proto = await lp.create_connection(
                Recorder, *addr, ssl=client_context(), server_hostname='localhost', **{name: value}
            )
        except Exception as exc:  # noqa: BLE001
            got = describe(exc)
        else:
            got = await roundtrip(tr, proto)
            tr.close()
            got = (got, describe(await proto.lost))
        await shut(server, protos)
        return got

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    if value in (0, -1) and not isinstance(value, bool):
        assert expected == ('ValueError', f'{name} should be a positive number, got {value}')


@pytest.mark.parametrize('name', ['ssl_handshake_timeout', 'ssl_shutdown_timeout'])
def test_adv_tls_client_timeout_nan(loop_impl, name):
    # NaN passes the stdlib's ``<= 0`` check; its timer then fires at once or never,
    # depending on the timer heap, so only this is required: no crash, and either a
    # working connection or the handshake's ConnectionAbortedError.
    async def scenario(lp):
        server, protos, addr = await tls_echo_server(lp)
        try:
            tr, proto = await lp.create_connection(
                Recorder, *addr, ssl=client_context(), server_hostname='localhost', **{name: math.nan}
            )
        except ConnectionAbortedError:
            got = 'aborted'
        else:
            got = await roundtrip(tr, proto)
            tr.abort()
            await proto.lost
        await shut(server, protos)
        return got

    got = on_loop(loop_impl, scenario)
    assert got in ('aborted', b'ping')


@pytest.mark.parametrize('name', ['ssl_handshake_timeout', 'ssl_shutdown_timeout'])
@pytest.mark.parametrize('value', [0, '1', 10**100], ids=['zero', 'str', 'huge_int'])
def test_adv_tls_server_timeout_values(loop_impl, name, value):
    # The stdlib loop's create_server does not check the value: each connection's TLS
    # setup does (in debug mode the handler hears why, and the client's handshake fails).
    async def scenario(lp):
        lp.set_debug(True)
        errors = capture_errors(lp)
        try:
            server, protos, addr = await tls_echo_server(lp, **{name: value})
        except Exception as exc:  # noqa: BLE001
            return describe(exc)
        got = await failing_client(lp, addr)
        if got == 'refused':
            await wait_until(lambda: errors)
        await shut(server, protos)
        return got, [(e['message'], describe(e.get('exception'))) for e in errors]

    got, expected = compare(loop_impl, scenario)
    assert got == expected


# ----- 3. start_tls misused ---------------------------------------------------------------------


async def plain_pair(lp):
    """A plaintext TCP connection on ``lp``: (client transport, client protocol, server protocols, server)."""
    protos: list[Recorder] = []

    def make():
        p = Recorder()
        protos.append(p)
        return p

    server = await lp.create_server(make, '127.0.0.1', 0)
    tr, proto = await lp.create_connection(Recorder, *server.sockets[0].getsockname()[:2])
    await wait_until(lambda: protos and protos[0].transport is not None)
    return tr, proto, protos, server


@pytest.mark.parametrize(
    'ctx',
    [None, 'ctx', True, ssl.SSLContext, ssl.SSLObject],
    ids=['None', 'str', 'True', 'context_class', 'ssl_object_class'],
)
def test_adv_tls_start_tls_not_a_context(loop_impl, ctx):
    async def scenario(lp):
        tr, proto, protos, server = await plain_pair(lp)
        try:
            await lp.start_tls(tr, Recorder(), ctx, server_hostname='localhost')
        except Exception as exc:  # noqa: BLE001
            got = describe(exc)
        # The transport is untouched: still the plaintext protocol's, still working.
        assert tr.get_protocol() is proto
        tr.write(b'still plain')
        await wait_until(lambda: protos[0].data == b'still plain')
        tr.close()
        await proto.lost
        protos[0].transport.close()
        await protos[0].lost
        server.close()
        await server.wait_closed()
        return got

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    assert expected == ('TypeError', f'sslcontext is expected to be an instance of ssl.SSLContext, got {ctx!r}')


@pytest.mark.parametrize('when', ['closing', 'closed'])
def test_adv_tls_start_tls_on_a_closed_transport(loop_impl, when):
    # start_tls over a transport already closing (close() called) or closed
    # (connection_lost delivered). The stdlib loop has no answer of its own: it hangs
    # (3.11; 3.13 for a closed one, even past ssl_handshake_timeout) or returns None
    # (3.13, closing). Required here: no usable transport comes back, nothing reaches the
    # peer, nothing is reported, the plaintext protocol's connection_lost is not repeated.
    async def scenario(lp):
        errors = capture_errors(lp)
        tr, proto, protos, server = await plain_pair(lp)
        tr.close()
        if when == 'closed':
            await proto.lost
        app = Recorder()
        try:
            new = await asyncio.wait_for(
                lp.start_tls(tr, app, client_context(), server_hostname='localhost', ssl_handshake_timeout=0.3), 0.6
            )
        except TimeoutError:
            usable = False
        except Exception:  # noqa: BLE001 - raising is a fine answer
            usable = False
        else:
            usable = new is not None and not new.is_closing()
        await wait_until(lambda: protos[0].lost.done())
        server.close()
        await server.wait_closed()
        return usable, bytes(protos[0].data), proto.calls.count(('lost', None)) <= 1, errors

    usable, peer_got, lost_once, errors = on_loop(loop_impl, scenario)
    assert not usable
    assert peer_got == b''
    assert lost_once
    assert errors == []


def test_adv_tls_start_tls_twice_tls_in_tls(loop_impl):
    # start_tls over a transport that start_tls returned: TLS inside TLS, on both sides.
    async def scenario(lp):
        tr, proto, protos, server = await plain_pair(lp)
        str_ = protos[0].transport
        layers = []
        for _ in range(2):
            capp, sapp = Recorder(), Recorder()
            ctr, stre = await asyncio.gather(
                lp.start_tls(tr, capp, client_context(), server_hostname='localhost'),
                lp.start_tls(str_, sapp, server_context(), server_side=True),
            )
            layers.append((capp, sapp))
            tr, str_ = ctr, stre
            capp.transport, sapp.transport = ctr, stre
        tr.write(b'twice wrapped')
        await wait_until(lambda: layers[-1][1].data == b'twice wrapped')
        inner = tr.get_extra_info('ssl_object')
        got = (bytes(layers[-1][1].data), inner.version(), layers[0][1].data == b'')
        tr.close()
        await layers[-1][0].lost
        await asyncio.sleep(0.05)
        for t in (str_, proto.transport, protos[0].transport):
            t.abort()
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        return got

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    assert expected == (b'twice wrapped', 'TLSv1.3', True)


# ----- 4. writes after close, writes of the wrong type --------------------------------------


@pytest.mark.parametrize('how', ['close', 'abort', 'lost'])
def test_adv_tls_write_after_close(loop_impl, how):
    # Writes after close()/abort() or after connection_lost raise nothing and send nothing.
    async def scenario(lp):
        errors = capture_errors(lp)
        server, protos, addr = await tls_echo_server(lp)
        tr, proto = await lp.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
        await roundtrip(tr, proto, b'before')
        if how == 'lost':
            tr.close()
            await proto.lost
        else:
            getattr(tr, how)()
        outcomes = []
        for data in (b'after', bytearray(b'after'), memoryview(b'after')):
            try:
                tr.write(data)
                outcomes.append('ok')
            except Exception as exc:  # noqa: BLE001
                outcomes.append(describe(exc))
        try:
            tr.writelines([b'after'])
            outcomes.append('ok')
        except Exception as exc:  # noqa: BLE001
            outcomes.append(describe(exc))
        await proto.lost
        await wait_until(lambda: protos[0].lost.done())
        await shut(server, protos)
        return outcomes, bytes(protos[0].data), proto.calls, [e['message'] for e in errors]

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    assert expected[1] == b'before'


@pytest.mark.parametrize(
    'data',
    ['text', 42, None, 1.5, [b'list'], object()],
    ids=['str', 'int', 'None', 'float', 'list', 'object'],
)
def test_adv_tls_write_wrong_type(loop_impl, data):
    # write() refuses what is not bytes-like, with the stdlib's message, and the
    # connection goes on working.
    async def scenario(lp):
        server, protos, addr = await tls_echo_server(lp)
        tr, proto = await lp.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
        try:
            tr.write(data)
            got = 'ok'
        except Exception as exc:  # noqa: BLE001
            got = describe(exc)
        echoed = await roundtrip(tr, proto, b'fine')
        tr.close()
        await proto.lost
        await shut(server, protos)
        return got, echoed

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    assert expected == (('TypeError', f'data: expecting a bytes-like instance, got {type(data).__name__}'), b'fine')


def test_adv_tls_writelines_wrong_type(loop_impl):
    # The stdlib loop's TLS writelines() does not check its items: a str fails inside
    # the TLS layer, is reported as a fatal error and closes the connection.
    async def scenario(lp):
        errors = capture_errors(lp)
        server, protos, addr = await tls_echo_server(lp)
        tr, proto = await lp.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
        try:
            tr.writelines([b'ok', 'text'])
            got = 'ok'
        except Exception as exc:  # noqa: BLE001
            got = describe(exc)
        await asyncio.wait_for(proto.lost, 5)
        await wait_until(lambda: protos[0].lost.done())
        await shut(server, protos)
        return got, proto.calls, [(e['message'], describe(e.get('exception'))) for e in errors]

    got, expected = compare(loop_impl, scenario)
    assert got == expected


# ----- 5. re-entrant app protocols, and app protocols that raise -----------------------------------


class CloseInMade(Recorder):
    def connection_made(self, transport):
        super().connection_made(transport)
        transport.close()


class CloseInData(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.close()


class AbortInData(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.abort()


class AbortInEof(Recorder):
    def eof_received(self):
        super().eof_received()
        self.transport.abort()


class WriteCloseWriteInData(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(b'reply')
        self.transport.close()
        self.transport.write(b'dropped')


REENTRANT = {
    'close_in_connection_made': CloseInMade,
    'close_in_data_received': CloseInData,
    'abort_in_data_received': AbortInData,
    'abort_in_eof_received': AbortInEof,
    'write_close_write_in_data_received': WriteCloseWriteInData,
}


@pytest.mark.parametrize('side', ['client', 'server'])
@pytest.mark.parametrize('cls', REENTRANT.values(), ids=REENTRANT.keys())
def test_adv_tls_reentrant_app_protocol(loop_impl, cls, side):
    # The app protocol closes or aborts its own TLS transport from inside a callback; the
    # peer sends data, then closes. Both sides' call sequences and bytes as the stdlib's.
    async def scenario(lp):
        errors = capture_errors(lp)
        protos: list[Recorder] = []

        class Sender(Recorder):
            def connection_made(self, transport):
                super().connection_made(transport)
                transport.write(b'hello')

        server_cls = cls if side == 'server' else Sender
        client_cls = Sender if side == 'server' else cls

        def make():
            p = server_cls()
            protos.append(p)
            return p

        server = await lp.create_server(make, '127.0.0.1', 0, ssl=server_context())
        try:
            tr, proto = await lp.create_connection(
                client_cls, *server.sockets[0].getsockname()[:2], ssl=client_context(), server_hostname='localhost'
            )
        except Exception as exc:  # noqa: BLE001
            got = describe(exc)
            proto = None
        else:
            got = 'connected'
            await asyncio.sleep(0.05)
            if not tr.is_closing():
                tr.close()  # the peer closes: eof_received on the other side
            await asyncio.wait_for(proto.lost, 5)
        await wait_until(lambda: protos and all(p.lost.done() or p.transport is None for p in protos))
        sp = protos[0]
        if sp.transport is not None and not sp.lost.done():
            sp.transport.abort()
            await sp.lost
        server.close()
        await server.wait_closed()
        return (
            got,
            proto.calls if proto else None,
            bytes(proto.data) if proto else None,
            sp.calls,
            bytes(sp.data),
            [e['message'] for e in errors],
        )

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    # Nothing to report, and each side's connection_lost comes once, last.
    _, ccalls, _, scalls, _, reports = expected
    assert reports == []
    for calls in (ccalls, scalls):
        assert [c for c in calls if isinstance(c, tuple)] == [calls[-1]], calls  # (lost, exc)


class RaiseInMade(Recorder):
    def connection_made(self, transport):
        super().connection_made(transport)
        raise ZeroDivisionError('in connection_made')


class RaiseInData(Recorder):
    def data_received(self, data):
        super().data_received(data)
        raise ZeroDivisionError('in data_received')


class RaiseInEof(Recorder):
    def eof_received(self):
        super().eof_received()
        raise ZeroDivisionError('in eof_received')


RAISING = {
    'connection_made': RaiseInMade,
    'data_received': RaiseInData,
    'eof_received': RaiseInEof,
}


@pytest.mark.parametrize('side', ['client', 'server'])
@pytest.mark.parametrize('cls', RAISING.values(), ids=RAISING.keys())
def test_adv_tls_app_protocol_raises(loop_impl, cls, side):
    # An exception from the app protocol is reported to the exception handler (message,
    # exception, and the keys the stdlib gives), the connection is closed, the loop goes on.
    async def scenario(lp):
        errors = capture_errors(lp)
        protos: list[Recorder] = []

        class Sender(Recorder):
            def connection_made(self, transport):
                super().connection_made(transport)
                transport.write(b'hello')

        server_cls = cls if side == 'server' else Sender
        client_cls = Sender if side == 'server' else cls

        def make():
            p = server_cls()
            protos.append(p)
            return p

        server = await lp.create_server(make, '127.0.0.1', 0, ssl=server_context())
        addr = server.sockets[0].getsockname()[:2]
        try:
            tr, proto = await lp.create_connection(client_cls, *addr, ssl=client_context(), server_hostname='localhost')
        except Exception as exc:  # noqa: BLE001
            got = describe(exc)
            proto = None
        else:
            got = 'connected'
            await asyncio.sleep(0.05)
            if not tr.is_closing():
                tr.close()
            await asyncio.wait_for(proto.lost, 5)
        await wait_until(lambda: errors)
        await wait_until(lambda: protos and all(p.lost.done() or p.transport is None for p in protos))
        sp = protos[0]
        if sp.transport is not None and not sp.lost.done():
            sp.transport.abort()
            await sp.lost
        # The loop still works.
        tr2, proto2 = await lp.create_connection(Recorder, *addr, ssl=client_context(), server_hostname='localhost')
        tr2.abort()
        await proto2.lost
        server.close()
        await server.wait_closed()
        reports = [
            (e['message'], describe(e.get('exception')), sorted(k for k in e if k != 'source_traceback'))
            for e in errors
        ]
        return got, proto.calls if proto else None, sp.calls, reports

    got, expected = compare(loop_impl, scenario)
    assert got == expected
    method = next(name for name, c in RAISING.items() if c is cls)
    assert ('ZeroDivisionError', f'in {method}') in [r[1] for r in expected[3]]
