"""The asyncio producer: ``AsyncRepository`` with the same API as ``Repository``.

    async with await kvfast.aio.AsyncRepository.open(Booking, settings) as repo:
        await repo.create_many(bookings)

Batches are validated and packed by the same ``WriteBuilder`` as the sync
producer (per-model RESP templates, one buffer per batch), and reads and updates
follow the same plans (``kvfast.core``); this class performs their I/O on the
pipelined connection of ``kvfast.aioclient``.  ``kvfast.aio.run`` runs a
coroutine on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

from kvfast.aioclient import AsyncClient, AsyncConnection, run
from kvfast.core import Eval, Plan, ReadHashes, RepositoryCore, hash_of
from kvfast.drivers import pg_errors
from kvfast.errors import RedisFull
from kvfast.find import Commands, FindPlan, FindStep, Overlapped, SelectWhere, find_plan
from kvfast.indexmeta import first_record
from kvfast.model import model_info
from kvfast.producer import WriteBuilder, gc_paused
from kvfast.resp import check_replies, pack
from kvfast.schema import rows_by_key, select_rows_params, select_rows_sql
from kvfast.settings import Settings

# AsyncClient, AsyncConnection and run live in kvfast.aioclient (the transport).
__all__ = ["AsyncClient", "AsyncConnection", "AsyncRepository", "run"]

M = TypeVar("M")
T = TypeVar("T")


class AsyncRepository(Generic[M]):
    """``Repository`` for asyncio code: the same methods, awaited."""

    def __init__(self, model: type[M], client: AsyncClient, *, own_client: bool = False) -> None:
        self.info = model_info(model)
        self.client = client
        self.builder = WriteBuilder(client.keys, self.info)
        self.core: RepositoryCore[M] = RepositoryCore(self.info, self.builder,
                                                      bool(client.settings.pg_dsn))
        self._own = own_client
        self._recorded = False

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
            await self._write(request.payload, request.nreplies)
        return request.records

    async def delete(self, key: Any) -> None:
        await self.delete_many((key,))

    async def delete_many(self, keys: Iterable[Any]) -> int:
        with gc_paused():
            request = self.builder.build_delete(keys)
        if request.records:
            await self._write(request.payload, request.nreplies)
        return request.records

    async def _record_indexes(self) -> None:
        """``Producer.record_indexes``, awaited."""
        if not self._recorded:
            (reply,) = await self.client.conn.execute(
                pack(first_record(self.client.keys, self.info)), 1)
            check_replies([reply], "HSETNX")
            self._recorded = True

    async def _write(self, payload: bytes, nreplies: int) -> None:
        await self._record_indexes()
        replies = await self.client.conn.execute(payload, nreplies)
        try:
            self.builder.check_block_replies(replies)
        except RedisFull as exc:
            raise await self.client.full(exc) from exc.__cause__

    async def update(self, key: Any, **fields: Any) -> None:
        await self.update_many([(key, fields)])

    async def update_many(
        self, changes: Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]]
    ) -> int:
        return await self._run(self.core.update_plan(changes))

    async def get_by_id(self, key: Any) -> M | None:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Iterable[Any]) -> list[M | None]:
        return await self._run(self.core.get_plan(keys))

    async def find(self, **conditions: Any) -> list[M]:
        """``Repository.find``, awaited."""
        return await self._run(find_plan(self.core, conditions))

    # -- the I/O of the plans ----------------------------------------------------

    async def _run(self, plan: Plan[T] | FindPlan[Any]) -> T:
        try:
            step = next(plan)
            while True:
                step = plan.send(await self._perform(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _perform(self, step: FindStep) -> Any:
        if isinstance(step, Eval):
            if step.wait_keys is not None:  # writes (update.lua): see Producer.record_indexes
                await self._record_indexes()
            return await self.client.eval_many(step.script, step.calls)
        if isinstance(step, ReadHashes):
            payload = b"".join(pack(("HGETALL", k)) for k in step.obj_keys)
            replies = await self.client.conn.execute(payload, len(step.obj_keys))
            check_replies(replies, "HGETALL")
            return [hash_of(flat) for flat in replies]
        if isinstance(step, SelectWhere):
            return await self._select_where(step)
        if isinstance(step, Commands):
            return await self.client.conn.execute(step.payload, step.nreplies)
        if isinstance(step, Overlapped):
            return await asyncio.gather(
                self.client.conn.execute(step.redis.payload, step.redis.nreplies),
                self._select_where(step.select))
        return await self._select(step.keys)

    async def _select_where(self, step: SelectWhere) -> list[tuple[Any, ...]]:
        conn = await self.client.pg()
        with pg_errors(self.client.settings):
            cur = await conn.execute(step.query, step.params)
            return await cur.fetchall()

    async def _select(self, keys: list[Any]) -> dict[Any, tuple[Any, ...]]:
        conn = await self.client.pg()
        query = select_rows_sql(self.info)
        with pg_errors(self.client.settings):
            cur = await conn.execute(query, select_rows_params(self.info, keys))
            rows = await cur.fetchall()
        return rows_by_key(self.info, rows)
