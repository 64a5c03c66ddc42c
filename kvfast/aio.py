"""The asyncio producer: ``AsyncRepository`` with the same API as ``Repository``.

    async with await kvfast.aio.AsyncRepository.open(Booking, settings) as repo:
        await repo.create_many(bookings)

Batches are validated and packed by the same ``WriteBuilder`` as the sync
producer (per-model RESP templates, one buffer per batch), and reads and updates
follow the same plans (``kvfast.core``); this class performs their I/O on the
pipelined connection of ``kvfast.aioclient`` (one per node on a Redis Cluster,
routed by ``kvfast.cluster``'s plan, as the sync client).  ``kvfast.aio.run``
runs a coroutine on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from kvfast.aioclient import AsyncClient, AsyncConnection, run
from kvfast.cluster import Unit
from kvfast.core import Eval, Plan, ReadHashes, RepositoryCore, hash_of
from kvfast.drivers import pg_errors
from kvfast.errors import ConnectionFailed, RedisFull
from kvfast.find import Commands, FindPlan, FindStep, Overlapped, SelectWhere, find_plan
from kvfast.indexmeta import first_record
from kvfast.model import model_info
from kvfast.producer import Block, WriteBuilder, gc_paused
from kvfast.replicas import check_wait, wait_command
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
        if self.client.topology is not None:
            with gc_paused():  # only around the synchronous encoding, never across an await
                blocks = self.builder.create_blocks(objs)
            return await self._recorded_after(await self._send_blocks(blocks))
        items = list(objs) if self.client.settings.wait_replicas else objs
        with gc_paused():
            request = self.builder.build_create(items)
        if request.records:
            await self._write(request.payload, request.nreplies, "create",
                              lambda: [self.info.key_of(o) for o in items])
        return request.records

    async def delete(self, key: Any) -> None:
        await self.delete_many((key,))

    async def delete_many(self, keys: Iterable[Any]) -> int:
        if self.client.topology is not None:
            with gc_paused():
                blocks = self.builder.delete_blocks(keys)
            return await self._recorded_after(await self._send_blocks(blocks))
        keys = list(keys)
        with gc_paused():
            request = self.builder.build_delete(keys)
        if request.records:
            await self._write(request.payload, request.nreplies, "delete", lambda: keys)
        return request.records

    async def _record_indexes(self) -> None:
        """``Producer.record_indexes``, awaited (``kvfast.indexmeta``)."""
        if self._recorded:
            return
        command = first_record(self.client.keys, self.info)
        try:
            (reply,) = await self._commands([pack(command)], [command[1]])
        except ConnectionFailed:
            if self.client.topology is None:  # as the sync producer: see its comment
                raise
            return  # tried again by a later write
        check_replies([reply], "HSETNX")
        self._recorded = True

    async def _recorded_after(self, written: int) -> int:
        """On a cluster the indexes are recorded after a write succeeded
        (``Producer._recorded_after``)."""
        if written:
            await self._record_indexes()
        return written

    async def _write(self, payload: bytes, nreplies: int, what: str,
                     keys: Callable[[], list[Any]]) -> None:
        """One batch on the one Redis, with ``WAIT`` at its end under ``wait_replicas``."""
        await self._record_indexes()
        settings = self.client.settings
        wait = wait_command(settings)
        replies = await self.client.execute(payload + wait, nreplies + bool(wait))
        waited = replies.pop() if wait else None
        try:
            self.builder.check_block_replies(replies)
        except RedisFull as exc:
            raise await self.client.full(exc) from exc.__cause__
        if wait:
            check_wait(settings, waited, keys, f"{self.info.name} {what}")

    async def _send_blocks(self, blocks: list[Block]) -> int:
        """``Producer._send_blocks``, awaited: one MULTI per partition, each to its slot's
        node, all at once; ``PartialWrite`` names the keys written when a node fails."""
        client = self.client
        topology = client.topology
        assert topology is not None
        need = client.settings.wait_replicas
        results = await client.send_units(
            self.builder.block_units(blocks, topology.partition_slots), bool(need))
        outcome = self.builder.blocks_outcome(blocks, results, need)
        if isinstance(outcome.first, RedisFull):
            full = await client.full(outcome.first)
            full.__cause__ = outcome.first.__cause__
            outcome.first = full
        return outcome.settle(client.settings, self.info.name)

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
            return await self.client.eval_many(step.script, step.calls, step.wait_keys)
        if isinstance(step, ReadHashes):
            commands = [pack(("HGETALL", k)) for k in step.obj_keys]
            replies = await self._commands(commands, step.obj_keys)
            check_replies(replies, "HGETALL")
            return [hash_of(flat) for flat in replies]
        if isinstance(step, SelectWhere):
            return await self._select_where(step)
        if isinstance(step, Commands):
            return await self._packed(step)
        if isinstance(step, Overlapped):
            return await self._overlapped(step)
        return await self._select(step.keys)

    async def _overlapped(self, step: Overlapped) -> tuple[list[Any], list[Any] | None,
                                                            list[tuple[Any, ...]] | None]:
        """Both Redis round trips while the SELECT runs (``Repository._overlapped``)."""
        async def redis_side() -> tuple[list[Any], list[Any] | None]:
            replies = await self._packed(step.redis)
            then = step.then(replies)
            return replies, (await self._packed(then) if then is not None else None)

        if step.select is None:
            return (*await redis_side(), None)
        (replies, more), rows = await asyncio.gather(redis_side(),
                                                     self._select_where(step.select))
        return replies, more, rows

    async def _packed(self, step: Commands) -> list[Any]:
        """A find's packed commands: their one payload on one Redis; on a cluster the
        same commands routed one by one (``Commands.routed``)."""
        if self.client.topology is None:
            return await self.client.execute(step.payload, step.nreplies)
        assert step.routed is not None, "find's commands name their keys on a cluster"
        args = step.routed()
        return await self._commands([pack(a) for a in args], [a[1] for a in args])

    async def _commands(self, commands: Sequence[bytes], route: Sequence[Any]) -> list[Any]:
        """One reply per command: one payload on one Redis; on a cluster each command to
        the node of its key's slot (``route``), all nodes at once."""
        client = self.client
        topology = client.topology
        if topology is None:
            return await client.execute(b"".join(commands), len(commands))
        units = [Unit(topology.slot_of_key(key), command, 1)
                 for command, key in zip(commands, route, strict=True)]
        return [r[0] for r in await client.execute_units(units)]

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
