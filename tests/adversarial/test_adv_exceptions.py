"""Exceptions raised from every callback position, compared with the stdlib loop.

Each position raises once (an ordinary exception, ``KeyboardInterrupt`` or
``SystemExit``); the test records what a user can see: what comes out of
``run_until_complete``, what reaches the exception handler (message and context
keys) and the ``asyncio`` logger, whether the transport is closing and what its
protocol's ``connection_lost`` got, whether the loop runs again afterwards, and
whether an fd is left open once everything is closed. The stdlib loop's record,
computed in the same test, is the expected one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import sys
import warnings

import pytest
from _net import open_fds
from conftest import new_loop

EXCEPTIONS = {
    'ValueError': lambda: ValueError('boom'),
    'KeyboardInterrupt': KeyboardInterrupt,
    'SystemExit': lambda: SystemExit(3),
}


class Once:
    """Raises a fresh exception the first time it is called."""

    def __init__(self, make) -> None:
        self.make = make
        self.fired = False

    def __call__(self, *args, **kwargs):
        if not self.fired:
            self.fired = True
            raise self.make()


def protocol_class(base, position: str, raiser: Once, st: dict):
    """A protocol that records its transport and its calls, and raises at ``position``."""

    class P(base):
        def _at(self, name: str) -> None:
            st['calls'].append(name)
            if name == position:
                raiser()

        def connection_made(self, transport):
            self.transport = transport
            st['transports'].append(transport)
            self._at('connection_made')

        def connection_lost(self, exc):
            st['lost'].append(type(exc).__name__ if exc is not None else None)
            self._at('connection_lost')

        def pause_writing(self):
            self._at('pause_writing')

        def resume_writing(self):
            self._at('resume_writing')

        def data_received(self, data):
            self._at('data_received')

        def eof_received(self):
            self._at('eof_received')

        def get_buffer(self, sizehint):
            self._at('get_buffer')
            return bytearray(65536)

        def buffer_updated(self, nbytes):
            self._at('buffer_updated')

        def datagram_received(self, data, addr):
            self._at('datagram_received')

        def error_received(self, exc):
            self._at('error_received')

    return P


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


async def accepted_stream(loop, base, position, raiser, st):
    a, b = socket.socketpair()
    b.setblocking(False)
    st['socks'].append(b)
    await loop.connect_accepted_socket(protocol_class(base, position, raiser, st), a)
    await settle(0.01)
    return st['transports'][0], b


# ----- the positions: each drives the loop to the point where the callback raises ------


async def pos_call_soon(loop, raiser, st):
    loop.call_soon(raiser)
    await settle()


async def pos_call_later(loop, raiser, st):
    loop.call_later(0.001, raiser)
    await settle()


async def pos_reader(loop, raiser, st):
    a, b = socket.socketpair()
    st['socks'] += [a, b]
    loop.add_reader(a.fileno(), raiser)
    st['cleanup'].append(lambda: loop.remove_reader(a.fileno()))
    b.send(b'x')
    await settle()


async def pos_writer(loop, raiser, st):
    a, b = socket.socketpair()
    st['socks'] += [a, b]
    loop.add_writer(a.fileno(), raiser)
    st['cleanup'].append(lambda: loop.remove_writer(a.fileno()))
    await settle()


def stream_position(position: str, base=asyncio.Protocol):
    async def drive(loop, raiser, st):
        tr, peer = await accepted_stream(loop, base, position, raiser, st)
        if position in ('data_received', 'get_buffer', 'buffer_updated'):
            peer.send(b'hello')
        elif position == 'eof_received':
            peer.shutdown(socket.SHUT_WR)
        elif position == 'connection_lost':
            tr.close()
        elif position in ('pause_writing', 'resume_writing'):
            tr.set_write_buffer_limits(high=1)
            tr.write(b'x' * (1 << 20))
            if position == 'resume_writing':
                while tr.get_write_buffer_size():
                    await loop.sock_recv(peer, 1 << 20)
        await settle()

    return drive


def datagram_position(position: str):
    async def drive(loop, raiser, st):
        factory = protocol_class(asyncio.DatagramProtocol, position, raiser, st)
        if position == 'datagram_received':
            tr, _ = await loop.create_datagram_endpoint(factory, local_addr=('127.0.0.1', 0))
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            st['socks'].append(peer)
            peer.sendto(b'x', tr.get_extra_info('sockname'))
        else:
            # A connected UDP socket to a closed port: the ICMP error comes back as
            # ECONNREFUSED on the next receive, passed to error_received.
            closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            closed.bind(('127.0.0.1', 0))
            port = closed.getsockname()[1]
            closed.close()
            tr, _ = await loop.create_datagram_endpoint(factory, remote_addr=('127.0.0.1', port))
            tr.sendto(b'x')
        await settle()

    return drive


async def pos_exception_handler(loop, raiser, st):
    def handler(lp, context):
        st['handled'].append(context['message'].split()[:3])
        raiser()

    loop.set_exception_handler(handler)

    def fail():
        raise RuntimeError('callback failed')

    loop.call_soon(fail)
    await settle()


async def pos_task_factory(loop, raiser, st):
    async def noop():
        pass

    loop.set_task_factory(lambda lp, coro: (coro.close(), raiser())[1])
    try:
        loop.create_task(noop())
    finally:
        loop.set_task_factory(None)
    await settle()


async def pos_server_protocol_factory(loop, raiser, st):
    def factory():
        raiser()
        return protocol_class(asyncio.Protocol, '', raiser, st)()

    srv = await loop.create_server(factory, '127.0.0.1', 0)
    st['servers'].append(srv)
    client = socket.socket()
    client.setblocking(False)
    st['socks'].append(client)
    await loop.sock_connect(client, srv.sockets[0].getsockname())
    await settle()


async def pos_connection_protocol_factory(loop, raiser, st):
    def factory():
        raiser()
        return protocol_class(asyncio.Protocol, '', raiser, st)()

    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()
    st['socks'].append(listener)
    await loop.create_connection(factory, *listener.getsockname())
    await settle()


POSITIONS = {
    'call_soon': pos_call_soon,
    'call_later': pos_call_later,
    'reader': pos_reader,
    'writer': pos_writer,
    **{
        name: stream_position(name)
        for name in (
            'connection_made',
            'data_received',
            'eof_received',
            'connection_lost',
            'pause_writing',
            'resume_writing',
        )
    },
    'get_buffer': stream_position('get_buffer', asyncio.BufferedProtocol),
    'buffer_updated': stream_position('buffer_updated', asyncio.BufferedProtocol),
    'datagram_received': datagram_position('datagram_received'),
    'error_received': datagram_position('error_received'),
    'exception_handler': pos_exception_handler,
    'task_factory': pos_task_factory,
    'server_protocol_factory': pos_server_protocol_factory,
    'connection_protocol_factory': pos_connection_protocol_factory,
}


class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage().split()[:3])


def record(impl: str, position: str, exc_name: str) -> dict:
    """What a user sees when ``position`` raises ``exc_name`` on the ``impl`` loop."""
    # A socket left to the garbage collector warns; the fd count is the check. An
    # exception in a finaliser is part of the record.
    gc.collect()  # the fds of earlier garbage are not this record's
    before = open_fds()
    unraisable: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(type(u.exc_value).__name__)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', ResourceWarning)
            out = _record(impl, position, exc_name)
            for _ in range(3):  # the loop and what it held, finalisers on later passes
                gc.collect()
    finally:
        sys.unraisablehook = hook
    out['unraisable'] = unraisable
    out['leaked'] = len(open_fds() - before)
    return out


def _record(impl: str, position: str, exc_name: str) -> dict:
    loop = new_loop(impl)
    st: dict = {'calls': [], 'transports': [], 'lost': [], 'socks': [], 'servers': [], 'cleanup': [], 'handled': []}
    contexts: list[dict] = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    logs = LogRecords()
    logger = logging.getLogger('asyncio')
    logger.addHandler(logs)
    raiser = Once(EXCEPTIONS[exc_name])
    out: dict = {}
    try:
        try:
            loop.run_until_complete(asyncio.wait_for(POSITIONS[position](loop, raiser, st), 5))
            out['raised'] = None
        except BaseException as exc:  # noqa: BLE001 - the record is the point
            out['raised'] = type(exc).__name__
        out['fired'] = raiser.fired
        out['handler'] = sorted((c['message'].split()[:3], sorted(c)) for c in contexts)
        out['handled'] = st['handled']
        out['closing'] = [tr.is_closing() for tr in st['transports']]
        out['lost'] = list(st['lost'])
        # Runs again: a task that a KeyboardInterrupt left failed re-raises it in the
        # task waiting for it, on the next run, as asyncio's does.
        out['usable'] = []
        for _ in range(3):
            try:
                out['usable'].append(loop.run_until_complete(asyncio.sleep(0, 'ok')))
                break
            except BaseException as exc:  # noqa: BLE001
                out['usable'].append(type(exc).__name__)
    finally:
        # Close everything, as a program that goes on would, then look for leaked fds.
        with contextlib.suppress(BaseException):
            for fn in st['cleanup']:
                fn()
            for tr in st['transports']:
                tr.close()
            for srv in st['servers']:
                srv.close()
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            if tasks:  # gather() of nothing would make a default loop
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(settle(0.01))
        logger.removeHandler(logs)
        loop.set_exception_handler(None)
        for s in st['socks']:
            s.close()
        loop.close()
    out['logged'] = logs.seen
    return out


@pytest.mark.parametrize('exc_name', sorted(EXCEPTIONS))
@pytest.mark.parametrize('position', sorted(POSITIONS))
def test_exception_from_callback_position(loop_impl, position, exc_name):
    expected = record('asyncio', position, exc_name)
    assert expected['fired'], 'the scenario never reached the position'
    assert record(loop_impl, position, exc_name) == expected
