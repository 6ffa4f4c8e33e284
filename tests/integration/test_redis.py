"""redis-py's asyncio client against a real redis-server, on oxloop and on the stdlib loop:
plain TCP, TLS (verified against the test CA) and a Unix socket.

The server (tests/integration/_dbservers.py) is started once per session; each test
opens its own clients on a fresh loop, works under its own keys, and closes its clients
before the loop closes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid

import pytest
import redis.asyncio as aioredis
from _dbservers import CERTS, RedisServer, running_redis
from _net import run
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

TIMEOUT = 20.0


@pytest.fixture(scope='module')
def redis_server():
    """The server, started once: only this module uses it, and it stops when the module
    ends rather than outliving it as a child of the test process."""
    with running_redis() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own: the server is shared by the whole session."""
    return f'oxl:{uuid.uuid4().hex[:12]}:'


def _client(rs: RedisServer, **kwargs) -> aioredis.Redis:
    return aioredis.Redis(host=rs.host, port=rs.port, socket_timeout=10, **kwargs)


def test_get_set(loop, redis_server: RedisServer, prefix: str):
    async def main():
        r = _client(redis_server, decode_responses=True)
        try:
            assert await r.ping() is True
            assert await r.set(prefix + 'a', 'hello') is True
            assert await r.get(prefix + 'a') == 'hello'
            assert await r.get(prefix + 'missing') is None
            assert await r.incrby(prefix + 'n', 5) == 5
            assert await r.set(prefix + 'tmp', 'x', px=50_000, nx=True) is True
            assert await r.set(prefix + 'tmp', 'y', nx=True) is None
            assert 0 < await r.pttl(prefix + 'tmp') <= 50_000
            await r.hset(prefix + 'h', mapping={'f1': 'v1', 'f2': 'v2'})
            assert await r.hgetall(prefix + 'h') == {'f1': 'v1', 'f2': 'v2'}
            # A value larger than a socket buffer, both ways.
            big = 'z' * 3_000_000
            await r.set(prefix + 'big', big)
            assert await r.get(prefix + 'big') == big
            assert await r.delete(prefix + 'a', prefix + 'n', prefix + 'tmp', prefix + 'h', prefix + 'big') == 5
        finally:
            await r.aclose()

    run(loop, main(), TIMEOUT)


def test_pipelines(loop, redis_server: RedisServer, prefix: str):
    async def main():
        r = _client(redis_server)
        try:
            async with r.pipeline(transaction=True) as pipe:
                for i in range(2000):
                    pipe.set(f'{prefix}{i}', i)
                pipe.incr(prefix + 'counter')
                results = await pipe.execute()
            assert results == [True] * 2000 + [1]
            async with r.pipeline(transaction=False) as pipe:
                for i in range(2000):
                    pipe.get(f'{prefix}{i}')
                values = await pipe.execute()
            assert values == [str(i).encode() for i in range(2000)]
            # An error inside a pipeline is reported in its place, not raised.
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(prefix + 's', 'text').incr(prefix + 's').get(prefix + 's')
                ok, err, value = await pipe.execute(raise_on_error=False)
            assert ok is True and isinstance(err, Exception) and value == b'text'
        finally:
            await r.aclose()

    run(loop, main(), TIMEOUT)


def test_pubsub(loop, redis_server: RedisServer, prefix: str):
    count = 200

    async def main():
        sub_client = _client(redis_server, decode_responses=True)
        pub_client = _client(redis_server, decode_responses=True)
        pubsub = sub_client.pubsub()
        try:
            await pubsub.subscribe(prefix + 'news')
            await pubsub.psubscribe(prefix + 'p.*')

            async def subscriber() -> list[tuple[str, str]]:
                got = []
                async for msg in pubsub.listen():
                    if msg['type'] in ('message', 'pmessage'):
                        got.append((msg['channel'], msg['data']))
                        if len(got) == count + 1:
                            return got
                raise AssertionError('pubsub.listen() ended')

            task = asyncio.create_task(subscriber())
            # Both subscriptions are in place once the server counts them.
            async with asyncio.timeout(5):
                while (await pub_client.pubsub_numsub(prefix + 'news'))[0][1] != 1:
                    await asyncio.sleep(0.01)
            for i in range(count):
                assert await pub_client.publish(prefix + 'news', f'm{i}') == 1
            assert await pub_client.publish(prefix + 'p.x', 'patterned') == 1
            got = await asyncio.wait_for(task, 10)
            assert got[:count] == [(prefix + 'news', f'm{i}') for i in range(count)]
            assert got[count] == (prefix + 'p.x', 'patterned')
            await pubsub.unsubscribe()
            await pubsub.punsubscribe()
        finally:
            await pubsub.aclose()
            await sub_client.aclose()
            await pub_client.aclose()

    run(loop, main(), TIMEOUT)


