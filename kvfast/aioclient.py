"""The asyncio transport: one pipelined Redis connection, and the asyncio client.

Requests are written to one asyncio connection; a reader task parses replies
with a ``hiredis.Reader`` and hands them to the waiting callers in order.  So
several batches can be in flight on one connection (pipelining across
coroutines), and nothing on the hot path goes through redis.asyncio, whose
packer is pure Python.  ``run`` runs a coroutine on uvloop when it is installed.

On a Redis Cluster (found out at ``open`` from ``INFO cluster``, as the sync
client does) the client holds one such connection per node and routes by slot
with ``kvfast.cluster``'s plan, the one the sync client performs: the slot map
is redis.asyncio's ``RedisCluster``'s (refreshed after a redirection), each
node's payload goes out on its own pipelined connection, all nodes at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar, cast

import hiredis
import psycopg
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException

from kvfast import memory, meta
from kvfast.cluster import Routing, SendJobs, Unit, redirected, route_plan
from kvfast.drivers import pg_connect_kwargs, pg_errors, redis_errors
from kvfast.errors import KvfastError, RedisFull, RedisUnavailable, WriteOutcomeUnknown
from kvfast.keys import Keys
from kvfast.replicas import check_wait, wait_command
from kvfast.resp import REPLY_ERRORS, check_replies, pack, reply_exception, unavailable_reply
from kvfast.scripts import Call, EvalBatch, SendUnits, routed_eval_plan
from kvfast.settings import Settings, redact

__all__ = ["AsyncClient", "AsyncConnection", "AsyncTopology", "run"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(main)
    return uvloop.run(main)


class AsyncConnection:
    """One Redis connection; requests are pipelined and answered in order.

    A request whose replies do not all come within ``timeout`` seconds (or whose
    connection is lost after it was written) raises ``WriteOutcomeUnknown``: Redis
    may have applied it.  The connection is then closed: a late reply would be
    taken for the next request's.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float | None = None) -> None:
        self.timeout = timeout
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader()
        # (future, replies expected, replies so far) in the order requests were sent
        self._pending: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = (
            collections.deque()
        )
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self._error: BaseException | None = None

    @classmethod
    async def open(cls, settings: Settings,
                   address: tuple[str, int] | None = None) -> AsyncConnection:
        """A connection to the server of ``settings.redis_url`` (or to ``address``, a
        cluster node, with the URL's credentials and TLS)."""
        params = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        if address is not None:
            params.pop("path", None)
            params["host"], params["port"] = address
            params.pop("db", None)  # a cluster has database 0 only
        where = redact(settings.redis_url) if address is None else f"{address[0]}:{address[1]}"
        try:
            if "path" in params:
                reader, writer = await asyncio.open_unix_connection(params["path"])
            else:
                context = None
                if settings.redis_url.startswith("rediss://"):
                    context = ssl.create_default_context()
                    if params.get("ssl_cert_reqs") in ("none", "CERT_NONE"):
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(params.get("host", "localhost"),
                                            params.get("port", 6379), ssl=context),
                    timeout=settings.redis_connect_timeout,
                )
        except (TimeoutError, OSError) as exc:
            raise RedisUnavailable(
                f"Redis at {where} is unavailable: "
                f"{exc or 'no connection within the connect timeout'}"
            ) from exc
        conn = cls(reader, writer, settings.redis_socket_timeout)
        hello: list[bytes] = []
        if params.get("password"):
            auth = ["AUTH", params["password"]]
            if params.get("username"):
                auth.insert(1, params["username"])
            hello.append(pack(tuple(auth)))
        if params.get("db"):
            hello.append(pack(("SELECT", params["db"])))
        if hello:
            for reply in await conn.execute(b"".join(hello), len(hello)):
                if isinstance(reply, REPLY_ERRORS):
                    await conn.close()
                    raise reply_exception(reply, "the connection set-up") from reply
        return conn

    @property
    def broken(self) -> bool:
        """The connection failed: every later request is refused (open a new one)."""
        return self._error is not None

    async def execute(self, payload: bytes, nreplies: int, raw: bool = False) -> list[Any]:
        """Send a packed buffer; wait for its ``nreplies`` replies (errors as values).

        A "cannot serve now" reply raises ``RedisUnavailable`` unless ``raw`` (the
        cluster router reads TRYAGAIN / CLUSTERDOWN as redirections)."""
        if self._error is not None:
            raise RedisUnavailable(f"Redis connection lost: {self._error}") from self._error
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((future, nreplies, []))
        self._writer.write(payload)
        try:
            await self._writer.drain()
            # shield: a timeout must not cancel the future, which stays in _pending
            # until _fail hands every caller its error.
            replies = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except WriteOutcomeUnknown:
            raise  # the reader lost the connection: _fail said so already
        except (TimeoutError, OSError, ConnectionError) as exc:
            what = (f"no reply within the socket timeout ({self.timeout} s)"
                    if isinstance(exc, TimeoutError) else f"connection lost: {exc}")
            self._fail(exc, what)
            with contextlib.suppress(BaseException):
                future.exception()  # retrieved: it is raised below, as this call's error
            raise WriteOutcomeUnknown(
                f"Redis: {what} after the request was sent; it may have been applied"
            ) from exc
        busy = None if raw else unavailable_reply(replies)
        if busy is not None:
            raise reply_exception(busy, "a batch") from busy
        return replies

    async def _read_loop(self) -> None:
        parser = self._parser
        pending = self._pending
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                parser.feed(data)
                reply = parser.gets()
                while reply is not False:
                    future, expected, replies = pending[0]
                    replies.append(reply)
                    if len(replies) == expected:
                        pending.popleft()
                        if not future.done():
                            future.set_result(replies)
                    reply = parser.gets()
        except (OSError, ConnectionError, hiredis.ProtocolError) as exc:
            self._fail(exc, f"connection lost: {exc}")

    def _fail(self, exc: BaseException, what: str) -> None:
        """Refuse every later request and fail every waiting one (all were written)."""
        if self._error is None:
            self._error = exc
        pending = self._pending
        while pending:
            future, _, _ = pending.popleft()
            if not future.done():
                future.set_exception(WriteOutcomeUnknown(
                    f"Redis: {what} after the request was sent; it may have been applied"))
        self._writer.close()

    async def close(self) -> None:
        self._task.cancel()
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
        # Let the reader task finish its cancellation: a task destroyed pending
        # (its loop closed first) is an error report at interpreter exit.  What
        # it failed with, if anything, was already handed to the waiting callers.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class AsyncTopology(Routing):
    """The slot map of one cluster (redis.asyncio's) and one connection per node."""

    def __init__(self, cluster: AsyncRedisCluster, settings: Settings, tags: list[str]) -> None:
        super().__init__(tags, settings.cluster_retry_ms)
        self.cluster = cluster
        self.settings = settings
        self._conns: dict[str, AsyncConnection] = {}

    @classmethod
    async def open(cls, settings: Settings, tags: list[str]) -> AsyncTopology:
        with redis_errors(settings):
            cluster = AsyncRedisCluster.from_url(
                settings.redis_url, socket_timeout=settings.redis_socket_timeout,
                socket_connect_timeout=settings.redis_connect_timeout)
            try:
                await cluster.initialize()
            except BaseException:
                await cluster.aclose()
                raise
        return cls(cluster, settings, tags)

    def node_of_slot(self, slot: int) -> str:
        name: str = self.cluster.nodes_manager.get_node_from_slot(slot).name
        return name

    def primary_names(self) -> list[str]:
        return [node.name for node in self.cluster.get_primaries()]

    async def conn_of(self, name: str) -> AsyncConnection:
        """The pipelined connection to node ``name`` (opened on first use, and again
        after it broke)."""
        conn = self._conns.get(name)
        if conn is not None and not conn.broken:
            return conn
        host, port = name.rsplit(":", 1)
        fresh = await AsyncConnection.open(self.settings, (host, int(port)))
        conn = self._conns.get(name)
        if conn is not None and not conn.broken:  # another coroutine opened one meanwhile
            await fresh.close()
            return conn
        if conn is not None:
            await conn.close()
        self._conns[name] = fresh
        return fresh

    async def send_many(
            self, jobs: list[tuple[str, bytes, int]]) -> list[list[Any] | BaseException]:
        """Every job's payload on its node's connection, all at once (``SendJobs``)."""
        async def one(name: str, payload: bytes, nreplies: int) -> list[Any] | BaseException:
            try:
                conn = await self.conn_of(name)
                replies = await conn.execute(payload, nreplies, raw=True)
            except KvfastError as exc:  # RedisUnavailable: nothing sent; else unknown
                return exc
            busy = unavailable_reply(replies)
            if busy is not None and not redirected([busy]):
                return reply_exception(busy, "a batch", name)
            return replies

        return list(await asyncio.gather(*(one(*job) for job in jobs)))

    async def run(self, units: Sequence[Unit],
                  tail: bytes = b"") -> list[list[Any] | BaseException]:
        """``kvfast.cluster.route_plan``, awaited."""
        plan = route_plan(units, self.node_of_slot, tail, self.retry_ms)
        try:
            step = next(plan)
            while True:
                if isinstance(step, SendJobs):
                    step = plan.send(await self.send_many(step.jobs))
                    continue
                await asyncio.sleep(step.pause_s)
                # every node unreachable for now: the next attempt tells
                with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
                    await self.cluster.nodes_manager.initialize()
                step = plan.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close()
        await self.cluster.aclose()


