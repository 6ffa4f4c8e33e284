"""A native transport's fd watch (issue 11): oxloop queues a transport's readiness as
a native entry, with no ``Handle`` per watch or per event. What asyncio's handles gave
must still hold: a watch removed or replaced after its event was queued does not run,
the reader runs in a copy of the context the transport was made in (and keeps what it
sets there across events), and a failure to start reading reaches the exception
handler as asyncio's ``_add_reader`` callback would. Every test runs on both loops."""

from __future__ import annotations

import asyncio
import contextvars
import socket

import pytest

TIMEOUT = 5.0

request_id: contextvars.ContextVar[str] = contextvars.ContextVar('request_id', default='-')


class Recorder(asyncio.Protocol):
    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log
        self.transport: asyncio.Transport | None = None
        self.other: Recorder | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.log.append((self.name, data))
        # The other connection's event may already be queued in this iteration.
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()


async def _pair(loop: asyncio.AbstractEventLoop, name: str, log: list[tuple[str, bytes]]):
    mine, peer = socket.socketpair()
    transport, protocol = await loop.connect_accepted_socket(lambda: Recorder(name, log), mine)
    return transport, protocol, peer


def test_pause_reading_of_an_event_already_queued_stops_it(loop):
    """Two connections ready in one poll: the first reader to run pauses the other,
    whose event is already queued; it must not run until reading resumes."""

    async def main() -> tuple[int, list[tuple[str, bytes]]]:
        log: list[tuple[str, bytes]] = []
        ta, pa, a = await _pair(loop, 'a', log)
        tb, pb, b = await _pair(loop, 'b', log)
        pa.other, pb.other = pb, pa
        try:
            a.send(b'1')
            b.send(b'2')
            await asyncio.sleep(0.05)
            first = len(log)
            # Whoever ran first paused the other; resume both and see the rest arrive.
            ta.resume_reading()
            tb.resume_reading()
            pa.other = pb.other = None
            await asyncio.sleep(0.05)
            return first, sorted(log)
        finally:
            ta.close()
            tb.close()
            a.close()
            b.close()

    first, log = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert first == 1
    assert log == [('a', b'1'), ('b', b'2')]


def test_pause_and_resume_before_the_queued_event_runs_delivers_once(loop):
    """The queued event of the replaced watch does not run; the new watch delivers
    the data (once) on a later poll."""

    async def main() -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        ta, pa, a = await _pair(loop, 'a', log)
        tb, pb, b = await _pair(loop, 'b', log)

        def bounce(self: Recorder, data: bytes, other: Recorder) -> None:
            self.log.append((self.name, data))
            if other.transport is not None:
                other.transport.pause_reading()
                other.transport.resume_reading()

        pa.data_received = lambda data: bounce(pa, data, pb)  # type: ignore[method-assign]
        pb.data_received = lambda data: bounce(pb, data, pa)  # type: ignore[method-assign]
        try:
            a.send(b'x' * 10)
            b.send(b'y' * 10)
            await asyncio.sleep(0.1)
            return sorted(log)
        finally:
            ta.close()
            tb.close()
            a.close()
            b.close()

    log = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert log == [('a', b'x' * 10), ('b', b'y' * 10)]


def test_reader_runs_in_a_copy_of_the_creating_context(loop):
    """data_received sees what the task that made the transport had set, and what it
    sets itself persists from one event to the next (one context per watch), while
    the task's own context is not touched."""

    async def main() -> tuple[list[str], str]:
        seen: list[str] = []

        class Counting(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                seen.append(request_id.get())
                request_id.set(request_id.get() + '+')

        request_id.set('creator')
        mine, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Counting, mine)
        try:
            for chunk in (b'1', b'2', b'3'):
                peer.send(chunk)
                for _ in range(100):
                    await asyncio.sleep(0.005)
                    if len(seen) == int(chunk):
                        break
            return seen, request_id.get()
        finally:
            transport.close()
            peer.close()

    seen, after = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert seen == ['creator', 'creator+', 'creator++']
    assert after == 'creator'


def test_reader_after_resume_runs_in_the_resuming_context(loop):
    """resume_reading makes a new watch, in a copy of the context it is called in."""

    async def main() -> list[str]:
        seen: list[str] = []

        class Recording(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                seen.append(request_id.get())

        mine, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Recording, mine)
        try:
            transport.pause_reading()

            async def resumer() -> None:
                request_id.set('resumer')
                transport.resume_reading()

            await asyncio.create_task(resumer())
            peer.send(b'x')
            for _ in range(100):
                await asyncio.sleep(0.005)
                if seen:
                    break
            return seen
        finally:
            transport.close()
            peer.close()

    assert loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT)) == ['resumer']


