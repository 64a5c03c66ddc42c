"""The same cases against ``Repository`` and ``AsyncRepository`` (real Redis + PostgreSQL).

Both run the plans of ``kvfast.core``; these cases are the ones where the two
had drifted apart (the partition and layout check, a damaged hash, hydration
of a row found only in PostgreSQL) or could.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
import storeparams
from helpers import create_tables, everything, insert_row, obj_key
from models import Everything

import kvfast
import kvfast.aio
from kvfast.drivers import pg_connect_kwargs
from kvfast.keys import LAYOUT_VERSION

Conn = psycopg.Connection[Any]

# every case on one Redis and on the Redis Cluster (tests/storeparams.py)
store, r, settings = storeparams.both_stores()


class AsyncShell:
    """An AsyncRepository driven from sync test code, on one event loop of its own.

    Opening is deferred to the first call, as the sync repository checks the
    partition count on first use: a case reads the same for both.
    """

    def __init__(self, model: type, settings: kvfast.Settings,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._model = model
        self._settings = settings
        self._loop = loop
        self._repo: kvfast.aio.AsyncRepository[Any] | None = None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        async def go() -> Any:
            if self._repo is None:
                self._repo = await kvfast.aio.AsyncRepository.open(self._model, self._settings)
            return await getattr(self._repo, name)(*args, **kwargs)

        return self._loop.run_until_complete(go())

    def create(self, obj: Any) -> None:
        self._call("create", obj)

    def get_by_id(self, key: Any) -> Any:
        return self._call("get_by_id", key)

    def get_many(self, keys: list[Any]) -> list[Any]:
        return self._call("get_many", keys)  # type: ignore[no-any-return]

    def update(self, key: Any, **fields: Any) -> None:
        self._call("update", key, **fields)

    def close(self) -> None:
        if self._repo is not None:
            self._loop.run_until_complete(self._repo.close())
            self._repo = None


Opener = Callable[[type, kvfast.Settings], Any]


@pytest.fixture(params=["sync", "async"])
def open_repo(request: pytest.FixtureRequest) -> Iterator[Opener]:
    """``open_repo(model, settings)``: a repository of the parametrized kind, closed after."""
    opened: list[Any] = []
    loop = asyncio.new_event_loop() if request.param == "async" else None

    def opener(model: type, settings: kvfast.Settings) -> Any:
        repo: Any
        if loop is None:
            repo = kvfast.Repository(model, settings)
        else:
            repo = AsyncShell(model, settings, loop)
        opened.append(repo)
        return repo

    try:
        yield opener
    finally:
        for repo in opened:
            repo.close()
        if loop is not None:
            loop.close()


def test_a_partition_count_mismatch_names_both_counts_and_the_remedy(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener
) -> None:
    create_tables(pg, Everything)
    open_repo(Everything, settings).create(everything(1))
    other = open_repo(Everything, dataclasses.replace(settings, partitions=16))
    with pytest.raises(kvfast.PartitionMismatch) as excinfo:
        other.get_by_id(1)
    text = str(excinfo.value)
    assert "partitions=8" in text and "partitions=16" in text
    assert "set KVFAST_PARTITIONS to the recorded value" in text


def test_the_partition_count_is_checked_before_the_layout(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener
) -> None:
    """Both recorded values differ: the partition count is reported (the sync order)."""
    namespace = settings.namespace
    r.hset(f"{namespace}:meta", mapping={"partitions": 16, "layout": LAYOUT_VERSION + 1})
    with pytest.raises(kvfast.PartitionMismatch):
        open_repo(Everything, settings).get_by_id(1)


def test_a_layout_mismatch_is_refused_with_the_remedy(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener
) -> None:
    r.hset(f"{settings.namespace}:meta",
           mapping={"partitions": settings.partitions, "layout": LAYOUT_VERSION - 1})
    with pytest.raises(kvfast.LayoutMismatch) as excinfo:
        open_repo(Everything, settings).get_by_id(1)
    text = str(excinfo.value)
    assert f"layout {LAYOUT_VERSION - 1}" in text and f"layout {LAYOUT_VERSION}" in text
    assert "drain it with the kvfast version that wrote it first" in text


@pytest.mark.parametrize(
    ("field", "raw"), [("n_int", b"not a number"), ("n_str", b"\xff\xfe"), ("n_dict", b"{")]
)
def test_a_corrupt_hash_is_a_decode_error_naming_model_and_key(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener,
    field: str, raw: bytes,
) -> None:
    create_tables(pg, Everything)
    repo = open_repo(Everything, settings)
    repo.create(everything(1))
    repo.create(everything(2))
    r.hset(obj_key(settings, Everything, 1), field, raw)
    with pytest.raises(kvfast.DecodeError, match="Everything 1"):
        repo.get_many([2, 1])


def test_update_of_a_key_in_neither_store_is_not_found(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener
) -> None:
    create_tables(pg, Everything)
    repo = open_repo(Everything, settings)
    repo.create(everything(1))
    with pytest.raises(kvfast.NotFound) as excinfo:
        repo.update(404, n_str="x")
    assert excinfo.value.keys == [404]
    assert r.exists(obj_key(settings, Everything, 404)) == 0  # no partial hash left


def test_update_of_a_row_only_in_postgres_hydrates_it_then_updates(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener
) -> None:
    create_tables(pg, Everything)
    stored = everything(5, n_str="in postgres", o_int=7)
    insert_row(pg, stored)
    repo = open_repo(Everything, settings)
    repo.update(5, n_str="updated")
    assert repo.get_by_id(5) == dataclasses.replace(stored, n_str="updated")
    # Read from Redis now: the hydrated hash holds every column of the row.
    assert r.hget(obj_key(settings, Everything, 5), "o_int") == b"7"


def test_a_miss_reads_through_and_a_tombstone_does_not(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener
) -> None:
    create_tables(pg, Everything)
    insert_row(pg, everything(1, n_str="pg"))
    insert_row(pg, everything(2, n_str="pg"))
    repo = open_repo(Everything, settings)
    sync = kvfast.Repository(Everything, settings)
    try:
        sync.delete(2)  # not drained: the tombstone must hide the PostgreSQL row
    finally:
        sync.close()
    assert repo.get_many([1, 2, 3]) == [everything(1, n_str="pg"), None, None]


def test_both_connect_to_postgres_with_the_same_options(settings: kvfast.Settings) -> None:
    kwargs = pg_connect_kwargs(settings)
    assert kwargs["connect_timeout"] == 10 and kwargs["options"] == "-c timezone=UTC"

    async def go() -> tuple[str, str]:
        async with await kvfast.aio.AsyncRepository.open(Everything, settings) as repo:
            conn = await repo.client.pg()
            return conn.info.get_parameters()["connect_timeout"], str(conn.info.timezone)

    timeout, zone = kvfast.aio.run(go())
    assert timeout == "10" and zone == "UTC"


def test_a_command_redis_refuses_is_a_redis_command_error(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, open_repo: Opener
) -> None:
    """Not the root KvfastError: a leaf callers can catch, and not "unavailable"."""
    create_tables(pg, Everything)
    repo = open_repo(Everything, settings)
    repo.create(everything(2))
    r.set(obj_key(settings, Everything, 1), b"a string, not a hash")
    for call in (lambda: repo.get_many([2, 1]), lambda: repo.update(1, n_str="x")):
        with pytest.raises(kvfast.RedisCommandError, match="WRONGTYPE") as excinfo:
            call()
        assert not isinstance(excinfo.value, kvfast.ConnectionFailed)