class AsyncClient:
    """An asyncio Redis connection (one per node on a cluster) + key layout + optional
    async PostgreSQL connection."""

    def __init__(self, settings: Settings, conn: AsyncConnection | None,
                 topology: AsyncTopology | None = None) -> None:
        self.settings = settings
        self._conn = conn
        self.topology = topology
        self.keys = Keys(settings.namespace, settings.partitions)
        self._pg: psycopg.AsyncConnection[Any] | None = None

    @property
    def conn(self) -> AsyncConnection:
        """The connection to the one Redis (on a cluster, commands go by slot)."""
        if self._conn is None:
            raise RuntimeError("AsyncClient.conn on a Redis Cluster: route by slot "
                               "(send_units)")
        return self._conn

    @classmethod
    async def open(cls, settings: Settings | None = None) -> AsyncClient:
        settings = settings if settings is not None else Settings.from_env()
        conn: AsyncConnection | None = await AsyncConnection.open(settings)
        topology = None
        try:
            assert conn is not None
            (info,) = await conn.execute(pack(("INFO", "cluster")), 1)
            if isinstance(info, bytes) and b"cluster_enabled:1" in info:
                await conn.close()
                conn = None
                topology = await AsyncTopology.open(
                    settings, Keys(settings.namespace, settings.partitions).tags)
        except BaseException:
            if conn is not None:
                await conn.close()
            raise
        client = cls(settings, conn, topology)
        try:
            await client.check_partitions()
        except BaseException:
            await client.close()  # a refused start must not leak its connection
            raise
        return client

    async def execute(self, payload: bytes, nreplies: int) -> list[Any]:
        """Send a packed buffer to the one Redis; every reply (errors as values)."""
        return await self.conn.execute(payload, nreplies)

    async def send_units(self, units: Sequence[Unit],
                         wait: bool = False) -> list[list[Any] | BaseException]:
        """Each unit's replies, or the error of its node (cluster only; see
        ``Client.send_units``)."""
        assert self.topology is not None, "send_units is for a Redis Cluster"
        return await self.topology.run(units, wait_command(self.settings) if wait else b"")

    async def execute_units(self, units: Sequence[Unit], wait: bool = False) -> list[list[Any]]:
        """Each unit's replies (cluster only); the first failure is raised."""
        results = await self.send_units(units, wait)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return cast(list[list[Any]], results)

    async def check_partitions(self) -> None:
        """The start-up check of ``kvfast.meta`` (eviction policy, partitions, layout);
        on a cluster, on the node of the meta hash (as the sync client)."""
        plan = meta.check_plan(self.settings, self.keys)
        topology = self.topology
        slot = None if topology is None else topology.slot_of_key(self.keys.meta)
        try:
            payload, nreplies = next(plan)
            while True:
                if slot is None:
                    replies = await self.conn.execute(payload, nreplies)
                else:
                    (replies,) = await self.execute_units([Unit(slot, payload, nreplies)])
                    busy = unavailable_reply(replies)
                    if busy is not None:
                        raise reply_exception(busy, "the start-up check") from busy
                payload, nreplies = plan.send(replies)
        except StopIteration:
            pass

    async def full(self, exc: RedisFull) -> RedisFull:
        """``exc`` with the backlog that waits for the drain in its message (best effort)."""
        try:
            backlog: memory.Backlog | None
            if self.topology is not None:  # a payload over every partition spans slots
                keys, slots = self.keys, self.topology.partition_slots
                units = [Unit(slots[p], pack(("LLEN", keys.queues[p])) + pack(
                    ("LLEN", keys.dead[p])), 2) for p in range(keys.partitions)]
                counts = await self.execute_units(units)
                backlog = memory.Backlog(sum(int(c[0]) for c in counts), None,
                                         sum(int(c[1]) for c in counts), None, None)
            else:
                payload, nreplies = meta.backlog_payload(self.keys)
                backlog = meta.backlog_from(await self.conn.execute(payload, nreplies))
        except KvfastError:
            backlog = None
        return RedisFull(memory.full_message(str(exc), backlog))

    async def pg(self) -> psycopg.AsyncConnection[Any]:
        if self._pg is None or self._pg.closed or self._pg.broken:
            kwargs = pg_connect_kwargs(self.settings)
            with pg_errors(self.settings):
                self._pg = await psycopg.AsyncConnection.connect(**kwargs)
        return self._pg

    async def eval_many(self, script: str, calls: Sequence[Call],
                        wait_keys: Sequence[Any] | None = None) -> list[Any]:
        """Pipelined EVALSHA calls; SCRIPT LOAD and retry on NOSCRIPT (``Client.eval_many``:
        routed by slot on a cluster; ``wait_keys``: writes, ``wait_replicas`` applies)."""
        if not calls:
            return []
        batch = EvalBatch(script, calls)
        tail = wait_command(self.settings) if wait_keys is not None else b""
        waited = None
        try:
            if self.topology is not None:
                await self._eval_routed(batch, wait_keys)
                return batch.results
            while True:
                replies = await self.conn.execute(batch.payload() + tail,
                                                  len(batch.pending) + bool(tail))
                waited = replies.pop() if tail else None
                if not batch.take(replies):
                    break
                await self.conn.execute(batch.load_command, 1)
        except RedisFull as exc:
            raise await self.full(exc) from exc.__cause__
        if tail:
            check_wait(self.settings, waited, lambda: list(wait_keys or []), f"{script}.lua")
        return batch.results

    async def _eval_routed(self, batch: EvalBatch, wait_keys: Sequence[Any] | None) -> None:
        """``scripts.routed_eval_plan``, awaited."""
        topology = self.topology
        assert topology is not None
        plan = routed_eval_plan(batch, topology.slot_of_key, self.settings, wait_keys)
        try:
            step = next(plan)
            while True:
                if isinstance(step, SendUnits):
                    step = plan.send(await self.execute_units(step.units, step.wait))
                    continue
                for name in topology.primary_names():
                    conn = await topology.conn_of(name)
                    (reply,) = await conn.execute(step.command, 1)
                    check_replies([reply], "SCRIPT LOAD")
                step = plan.send(None)
        except StopIteration:
            pass

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        if self.topology is not None:
            await self.topology.close()
        if self._pg is not None:
            await self._pg.close()
