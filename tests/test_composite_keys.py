"""Composite primary keys: ``key=("driver_id", "rider_id")``, key values as tuples.

Every path a key takes is exercised against real servers: the producer (create,
update, delete, their batch forms), the drain (upsert, update, delete, tombstone
removal), the fallback read and the hydrating update, the DDL and the table
check, the dead-letter tool, and the key's text in Redis (parts escaped, so
``("a:b", "c")`` and ``("a", "b:c")`` are two objects).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import orjson
import psycopg
import pytest
import redis
from drainkeys import tag
from drainprocs import drain_in_process
from psycopg import sql

import kvfast
import kvfast.aio
from kvfast import codec
from kvfast.deadletter import main as deadletter_main
from kvfast.keys import MAX_KEY_BYTES, key_string, key_wire
from kvfast.model import TOMBSTONE_FIELD

Conn = psycopg.Connection[Any]


@kvfast.model(table="ck_assignment", key=("driver_id", "rider_id"))
class Assignment:
    driver_id: int
    rider_id: str
    status: str
    fare: int | None = None


@kvfast.model(table="ck_trip_tag", key=["trip", "tag", "n"])  # a list is taken too
class TripTag:
    trip: uuid.UUID
    tag: str
    n: int
    note: str | None = None


drain = drain_in_process  # one drainer, in this process, until nothing is left


def pg_rows(pg: Conn, table: str, order: str) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT * FROM {} ORDER BY " + order).format(sql.Identifier(table))
    return pg.execute(query).fetchall()


@pytest.fixture
def tables(pg: Conn) -> Conn:
    kvfast.create_tables(pg, [kvfast.model_info(Assignment), kvfast.model_info(TripTag)])
    return pg


# -- declaring ------------------------------------------------------------------------

def test_the_model_knows_its_key_parts() -> None:
    info = kvfast.model_info(Assignment)
    assert info.composite and info.key_names == ("driver_id", "rider_id")
    assert info.key_columns == ("driver_id", "rider_id")
    assert info.key_of(Assignment(7, "r-1", "new")) == (7, "r-1")
    assert kvfast.model_info(TripTag).key == ("trip", "tag", "n")


@pytest.mark.parametrize(("key", "message"), [
    (("a", "nope"), "key 'nope' is not a field"),
    (("a", "b"), "key field 'b' must be an int, str or UUID column (not Optional)"),
    (("a", "a"), "names a field twice"),
    ((), "key must be a field name or a tuple of field names"),
    (("a", 1), "key must be a field name or a tuple of field names"),
])
def test_a_bad_composite_key_declaration_is_a_model_error(key: Any, message: str) -> None:
    with pytest.raises(kvfast.ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        @kvfast.model(table="ck_bad", key=key)
        class Bad:
            a: int
            b: str | None = None


def test_a_one_part_tuple_is_a_plain_key() -> None:
    @kvfast.model(table="ck_single", key=("a",))
    class Single:
        a: int

    info = kvfast.model_info(Single)
    assert not info.composite and info.key == "a" and info.check_key(3) == 3


# -- checking keys ----------------------------------------------------------------------

def test_a_key_that_is_not_a_tuple_of_the_right_length_names_the_key(
        settings: kvfast.Settings) -> None:
    with kvfast.Repository(Assignment, settings) as repo:
        for bad in (7, (7,), (7, "r", "x"), "7:r"):
            with pytest.raises(kvfast.ValidationError) as err:
                repo.get_by_id(bad)
            assert err.value.field == "(driver_id, rider_id)"
            assert "a tuple of 2 values (driver_id, rider_id)" in str(err.value)


def test_a_bad_key_part_names_its_field_and_value(settings: kvfast.Settings,
                                                  r: redis.Redis) -> None:
    with kvfast.Repository(Assignment, settings) as repo:
        with pytest.raises(kvfast.ValidationError) as err:
            repo.delete(("seven", "r"))
        assert err.value.field == "driver_id" and err.value.value == "seven"
        with pytest.raises(kvfast.ValidationError) as err:
            repo.update((7, None), status="x")
        assert err.value.field == "rider_id"
        with pytest.raises(kvfast.ValidationError) as err:
            repo.create(Assignment(7, None, "x"))  # type: ignore[arg-type]
        assert err.value.field == "rider_id"
    assert r.dbsize() == 0  # nothing half-written


def test_the_key_size_limit_counts_every_part(settings: kvfast.Settings,
                                              r: redis.Redis) -> None:
    half = "x" * (MAX_KEY_BYTES // 2)
    with kvfast.Repository(Assignment, settings) as repo:
        repo.create(Assignment(1, half, "ok"))  # one part at half the limit fits
        with pytest.raises(kvfast.ValidationError, match="longer than PostgreSQL can index"):
            repo.create(Assignment(1, half + half, "too long"))
        with pytest.raises(kvfast.ValidationError, match="longer than PostgreSQL can index"):
            repo.get_by_id((1, half + half))
    assert sum(r.llen(f"{tag(settings, p)}:q") for p in range(settings.partitions)) == 1


# -- key text and wire form ---------------------------------------------------------------

def test_key_parts_are_escaped_so_different_tuples_never_share_a_hash(
        settings: kvfast.Settings, tables: Conn) -> None:
    pairs = [(1, "a:b"), (1, "a%3Ab"), (1, "a"), (1, "a:")]
    assert len({key_string(k) for k in pairs}) == len(pairs)
    with kvfast.Repository(Assignment, settings) as repo:
        repo.create_many([Assignment(d, rid, f"s{i}") for i, (d, rid) in enumerate(pairs)])
        assert [o.status if o else None for o in repo.get_many(pairs)] == ["s0", "s1", "s2",
                                                                          "s3"]
        drain(settings)
        repo.delete((1, "a:b"))
        assert repo.get_by_id((1, "a:b")) is None
        assert repo.get_by_id((1, "a%3Ab")) is not None
    drain(settings)
    assert [row[:3] for row in pg_rows(tables, "ck_assignment", "rider_id")] == [
        (1, "a", "s2"), (1, "a%3Ab", "s1"), (1, "a:", "s3")]


def test_the_key_string_and_wire_forms_agree() -> None:
    key = (7, "a:b", uuid.UUID(int=5))
    assert key_string(key) == key_string(key_wire(key)) == f"7:a%3Ab:{uuid.UUID(int=5)}"
    assert key_wire(key) == [7, "a:b", str(uuid.UUID(int=5))]
    assert key_string(7) == "7" and key_wire(7) == 7  # a single key keeps its layout


def test_queue_entries_carry_the_key_as_a_json_array(settings: kvfast.Settings,
                                                     r: redis.Redis) -> None:
    with kvfast.Repository(Assignment, settings) as repo:
        repo.create(Assignment(7, "r-1", "new"))
        repo.update((7, "r-1"), status="on trip")
        repo.delete((7, "r-1"))
    entries = [orjson.loads(raw) for p in range(settings.partitions)
               for raw in r.lrange(f"{tag(settings, p)}:q", 0, -1)]
    assert [(e["o"], e["k"]) for e in entries] == [
        ("c", [7, "r-1"]), ("u", [7, "r-1"]), ("d", [7, "r-1"])]
    assert all(codec.check(e)[2] == [7, "r-1"] for e in entries)


# -- the whole path --------------------------------------------------------------------------

def test_create_update_delete_drain_and_read_back(settings: kvfast.Settings, r: redis.Redis,
                                                  tables: Conn) -> None:
    with kvfast.Repository(Assignment, settings) as repo:
        repo.create_many([Assignment(d, f"r-{i}", "new", fare=i)
                          for d in (1, 2) for i in range(20)])
        repo.update_many({(1, "r-3"): {"status": "on trip"}, (2, "r-3"): {"fare": None}})
        assert repo.delete_many([(1, f"r-{i}") for i in range(10, 20)]) == 10
        expected = {(o.driver_id, o.rider_id): o for o in repo.get_many(
            [(d, f"r-{i}") for d in (1, 2) for i in range(20)]) if o is not None}
        assert len(expected) == 30
        assert expected[(1, "r-3")].status == "on trip" and expected[(2, "r-3")].fare is None
        drain(settings)
        rows = pg_rows(tables, "ck_assignment", "driver_id, rider_id")
        assert {(row[0], row[1]): Assignment(*row) for row in rows} == expected
        # Nothing left behind: the tombstones went with their drained deletes.
        assert not [k for k in r.scan_iter(match="*ck_assignment*")
                    if r.hexists(k, TOMBSTONE_FIELD)]
        # The fallback read: the Redis copies gone, PostgreSQL answers by tuple.
        r.delete(*r.scan_iter(match="*:o:ck_assignment:*"))
        keys = [(2, "r-3"), (1, "r-15"), (1, "r-0"), (9, "r-0")]
        got = repo.get_many(keys)
        assert got == [expected[(2, "r-3")], None, expected[(1, "r-0")], None]
        # An update of a row only PostgreSQL holds hydrates it by its tuple.
        repo.update((2, "r-3"), fare=99)
        with pytest.raises(kvfast.NotFound, match=r"\(9, 'r-0'\)"):
            repo.update((9, "r-0"), fare=1)
    drain(settings)
    row = tables.execute("SELECT fare FROM ck_assignment WHERE driver_id = 2 AND rider_id = "
                         "'r-3'").fetchone()
    assert row == (99,)


def test_a_three_part_key_with_a_uuid_through_both_stores(settings: kvfast.Settings,
                                                         r: redis.Redis, tables: Conn) -> None:
    trips = [uuid.UUID(int=i) for i in range(3)]
    objs = [TripTag(t, tag, n, note=f"{tag}{n}") for t in trips for tag in ("a", "b:c")
            for n in (1, 2)]
    with kvfast.Repository(TripTag, settings) as repo:
        repo.create_many(objs)
        repo.update((trips[0], "b:c", 2), note="changed")
        repo.delete((trips[1], "a", 1))
        drain(settings)
        r.delete(*r.scan_iter(match="*:o:ck_trip_tag:*"))
        keys = [kvfast.model_info(TripTag).key_of(o) for o in objs]
        # A key given as a list reads the same object as its tuple.
        got = repo.get_many([list(k) for k in keys])
    want = {kvfast.model_info(TripTag).key_of(o): o for o in objs}
    want[(trips[0], "b:c", 2)] = dataclasses.replace(want[(trips[0], "b:c", 2)], note="changed")
    want[(trips[1], "a", 1)] = None
    assert got == list(want.values())


def test_the_async_repository_takes_tuple_keys(settings: kvfast.Settings, tables: Conn) -> None:
    async def run() -> list[Any]:
        async with await kvfast.aio.AsyncRepository.open(Assignment, settings) as repo:
            await repo.create_many([Assignment(5, f"r-{i}", "new") for i in range(5)])
            await repo.update((5, "r-1"), status="async")
            await repo.delete((5, "r-2"))
            return await repo.get_many([(5, "r-1"), (5, "r-2"), (5, "r-3")])

    got = asyncio.run(run())
    assert [o.status if o else None for o in got] == ["async", None, "new"]
    drain(settings)
    assert [r[1] for r in pg_rows(tables, "ck_assignment", "rider_id")] == [
        "r-0", "r-1", "r-3", "r-4"]


# -- schema --------------------------------------------------------------------------------

def test_create_tables_makes_a_composite_primary_key(tables: Conn) -> None:
    rows = tables.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'ck_assignment'::regclass "
        "AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)").fetchall()
    assert [r[0] for r in rows] == ["driver_id", "rider_id"]
    kvfast.check_tables(tables, [kvfast.model_info(Assignment)])


def pk_table(pg: Conn, pk: str) -> None:
    pg.execute("CREATE TABLE ck_assignment (driver_id bigint NOT NULL, rider_id text NOT NULL, "
               f"status text NOT NULL, fare bigint, PRIMARY KEY ({pk}))")


@pytest.mark.parametrize("pk", ["driver_id", "rider_id", "driver_id, rider_id, status"])
def test_the_table_check_refuses_another_primary_key(pg: Conn, pk: str) -> None:
    pk_table(pg, pk)
    with pytest.raises(kvfast.SchemaMismatch, match=r"model Assignment needs \['driver_id', "
                                                    r"'rider_id'\]"):
        kvfast.check_tables(pg, [kvfast.model_info(Assignment)])


def test_a_primary_key_of_the_same_columns_in_another_order_works(
        pg: Conn, settings: kvfast.Settings) -> None:
    pk_table(pg, "rider_id, driver_id")
    kvfast.check_tables(pg, [kvfast.model_info(Assignment)])
    kvfast.create_tables(pg, [kvfast.model_info(Assignment)])  # kvfast's own; ours stays
    with kvfast.Repository(Assignment, settings) as repo:
        repo.create(Assignment(1, "r", "a"))
        drain(settings)
        repo.create(Assignment(1, "r", "b"))  # the upsert's ON CONFLICT finds the key
        repo.update((1, "r"), fare=3)
        drain(settings)
    assert pg_rows(pg, "ck_assignment", "rider_id") == [(1, "r", "b", 3)]


# -- dead letters -------------------------------------------------------------------------

def test_the_dead_letter_tool_shows_and_requeues_tuple_keys(
        settings: kvfast.Settings, r: redis.Redis, tables: Conn,
        capsys: pytest.CaptureFixture[str]) -> None:
    tables.execute("ALTER TABLE ck_assignment ADD CONSTRAINT fare_ok CHECK (fare >= 0)")
    with kvfast.Repository(Assignment, settings) as repo:
        repo.create(Assignment(3, "r:9", "new", fare=-1))
        drain(settings)
        tables.execute("ALTER TABLE ck_assignment DROP CONSTRAINT fare_ok")
        args = ["--redis-url", settings.redis_url, "--partitions", str(settings.partitions),
                "--namespace", settings.namespace]
        assert deadletter_main([*args, "list"]) == 0
        out = capsys.readouterr().out
        assert "ck_assignment" in out and "(3, 'r:9')" in out, out
        assert deadletter_main([*args, "requeue"]) == 0
        drain(settings)
    assert pg_rows(tables, "ck_assignment", "rider_id") == [(3, "r:9", "new", -1)]


@kvfast.model(table="ck_leg", key=("trip", "leg"), indexes=("trip", "driver"))
class Leg:
    trip: int
    leg: int
    driver: str


def test_find_on_a_composite_key_model_by_one_key_part_and_another_field(
        settings: kvfast.Settings, pg: Conn) -> None:
    kvfast.create_tables(pg, [kvfast.model_info(Leg)])
    with kvfast.Repository(Leg, settings) as repo:
        repo.create_many([Leg(t, n, f"d{(t + n) % 3}") for t in range(5) for n in range(4)])
        drain(settings)
        repo.update((2, 1), driver="moved")
        repo.delete((2, 3))
        got = sorted((o.trip, o.leg) for o in repo.find(trip=2))
        assert got == [(2, 0), (2, 1), (2, 2)]
        assert [(o.trip, o.leg) for o in repo.find(driver="moved")] == [(2, 1)]
        assert sorted((o.trip, o.leg) for o in repo.find(trip=2, driver="d2")) == [(2, 0)]