def test_socket_closed_before_reading_starts_reports_through_the_handler(loop):
    """The socket under a new transport is closed before the loop starts reading it:
    the queued start fails with OSError, reported as asyncio reports its
    ``_add_reader`` callback's failure, and no other file's events reach the reader."""

    async def main() -> tuple[list[str], list[bytes]]:
        errors: list[str] = []
        got: list[bytes] = []
        loop.set_exception_handler(
            lambda lp, ctx: errors.append(f'{ctx["message"].split("(")[0]}|{type(ctx.get("exception")).__name__}')
        )

        class Reading(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.append(data)

        mine, peer = socket.socketpair()
        waiter = loop.create_future()
        # The stdlib's factory: __init__ queues connection_made and the reader's start.
        transport = loop._make_socket_transport(mine, Reading(), waiter)  # type: ignore[attr-defined]
        fd = mine.fileno()
        mine.close()
        # Another file takes the number, with data waiting in it.
        other, other_peer = socket.socketpair()
        other_peer.send(b'not yours')
        try:
            await asyncio.sleep(0.05)
            return errors, got
        finally:
            transport.abort()
            for s in (peer, other, other_peer):
                s.close()
            del fd

    errors, got = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert got == []
    assert len(errors) <= 1
    if errors:
        assert errors[0].startswith('Exception in callback ')
        assert errors[0].endswith('|OSError') or errors[0].endswith('|ValueError')


@pytest.mark.parametrize('direction', ['reader', 'writer'])
def test_add_reader_on_a_transports_fd_replaces_its_watch(loop, direction):
    """The loop's own _add_reader/_add_writer (the public ones refuse a transport's
    fd) replace the transport's watch (asyncio cancels the old handle)."""

    async def main() -> tuple[bool, bool, list[bytes]]:
        got: list[bytes] = []
        fired = loop.create_future()

        class Reading(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.append(data)

        mine, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Reading, mine)
        try:
            await asyncio.sleep(0)
            fd = mine.fileno()
            if direction == 'reader':
                loop._add_reader(fd, lambda: fired.done() or fired.set_result(True))  # type: ignore[attr-defined]
            else:
                loop._add_writer(fd, lambda: fired.done() or fired.set_result(True))  # type: ignore[attr-defined]
            peer.send(b'data')
            await asyncio.wait_for(fired, 1.0)
            if direction == 'reader':
                removed = loop._remove_reader(fd)  # type: ignore[attr-defined]
            else:
                removed = loop._remove_writer(fd)  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)
            return fired.result(), removed, got
        finally:
            transport.close()
            peer.close()

    fired, removed, got = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert fired and removed
    if direction == 'reader':
        assert got == []  # the transport's reader was replaced
    else:
        assert got == [b'data']  # only its writer watch was touched


def test_connection_lost_runs_in_the_context_of_close(loop):
    """asyncio queues ``_call_connection_lost`` with call_soon: connection_lost runs in
    a copy of the context close() was called in."""

    async def main() -> list[str]:
        seen: list[str] = []

        class Closing(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                seen.append(request_id.get())

        mine, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Closing, mine)

        async def closer() -> None:
            request_id.set('closer')
            transport.close()

        await asyncio.create_task(closer())
        for _ in range(100):
            await asyncio.sleep(0.005)
            if seen:
                break
        peer.close()
        return seen

    assert loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT)) == ['closer']


def test_connection_lost_raising_is_reported_as_asyncio_reports_it(loop):
    async def main() -> list[tuple[str, str]]:
        reports: list[tuple[str, str]] = []
        loop.set_exception_handler(
            lambda lp, ctx: reports.append((ctx['message'].split('(')[0], type(ctx.get('exception')).__name__))
        )

        class Raising(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                raise ZeroDivisionError('boom')

        mine, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Raising, mine)
        transport.close()
        queued = [getattr(h._callback, '__name__', None) for h in loop._ready]  # type: ignore[attr-defined]
        await asyncio.sleep(0.02)
        peer.close()
        assert '_call_connection_lost' in queued
        return reports

    reports = loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    assert len(reports) == 1
    message, exc_type = reports[0]
    assert message.startswith('Exception in callback ') and message.endswith('._call_connection_lost')
    assert exc_type == 'ZeroDivisionError'


def test_connection_lost_in_debug_mode_is_a_handle_of_its_own(loop):
    """Debug mode: the slow-callback check and _current_handle see asyncio's handle."""

    async def main() -> list[str]:
        names: list[str] = []

        class Watching(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                handle = loop._current_handle  # type: ignore[attr-defined]
                names.append(getattr(handle._callback, '__name__', '?'))

        mine, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Watching, mine)
        transport.close()
        await asyncio.sleep(0.02)
        peer.close()
        return names

    loop.set_debug(True)
    assert loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT)) == ['_call_connection_lost']
