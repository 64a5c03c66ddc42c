"""The asyncio producer: ``AsyncRepository`` with the same API as ``Repository``.

    async with await kvfast.aio.AsyncRepository.open(Booking, settings) as repo:
        await repo.create_many(bookings)

Batches are validated and packed by the same ``WriteBuilder`` as the sync
producer (per-model RESP templates, one buffer per batch), then written to one
asyncio connection; a reader task parses replies with a ``hiredis.Reader`` and
hands them to the waiting callers in order.  So several batches can be in
flight on one connection (pipelining across coroutines), and nothing on the hot
path goes through redis.asyncio, whose packer is pure Python.  ``kvfast.aio.run``
runs a coroutine on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Awaitable, Coroutine, Iterable, Mapping
from typing import Any, Generic, TypeVar

import hiredis
import psycopg
from redis.connection import parse_url

from kvfast.client import pg_errors
from kvfast.errors import (
    KvfastError,
    LayoutMismatch,
    NotFound,
    PartitionMismatch,
    RedisUnavailable,
)
from kvfast.keys import LAYOUT_VERSION, Keys
from kvfast.model import TOMBSTONE_FIELD, model_info
from kvfast.producer import Call, WriteBuilder, _pack, gc_paused
from kvfast.schema import select_rows_sql
from kvfast.scripts import REPLY_ERRORS, EvalBatch, unavailable_reply
from kvfast.settings import Settings, redact

__all__ = ["AsyncClient", "AsyncConnection", "AsyncRepository", "run"]

M = TypeVar("M")
T = TypeVar("T")
_TOMB = TOMBSTONE_FIELD.encode()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(main)
    return uvloop.run(main)


class AsyncConnection:
    """One Redis connection; requests are pipelined and answered in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
                    timeout=10,
                )
        except (TimeoutError, OSError) as exc:
            raise RedisUnavailable(
                f"Redis at {redact(settings.redis_url)} is unavailable: {exc}"
            ) from exc
        conn = cls(reader, writer)
        hello: list[bytes] = []
        if params.get("password"):
            auth = ["AUTH", params["password"]]
            if params.get("username"):
                auth.insert(1, params["username"])
            hello.append(_pack(tuple(auth)))
        if params.get("db"):
            hello.append(_pack(("SELECT", params["db"])))
        if hello:
            for reply in await conn.execute(b"".join(hello), len(hello)):
                if isinstance(reply, REPLY_ERRORS):
                    await conn.close()
                    raise KvfastError(f"Redis refused the connection set-up: {reply}")
        return conn

    async def execute(self, payload: bytes, nreplies: int) -> list[Any]:
        """Send a packed buffer; wait for its ``nreplies`` replies (errors as values)."""
        if self._error is not None:
            raise RedisUnavailable(f"Redis connection lost: {self._error}") from self._error
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((future, nreplies, []))
        self._writer.write(payload)
        await self._writer.drain()
        replies = await future
        busy = unavailable_reply(replies)
        if busy is not None:
            raise RedisUnavailable(f"Redis cannot serve: {busy}")
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
            self._error = exc
            while pending:
                future, _, _ = pending.popleft()
                if not future.done():
                    future.set_exception(RedisUnavailable(f"Redis connection lost: {exc}"))

    async def close(self) -> None:
        self._task.cancel()
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


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
        await client.check_partitions()
        return client

    def check_partitions(self) -> Awaitable[None]:
        return self._check_partitions()

    async def _check_partitions(self) -> None:
        want = self.settings.partitions
        payload = (
            _pack(("HSETNX", self.keys.meta, "partitions", want))
            + _pack(("HSETNX", self.keys.meta, "layout", LAYOUT_VERSION))
            + _pack(("HMGET", self.keys.meta, "partitions", "layout"))
        )
        _, _, (have, layout) = await self.conn.execute(payload, 3)
        if int(layout) != LAYOUT_VERSION:
            raise LayoutMismatch(
                f"namespace {self.settings.namespace!r} in Redis uses key layout "
                f"{int(layout)}, this kvfast uses layout {LAYOUT_VERSION}"
            )
        if int(have) != want:
            raise PartitionMismatch(
                f"namespace {self.settings.namespace!r} in Redis was written with "
                f"partitions={int(have)}, but this process uses partitions={want}"
            )

    async def pg(self) -> psycopg.AsyncConnection[Any]:
        if self._pg is None or self._pg.closed or self._pg.broken:
            assert self.settings.pg_dsn
            with pg_errors(self.settings):
                self._pg = await psycopg.AsyncConnection.connect(
                    self.settings.pg_dsn, autocommit=True, options="-c timezone=UTC",
                    application_name="kvfast",
                )
        return self._pg

    async def eval_many(self, script: str, calls: list[Call]) -> list[int]:
        """Pipelined EVALSHA calls; SCRIPT LOAD and retry on NOSCRIPT."""
        if not calls:
            return []
        batch = EvalBatch(script, calls)
        while batch.take(await self.conn.execute(batch.payload(), len(batch.pending))):
            await self.conn.execute(batch.load_command, 1)
        return [int(r) for r in batch.results]

    async def close(self) -> None:
        await self.conn.close()
        if self._pg is not None:
            await self._pg.close()


