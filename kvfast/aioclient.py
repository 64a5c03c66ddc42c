"""The asyncio transport: one pipelined Redis connection, and the asyncio client.

Requests are written to one asyncio connection; a reader task parses replies
with a ``hiredis.Reader`` and hands them to the waiting callers in order.  So
several batches can be in flight on one connection (pipelining across
coroutines), and nothing on the hot path goes through redis.asyncio, whose
packer is pure Python.  ``run`` runs a coroutine on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import hiredis
import psycopg
from redis.connection import parse_url

from kvfast import memory, meta
from kvfast.drivers import pg_connect_kwargs, pg_errors
from kvfast.errors import ConfigError, KvfastError, RedisFull, RedisUnavailable, WriteOutcomeUnknown
from kvfast.keys import Keys
from kvfast.resp import REPLY_ERRORS, pack, reply_exception, unavailable_reply
from kvfast.scripts import Call, EvalBatch
from kvfast.settings import Settings, redact

__all__ = ["AsyncClient", "AsyncConnection", "run"]

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
    async def open(cls, settings: Settings) -> AsyncConnection:
        params = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
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
                f"Redis at {redact(settings.redis_url)} is unavailable: "
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

    async def execute(self, payload: bytes, nreplies: int) -> list[Any]:
        """Send a packed buffer; wait for its ``nreplies`` replies (errors as values)."""
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
        except (TimeoutError, OSError, ConnectionError) as exc:
            what = (f"no reply within the socket timeout ({self.timeout} s)"
                    if isinstance(exc, TimeoutError) else f"connection lost: {exc}")
            self._fail(exc, what)
            with contextlib.suppress(BaseException):
                future.exception()  # retrieved: it is raised below, as this call's error
            raise WriteOutcomeUnknown(
                f"Redis: {what} after the request was sent; it may have been applied"
            ) from exc
        busy = unavailable_reply(replies)
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


class AsyncClient:
    """An asyncio Redis connection + key layout + optional async PostgreSQL connection."""

    def __init__(self, settings: Settings, conn: AsyncConnection) -> None:
        self.settings = settings
        self.conn = conn
        self.keys = Keys(settings.namespace, settings.partitions)
        self._pg: psycopg.AsyncConnection[Any] | None = None

    @classmethod
    async def open(cls, settings: Settings | None = None) -> AsyncClient:
        settings = settings if settings is not None else Settings.from_env()
        client = cls(settings, await AsyncConnection.open(settings))
        try:
            await client.check_partitions()
        except BaseException:
            await client.close()  # a refused start must not leak its connection
            raise
        return client

    async def check_partitions(self) -> None:
        """The start-up check of ``kvfast.meta`` (eviction policy, partitions, layout)."""
        if self.settings.wait_replicas:
            raise ConfigError("kvfast.aio does not wait for replicas (wait_replicas / "
                              "KVFAST_WAIT_REPLICAS) yet: use kvfast.Repository for that")
        (info,) = await self.conn.execute(pack(("INFO", "cluster")), 1)
        if isinstance(info, bytes) and b"cluster_enabled:1" in info:
            raise ConfigError(
                f"Redis at {redact(self.settings.redis_url)} is a Redis Cluster node: "
                "kvfast.aio runs on one Redis only so far; use kvfast.Repository (it "
                "routes by slot) on a cluster")
        plan = meta.check_plan(self.settings, self.keys)
        try:
            payload, nreplies = next(plan)
            while True:
                payload, nreplies = plan.send(await self.conn.execute(payload, nreplies))
        except StopIteration:
            pass

    async def full(self, exc: RedisFull) -> RedisFull:
        """``exc`` with the backlog that waits for the drain in its message (best effort)."""
        try:
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

    async def eval_many(self, script: str, calls: Sequence[Call]) -> list[Any]:
        """Pipelined EVALSHA calls; SCRIPT LOAD and retry on NOSCRIPT."""
        if not calls:
            return []
        batch = EvalBatch(script, calls)
        try:
            while batch.take(await self.conn.execute(batch.payload(), len(batch.pending))):
                await self.conn.execute(batch.load_command, 1)
        except RedisFull as exc:
            raise await self.full(exc) from exc.__cause__
        return batch.results

    async def close(self) -> None:
        await self.conn.close()
        if self._pg is not None:
            await self._pg.close()
