"""Entries a drainer cannot apply wait, in order, and nothing else waits with them.

A rolling deploy (producers and drainers of two model versions side by side), a
drainer that lacks a model, and a table PostgreSQL refuses (a dropped column)
each hold one table's entries in a partition's held list (kvfast.holds) while
the other tables drain; once a drainer can apply them they drain, in order, and
PostgreSQL ends equal to Redis.  Models of two versions share one process here
by re-declaring the class (the registry keeps the latest declaration, as a
drainer process would run one or the other).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from helpers import create_tables, pg_count

import kvfast
from kvfast.drainer import Drainer
from kvfast.errors import ValidationError
from kvfast.keys import MAX_KEY_BYTES

model_module = importlib.import_module("kvfast.model")  # the module, not kvfast.model()


def fare_model(version: int, default: str | None = None) -> type:
    """Version 1 or 2 of one model (one qualified name: a redeploy, not a clash)."""
    if version == 1:
        @kvfast.model(table="t_hold_fares", key="id")
        class Fare:
            id: int
            cents: int
    else:
        @kvfast.model(table="t_hold_fares", key="id")
        class Fare:  # type: ignore[no-redef]
            id: int
            cents: int
            note: str | None = default

    return Fare


def fare_v1() -> type:
    return fare_model(1)


def fare_v2(default: str | None = None) -> type:
    return fare_model(2, default)


@kvfast.model(table="t_hold_trips", key="id")
class Trip:
    id: int
    km: int


@pytest.fixture(autouse=True)
def restore_fare() -> Iterator[None]:
    yield
    fare_v1()


def drain(settings: kvfast.Settings) -> int:
    with Drainer(settings) as drainer:
        return drainer.drain_until_empty()


def drain_until_released(settings: kvfast.Settings, client: kvfast.Client,
                         rounds: int = 60) -> None:
    """Drain until nothing is held (a held table is retried after its backoff)."""
    with Drainer(settings) as drainer:
        for _ in range(rounds):
            drainer.drain_until_empty()
            if not client.holds():
                return
            time.sleep(0.25)
    pytest.fail(f"still held after {rounds} rounds: {client.holds()}")


def rows(pg: psycopg.Connection[Any], table: str) -> dict[int, tuple[Any, ...]]:
    return {row[0]: row for row in pg.execute(f"SELECT * FROM {table} ORDER BY id")}


def test_entries_of_a_newer_model_wait_for_a_drainer_that_runs_it(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings,
    client: kvfast.Client,
) -> None:
    v2 = fare_v2()
    create_tables(pg, v2, Trip)
    with kvfast.Repository(v2, client=client) as fares, \
            kvfast.Repository(Trip, client=client) as trips:
        fares.create_many(v2(id=i, cents=100 + i, note=f"n{i}") for i in range(40))
        fares.update_many({i: {"note": f"again {i}"} for i in range(0, 40, 3)})
        trips.create_many(Trip(id=i, km=i) for i in range(40))
        fare_v1()  # an old drainer: it does not know `note`
        drain(settings)
        assert pg_count(pg, Trip) == 40  # the other table drained
        assert pg_count(pg, v2) == 0  # nothing applied lossily
        held = client.holds()
        assert set(held) == {"t_hold_fares"} and held["t_hold_fares"][0] == 40 + 14
        assert "['note']" in held["t_hold_fares"][1], held
        assert not any(r.lrange(client.keys.dead[p], 0, -1) for p in range(8))
        # More writes of the held table while it waits: behind the held ones.
        fares.update_many({i: {"cents": 7} for i in range(0, 40, 5)})
        drain(settings)
        assert pg_count(pg, v2) == 0
        v2 = fare_v2()  # the new drainer takes them at once, in order
        drain_until_released(settings, client)
        got = rows(pg, "t_hold_fares")
        for obj in fares.get_many(range(40)):
            assert obj is not None
            assert got[obj.id] == (obj.id, obj.cents, obj.note)
        assert got[3][2] == "again 3" and got[5][1] == 7 and got[15] == (15, 7, "again 15")


@pytest.mark.parametrize("default", [None, "n/a"])
def test_entries_of_an_older_model_drain_with_the_new_defaults(
    pg: psycopg.Connection[Any], settings: kvfast.Settings, client: kvfast.Client,
    default: str | None,
) -> None:
    v1 = fare_v1()
    create_tables(pg, fare_v2())
    with kvfast.Repository(v1, client=client) as fares:
        fares.create_many(v1(id=i, cents=i) for i in range(10))
        fares.update_many({i: {"cents": 50} for i in range(5)})
    fare_v2(default)  # the new drainer
    drain(settings)
    assert not client.holds()
    assert rows(pg, "t_hold_fares") == {
        i: (i, 50 if i < 5 else i, default) for i in range(10)}


def test_entries_of_a_model_the_drainer_lacks_wait_for_one_that_has_it(
    pg: psycopg.Connection[Any], settings: kvfast.Settings, client: kvfast.Client,
) -> None:
    create_tables(pg, Trip)
    with kvfast.Repository(Trip, client=client) as trips:
        trips.create_many(Trip(id=i, km=i) for i in range(20))
        trips.delete_many(range(0, 20, 4))
    registered = model_module._REGISTRY.pop("t_hold_trips")
    try:
        drain(settings)
        assert client.holds()["t_hold_trips"][0] == 25
        assert pg_count(pg, Trip) == 0
    finally:
        model_module._REGISTRY["t_hold_trips"] = registered
    drain_until_released(settings, client)
    assert sorted(rows(pg, "t_hold_trips")) == [i for i in range(20) if i % 4]


def test_a_table_postgresql_refuses_holds_only_its_entries_until_it_is_fixed(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings,
    client: kvfast.Client,
) -> None:
    v1 = fare_v1()
    create_tables(pg, v1, Trip)
    pg.execute("ALTER TABLE t_hold_fares DROP COLUMN cents")  # an operator's mistake
    with kvfast.Repository(v1, client=client) as fares, \
            kvfast.Repository(Trip, client=client) as trips:
        fares.create_many(v1(id=i, cents=i) for i in range(30))
        trips.create_many(Trip(id=i, km=i) for i in range(30))
        drain(settings)
        assert pg_count(pg, Trip) == 30
        held = client.holds()
        assert set(held) == {"t_hold_fares"} and held["t_hold_fares"][0] == 30
        assert "42703" in held["t_hold_fares"][1] and "cents" in held["t_hold_fares"][1]
        fares.update_many({i: {"cents": 1000 + i} for i in range(0, 30, 2)})
        fares.delete_many([29])
        trips.update_many({i: {"km": 0} for i in range(30)})
        drain(settings)
        assert rows(pg, "t_hold_trips") == {i: (i, 0) for i in range(30)}
        assert client.holds()["t_hold_fares"][0] == 30 + 15 + 1
        pg.execute("ALTER TABLE t_hold_fares ADD COLUMN cents bigint NOT NULL DEFAULT 0")
        drain_until_released(settings, client)
        assert rows(pg, "t_hold_fares") == {
            i: (i, 1000 + i if i % 2 == 0 else i) for i in range(29)}
    assert not any(r.lrange(client.keys.dead[p], 0, -1) for p in range(8))


@kvfast.model(table="t_hold_names", key="name")
class Named:
    name: str
    n: int


def test_a_key_postgresql_cannot_index_is_refused_at_the_producer(
    pg: psycopg.Connection[Any], client: kvfast.Client,
) -> None:
    create_tables(pg, Named)

    with kvfast.Repository(Named, client=client) as named:
        with pytest.raises(ValidationError, match="longer than PostgreSQL can index"):
            named.create_many([Named(name="ok", n=1), Named(name="x" * (MAX_KEY_BYTES + 1), n=2)])
        with pytest.raises(ValidationError, match=r"Named\.name"):
            named.update("é" * (MAX_KEY_BYTES // 2 + 1), n=3)
        assert named.get_by_id("ok") is None  # the batch wrote nothing


def test_create_tables_adds_a_new_optional_field_and_never_drops_or_retypes(
    pg: psycopg.Connection[Any], settings: kvfast.Settings, client: kvfast.Client,
) -> None:
    v1 = fare_v1()
    create_tables(pg, v1)
    with kvfast.Repository(v1, client=client) as fares:
        fares.create_many(v1(id=i, cents=i) for i in range(5))
    drain(settings)
    v2 = fare_v2()
    kvfast.create_tables(pg, [kvfast.model_info(v2)])  # the new deploy's --create-tables
    assert rows(pg, "t_hold_fares") == {i: (i, i, None) for i in range(5)}
    columns = [r[0] for r in pg.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 't_hold_fares'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]
    assert columns == ["id", "cents", "note"]
