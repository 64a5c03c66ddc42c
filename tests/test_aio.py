"""kvfast.aio.AsyncRepository against real Redis and PostgreSQL: the sync API, awaited."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
import redis
import storeparams
from helpers import all_entries, create_tables, everything_full, insert_row, snapshot
from models import Everything

import kvfast
import kvfast.aio
from kvfast.drainer import Drainer

# every case on one Redis and on the Redis Cluster (tests/storeparams.py)
store, r, settings = storeparams.both_stores()


def run(coro: Any) -> Any:
    return kvfast.aio.run(coro)


def test_create_get_update_delete_round_trip(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg, Everything)
    written = [everything_full(k) for k in range(1, 6)]

    async def go() -> list[Any]:
        async with await kvfast.aio.AsyncRepository.open(Everything, settings) as repo:
            assert await repo.create_many(written) == 5
            first = await repo.get_many([1, 2, 99])
            await repo.update(2, n_str="changed", o_int=None)
            await repo.delete(3)
            return [first, await repo.get_by_id(2), await repo.get_by_id(3)]

    first, updated, deleted = run(go())
    assert first == [written[0], written[1], None]
    assert updated is not None and updated.n_str == "changed" and updated.o_int is None
    assert deleted is None
    # The same queue entries as the sync producer: 5 creates, 1 update, 1 delete.
    assert sorted(e.op for e in all_entries(r, settings)) == ["c"] * 5 + ["d", "u"]
    with Drainer(settings) as drainer:
        drainer.drain_until_empty(max_idle_polls=1)
    with kvfast.Repository(Everything, settings) as sync_repo:
        r.delete(*[k for k in r.keys("*:o:*")])  # read what PostgreSQL holds now
        assert sync_repo.get_by_id(2) == updated
        assert sync_repo.get_by_id(3) is None


def test_pipelined_batches_from_several_coroutines_all_land(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg, Everything)  # the misses of get_many read through to it

    async def go() -> int:
        async with await kvfast.aio.AsyncRepository.open(Everything, settings) as repo:
            batches = [[everything_full(b * 100 + i) for i in range(50)] for b in range(8)]
            counts = await asyncio.gather(*(repo.create_many(b) for b in batches))
            got = await repo.get_many(range(800))
            return sum(counts) + sum(1 for g in got if g is not None)

    assert run(go()) == 400 + 400
    assert len(all_entries(r, settings)) == 400


def test_update_of_a_missing_key_raises_not_found_and_writes_nothing(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg, Everything)

    async def go() -> None:
        async with await kvfast.aio.AsyncRepository.open(Everything, settings) as repo:
            before = snapshot(r)  # after open, which records the partition count
            with pytest.raises(kvfast.NotFound):
                await repo.update(404, n_str="x")
            # update.lua was sent, so the model's indexes were recorded first
            # (kvfast.indexmeta); nothing else changed
            meta = f"{settings.namespace}:meta".encode()
            assert r.hget(meta, "x:t_everything") == b""
            r.hdel(meta, "x:t_everything")
            assert snapshot(r) == before

    run(go())


def test_bad_input_is_refused_before_anything_is_sent(
    r: redis.Redis, settings: kvfast.Settings
) -> None:
    async def go() -> None:
        async with await kvfast.aio.AsyncRepository.open(Everything, settings) as repo:
            before = snapshot(r)  # after open, which records the partition count
            bad = everything_full(2)
            bad.n_str = "nul\x00byte"
            with pytest.raises(kvfast.ValidationError, match=r"Everything\.n_str"):
                await repo.create_many([everything_full(1), bad])
            assert snapshot(r) == before

    run(go())


def test_a_key_only_in_postgresql_is_read_and_updated(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg, Everything)
    row = everything_full(7)
    insert_row(pg, row)

    async def go() -> tuple[Any, Any]:
        async with await kvfast.aio.AsyncRepository.open(Everything, settings) as repo:
            read = await repo.get_by_id(7)
            await repo.update(7, n_int=-5)
            return read, await repo.get_by_id(7)

    read, updated = run(go())
    assert read == row
    assert updated is not None and updated.n_int == -5 and updated.n_str == row.n_str


def test_unreachable_redis_is_redis_unavailable() -> None:
    settings = kvfast.Settings(redis_url="redis://:secretpw@127.0.0.1:1/0")

    async def go() -> None:
        await kvfast.aio.AsyncRepository.open(Everything, settings)

    with pytest.raises(kvfast.RedisUnavailable) as excinfo:
        run(go())
    assert "secretpw" not in str(excinfo.value)