class AsyncRepository(Generic[M]):
    """``Repository`` for asyncio code: the same methods, awaited."""

    def __init__(self, model: type[M], client: AsyncClient, *, own_client: bool = False) -> None:
        self.info = model_info(model)
        self.client = client
        self.builder = WriteBuilder(client.keys, self.info)
        self._own = own_client

    @classmethod
    async def open(cls, model: type[M], settings: Settings | None = None) -> AsyncRepository[M]:
        return cls(model, await AsyncClient.open(settings), own_client=True)

    async def close(self) -> None:
        if self._own:
            await self.client.close()

    async def __aenter__(self) -> AsyncRepository[M]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def create(self, obj: M) -> None:
        await self.create_many((obj,))

    async def create_many(self, objs: Iterable[M]) -> int:
        with gc_paused():  # only around the synchronous encoding, never across an await
            request = self.builder.build_create(objs)
        if request.records:
            replies = await self.client.conn.execute(request.payload, request.nreplies)
            self.builder.check_block_replies(replies)
        return request.records

    async def delete(self, key: Any) -> None:
        await self.delete_many((key,))

    async def delete_many(self, keys: Iterable[Any]) -> int:
        with gc_paused():
            request = self.builder.build_delete(keys)
        if request.records:
            replies = await self.client.conn.execute(request.payload, request.nreplies)
            self.builder.check_block_replies(replies)
        return request.records

    async def update(self, key: Any, **fields: Any) -> None:
        await self.update_many([(key, fields)])

    async def update_many(
        self, changes: Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]]
    ) -> int:
        items = list(changes.items() if isinstance(changes, Mapping) else changes)
        status = await self.client.eval_many("update", self.builder.build_update(items))
        missing = [i for i, s in enumerate(status) if s == 0]
        if missing and self.client.settings.pg_dsn:
            loaded = await self._hydrate([items[i][0] for i in missing])
            retry = [i for i in missing if self.info.check_key(items[i][0]) in loaded]
            again = await self.client.eval_many(
                "update", self.builder.build_update([items[i] for i in retry])
            )
            for i, s in zip(retry, again, strict=True):
                status[i] = s
        not_found = [items[i][0] for i, s in enumerate(status) if s != 1]
        if not_found:
            raise NotFound(self.info.name, not_found)
        return len(items)

    async def get_by_id(self, key: Any) -> M | None:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Iterable[Any]) -> list[M | None]:
        info = self.info
        normalized = [info.check_key(k) for k in keys]
        if not normalized:
            return []
        payload = b"".join(
            _pack(("HGETALL", self.builder.locate(k)[2])) for k in normalized
        )
        replies = await self.client.conn.execute(payload, len(normalized))
        out: list[M | None] = []
        misses: list[int] = []
        for i, flat in enumerate(replies):
            if isinstance(flat, REPLY_ERRORS):
                raise KvfastError(f"Redis refused HGETALL: {flat}")
            if not flat:
                out.append(None)
                misses.append(i)
                continue
            raw = dict(zip(flat[0::2], flat[1::2], strict=True))
            out.append(None if _TOMB in raw else info.from_hash(raw))
        if misses and self.client.settings.pg_dsn:
            rows = await self._select([normalized[i] for i in misses])
            for i in misses:
                row = rows.get(normalized[i])
                if row is not None:
                    out[i] = info.from_pg_row(row)
        return out

    async def _select(self, keys: list[Any]) -> dict[Any, tuple[Any, ...]]:
        conn = await self.client.pg()
        query = select_rows_sql(self.info)
        with pg_errors(self.client.settings):
            cur = await conn.execute(query, (keys,))
            rows = await cur.fetchall()
        index = self.info.key_field.index
        return {row[index]: row for row in rows}

    async def _hydrate(self, keys: list[Any]) -> set[Any]:
        rows = await self._select([self.info.check_key(k) for k in keys])
        decoded = [(key, self.info.values_from_pg(row)) for key, row in rows.items()]
        await self.client.eval_many("hydrate", self.builder.build_hydrate(decoded))
        return set(rows)