def test_blocking_pop(loop, redis_server: RedisServer, prefix: str):
    async def main():
        r = _client(redis_server)
        pusher = _client(redis_server)
        try:
            # Nothing to pop: the server answers nil when its timeout ends.
            started = time.monotonic()
            assert await r.blpop([prefix + 'empty'], timeout=0.3) is None
            assert 0.25 <= time.monotonic() - started < 5
            # A pop that waits is woken by another client's push.
            waiter = asyncio.create_task(r.blpop([prefix + 'q1', prefix + 'q2'], timeout=10))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            await pusher.rpush(prefix + 'q2', 'job')
            assert await asyncio.wait_for(waiter, 5) == (prefix.encode() + b'q2', b'job')
            # BRPOPLPUSH's successor, BLMOVE, moves between lists.
            await pusher.rpush(prefix + 'src', 'a', 'b')
            assert await r.blmove(prefix + 'src', prefix + 'dst', 1, 'LEFT', 'RIGHT') == b'a'
            assert await r.lrange(prefix + 'dst', 0, -1) == [b'a']
            await r.delete(prefix + 'src', prefix + 'dst')
        finally:
            await r.aclose()
            await pusher.aclose()

    run(loop, main(), TIMEOUT)


def test_many_concurrent_clients_from_a_pool(loop, redis_server: RedisServer, prefix: str):
    tasks = 300

    name = prefix.replace(':', '-')  # a client name has no spaces; the server counts ours

    async def main():
        pool = aioredis.BlockingConnectionPool(
            host=redis_server.host, port=redis_server.port, max_connections=32, timeout=10, client_name=name
        )
        r = aioredis.Redis(connection_pool=pool)
        try:

            async def worker(i: int) -> None:
                await r.incr(prefix + 'hits')
                await r.sadd(prefix + 'workers', i)

            await asyncio.gather(*(worker(i) for i in range(tasks)))
            assert int(await r.get(prefix + 'hits')) == tasks
            assert await r.scard(prefix + 'workers') == tasks
            # The workers overlapped: the pool opened more than one connection, and no
            # more than its bound.
            clients = [c for c in await r.client_list() if c['name'] == name]
            assert 1 < len(clients) <= 32
            await r.delete(prefix + 'hits', prefix + 'workers')
        finally:
            await r.aclose()
            await pool.aclose()

    run(loop, main(), TIMEOUT)


def test_tls_verified_against_the_ca(loop, redis_server: RedisServer, prefix: str):
    async def main():
        r = aioredis.Redis(
            host=redis_server.host,
            port=redis_server.tls_port,
            ssl=True,
            ssl_ca_certs=redis_server.ca,
            ssl_cert_reqs='required',
            ssl_check_hostname=True,
            socket_timeout=10,
        )
        try:
            assert await r.ping() is True
            await r.set(prefix + 'tls', b'x' * 200_000)
            assert await r.get(prefix + 'tls') == b'x' * 200_000
            assert (await r.client_info())['laddr'].startswith('127.0.0.1:')
            await r.delete(prefix + 'tls')
        finally:
            await r.aclose()

    run(loop, main(), TIMEOUT)


def test_tls_wrong_ca_is_refused(loop, redis_server: RedisServer):
    async def main():
        r = aioredis.Redis(
            host=redis_server.host,
            port=redis_server.tls_port,
            ssl=True,
            ssl_ca_certs=f'{CERTS}/other-ca.pem',
            ssl_cert_reqs='required',
            socket_timeout=10,
            retry=Retry(NoBackoff(), 0),  # redis-py retries a failed connect with backoff by default
        )
        try:
            with pytest.raises(RedisConnectionError) as refused:
                await r.ping()
            # redis-py's message differs across versions; the cause is the ssl module's.
            cause = refused.value.__cause__ or refused.value.__context__
            assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
        finally:
            await r.aclose()

    run(loop, main(), TIMEOUT)


def test_unix_socket(loop, redis_server: RedisServer, prefix: str):
    async def main():
        r = aioredis.Redis(unix_socket_path=redis_server.unix_socket, socket_timeout=10)
        try:
            assert await r.ping() is True
            await r.set(prefix + 'u', 'via unix')
            assert await r.get(prefix + 'u') == b'via unix'
            # The server sees a Unix socket client.
            assert (await r.client_info())['laddr'] == redis_server.unix_socket + ':0'
            await r.delete(prefix + 'u')
        finally:
            await r.aclose()

    run(loop, main(), TIMEOUT)


def test_reconnects_after_the_server_drops_it(loop, redis_server: RedisServer, prefix: str):
    async def main():
        # One retry on a lost connection, whatever the version's default.
        r = _client(
            redis_server,
            single_connection_client=True,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        admin = _client(redis_server)
        try:
            await r.set(prefix + 'k', 'v')
            my_id = await r.client_id()
            assert await admin.client_kill_filter(_id=my_id) == 1
            # redis-py finds the connection closed, opens a new one and runs the command.
            assert await r.get(prefix + 'k') == b'v'
            assert await r.client_id() != my_id
            await r.delete(prefix + 'k')
        finally:
            await r.aclose()
            await admin.aclose()

    run(loop, main(), TIMEOUT)
