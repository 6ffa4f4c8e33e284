"""asyncpg against a real PostgreSQL server, on oxloop and on the stdlib loop.

The server (tests/integration/_dbservers.py) is started once per session; each test
opens its own connections on a fresh loop and closes them before the loop closes.
"""

from __future__ import annotations

import asyncio
import io
import os
import ssl
import time

import asyncpg
import pytest
from _dbservers import CERTS, PostgresServer, running_postgres
from _net import run

TIMEOUT = 20.0


@pytest.fixture(scope='module')
def postgres_server():
    """The server, started once: only this module uses it, and it stops when the module
    ends rather than outliving it as a child of the test process."""
    with running_postgres() as server:
        yield server


async def _connect(pg: PostgresServer, *, unix: bool = False, **kwargs) -> asyncpg.Connection:
    # The server offers TLS, which asyncpg's default sslmode ('prefer') would take: plain
    # unless the test asks.
    kwargs.setdefault('ssl', False)
    host = pg.socket_dir if unix else pg.host
    return await asyncpg.connect(host=host, port=pg.port, user=pg.user, database=pg.database, **kwargs)


def _tls_context(pg: PostgresServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pg.ca)  # verifies the chain and the host name


@pytest.mark.parametrize('how', ['tcp', 'unix', 'tls'])
def test_connect(loop, postgres_server: PostgresServer, how: str):
    async def main():
        tls = _tls_context(postgres_server) if how == 'tls' else False
        conn = await _connect(postgres_server, unix=how == 'unix', ssl=tls)
        try:
            assert await conn.fetchval('SELECT 1 + 1') == 2
            # The server sees the connection the way it was made.
            client_addr = await conn.fetchval('SELECT inet_client_addr()::text')
            assert client_addr == (None if how == 'unix' else '127.0.0.1/32')
            on_tls = await conn.fetchval('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
            assert on_tls is (how == 'tls')
            assert conn.get_server_version().major >= 10
            # Enough bytes both ways to take several TLS records.
            payload = 'p' * 300_000
            assert await conn.fetchval('SELECT $1::text', payload) == payload
        finally:
            await conn.close()
        assert conn.is_closed()

    run(loop, main(), TIMEOUT)


def test_connect_by_dsn_with_verified_tls(loop, postgres_server: PostgresServer):
    dsn = f'{postgres_server.dsn}?sslmode=verify-full&sslrootcert={postgres_server.ca}'

    async def main():
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval('SELECT current_user') == 'postgres'
            assert await conn.fetchval('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()') is True
        finally:
            await conn.close()

    run(loop, main(), TIMEOUT)


def test_tls_wrong_ca_is_refused(loop, postgres_server: PostgresServer):
    async def main():
        ctx = ssl.create_default_context(cafile=os.path.join(CERTS, 'other-ca.pem'))
        with pytest.raises(ssl.SSLCertVerificationError):
            await _connect(postgres_server, ssl=ctx)

    run(loop, main(), TIMEOUT)


def test_simple_queries(loop, postgres_server: PostgresServer):
    async def main():
        conn = await _connect(postgres_server)
        try:
            await conn.execute('CREATE TEMP TABLE items (id int PRIMARY KEY, name text, tags text[], data jsonb)')
            status = await conn.execute(
                """INSERT INTO items VALUES (1, 'one', '{a,b}', '{"k": 1}'), (2, 'two', '{}', NULL)"""
            )
            assert status == 'INSERT 0 2'
            rows = await conn.fetch('SELECT id, name, tags, data FROM items ORDER BY id')
            assert [tuple(r) for r in rows] == [(1, 'one', ['a', 'b'], '{"k": 1}'), (2, 'two', [], None)]
            row = await conn.fetchrow('SELECT * FROM items WHERE name = $1', 'two')
            assert row['id'] == 2
            assert await conn.fetchrow('SELECT * FROM items WHERE id = $1', 99) is None
            # Several statements in one simple-protocol execute.
            await conn.execute("UPDATE items SET name = 'uno' WHERE id = 1; DELETE FROM items WHERE id = 2")
            assert await conn.fetchval("SELECT string_agg(name, ',') FROM items") == 'uno'
            # A server-side error arrives as the right exception, and the connection goes on.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute("INSERT INTO items VALUES (1, 'dup', '{}', NULL)")
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.execute('SELEKT 1')
            assert await conn.fetchval('SELECT count(*) FROM items') == 1
        finally:
            await conn.close()

    run(loop, main(), TIMEOUT)


def test_prepared_statements(loop, postgres_server: PostgresServer):
    async def main():
        conn = await _connect(postgres_server)
        try:
            stmt = await conn.prepare("SELECT $1::int * 2, $2::text || '!'")
            assert [a.name for a in stmt.get_attributes()] == ['?column?', '?column?']
            for i in range(50):
                assert tuple(await stmt.fetchrow(i, str(i))) == (i * 2, f'{i}!')
            await conn.execute('CREATE TEMP TABLE kv (k int, v text)')
            await conn.executemany('INSERT INTO kv VALUES ($1, $2)', [(i, f'v{i}') for i in range(500)])
            count = await conn.prepare('SELECT count(*) FROM kv WHERE k < $1')
            assert await count.fetchval(100) == 100
            assert await count.fetchval(1000) == 500
        finally:
            await conn.close()

    run(loop, main(), TIMEOUT)


def test_transaction_rollback_and_commit(loop, postgres_server: PostgresServer):
    class Boom(Exception):
        pass

    async def main():
        conn = await _connect(postgres_server)
        try:
            await conn.execute('CREATE TEMP TABLE t (x int)')
            with pytest.raises(Boom):
                async with conn.transaction():
                    await conn.execute('INSERT INTO t VALUES (1), (2)')
                    assert await conn.fetchval('SELECT count(*) FROM t') == 2
                    raise Boom
            assert not conn.is_in_transaction()
            assert await conn.fetchval('SELECT count(*) FROM t') == 0
            async with conn.transaction():
                await conn.execute('INSERT INTO t VALUES (3)')
                # A savepoint rolled back inside a committed transaction.
                with pytest.raises(Boom):
                    async with conn.transaction():
                        await conn.execute('INSERT INTO t VALUES (4)')
                        raise Boom
            assert await conn.fetchval('SELECT array_agg(x) FROM t') == [3]
        finally:
            await conn.close()

    run(loop, main(), TIMEOUT)


def test_copy_round_trip(loop, postgres_server: PostgresServer):
    records = [(i, f'name {i}', i * 0.5) for i in range(20_000)]

    async def main():
        conn = await _connect(postgres_server)
        try:
            await conn.execute('CREATE TEMP TABLE src (id int, name text, score float8)')
            status = await conn.copy_records_to_table('src', records=records)
            assert status == f'COPY {len(records)}'
            out = io.BytesIO()
            status = await conn.copy_from_query('SELECT * FROM src ORDER BY id', output=out, format='csv')
            assert status == f'COPY {len(records)}'
            lines = out.getvalue().decode().splitlines()
            assert lines[:2] == ['0,name 0,0', '1,name 1,0.5']
            assert len(lines) == len(records)
            # And back in from the bytes COPY gave out.
            await conn.execute('CREATE TEMP TABLE dst (LIKE src)')
            status = await conn.copy_to_table('dst', source=io.BytesIO(out.getvalue()), format='csv')
            assert status == f'COPY {len(records)}'
            diff = await conn.fetchval('SELECT count(*) FROM (SELECT * FROM src EXCEPT SELECT * FROM dst) d')
            assert diff == 0
        finally:
            await conn.close()

    run(loop, main(), TIMEOUT)


def test_listen_notify(loop, postgres_server: PostgresServer):
    async def main():
        listener = await _connect(postgres_server)
        notifier = await _connect(postgres_server, unix=True)
        got: list[tuple[str, str]] = []
        all_in = asyncio.get_running_loop().create_future()

        def on_notify(conn, pid, channel, payload):
            got.append((channel, payload))
            if len(got) == 10 and not all_in.done():
                all_in.set_result(pid)

        try:
            await listener.add_listener('oxl_chan', on_notify)
            for i in range(10):
                await notifier.execute(f"NOTIFY oxl_chan, 'message {i}'")
            pid = await asyncio.wait_for(all_in, 5)
            assert pid == notifier.get_server_pid()
            assert got == [('oxl_chan', f'message {i}') for i in range(10)]
            # A notification sent while the listener is idle arrives with no query running.
            await listener.remove_listener('oxl_chan', on_notify)
            idle = asyncio.get_running_loop().create_future()
            await listener.add_listener('oxl_idle', lambda *a: idle.done() or idle.set_result(a[3]))
            await notifier.execute("SELECT pg_notify('oxl_idle', 'while idle')")
            assert await asyncio.wait_for(idle, 5) == 'while idle'
        finally:
            await listener.close()
            await notifier.close()

    run(loop, main(), TIMEOUT)


def test_pool_concurrent_queries(loop, postgres_server: PostgresServer):
    async def main():
        async with asyncpg.create_pool(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            database=postgres_server.database,
            ssl=False,
            min_size=2,
            max_size=8,
        ) as pool:

            async def one(i: int):
                async with pool.acquire() as conn:
                    # The sleep holds the connection, so the pool has to open more.
                    return await conn.fetchrow('SELECT $1::int AS i, pg_backend_pid() AS pid, pg_sleep(0.02)', i)

            rows = await asyncio.gather(*(one(i) for i in range(64)))
            assert [r['i'] for r in rows] == list(range(64))
            pids = {r['pid'] for r in rows}
            assert 2 <= len(pids) <= 8
            # The pool's own shortcuts.
            assert await pool.fetchval('SELECT 40 + 2') == 42
            assert await pool.execute('SELECT 1') == 'SELECT 1'

    run(loop, main(), TIMEOUT)


def test_cancelled_query_leaves_connection_usable(loop, postgres_server: PostgresServer):
    async def main():
        conn = await _connect(postgres_server)
        try:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(conn.fetchval('SELECT pg_sleep(30)'), 0.3)
            # asyncpg cancels the query on the server (a cancel request on a new
            # connection) before the connection is usable again.
            assert await asyncio.wait_for(conn.fetchval('SELECT 7'), 5) == 7
            assert time.monotonic() - started < 10
            assert not conn.is_in_transaction()
            # asyncpg's own timeout goes the same way.
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute('SELECT pg_sleep(30)', timeout=0.2)
            assert await conn.fetchval('SELECT 8') == 8
        finally:
            await conn.close()

    run(loop, main(), TIMEOUT)


def test_large_result(loop, postgres_server: PostgresServer):
    async def main():
        conn = await _connect(postgres_server)
        try:
            rows = await conn.fetch("SELECT g, md5(g::text) || repeat('x', 64) FROM generate_series(1, 100000) g")
            assert len(rows) == 100_000
            assert rows[-1][0] == 100_000
            assert all(len(r[1]) == 96 for r in rows[::997])
            # A cursor streams the same rows in prefetch-sized batches.
            total = 0
            async with conn.transaction():
                async for r in conn.cursor('SELECT g FROM generate_series(1, 50000) g', prefetch=1000):
                    total += r[0]
            assert total == 50000 * 50001 // 2
        finally:
            await conn.close()

    run(loop, main(), TIMEOUT)


def test_server_ends_the_connection(loop, postgres_server: PostgresServer):
    async def main():
        victim = await _connect(postgres_server)
        admin = await _connect(postgres_server, unix=True)
        ended = asyncio.get_running_loop().create_future()
        victim.add_termination_listener(lambda conn: ended.done() or ended.set_result(conn))
        try:
            assert await admin.fetchval('SELECT pg_terminate_backend($1)', victim.get_server_pid()) is True
            # The idle connection learns it from the server's FATAL and the end of stream.
            assert await asyncio.wait_for(ended, 5) is victim
            assert victim.is_closed()
            with pytest.raises(asyncpg.InterfaceError):
                await victim.fetchval('SELECT 1')
        finally:
            await victim.close()
            await admin.close()

    run(loop, main(), TIMEOUT)
