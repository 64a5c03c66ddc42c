"""Resync entries (``python -m kvfast.deadletter requeue``): the drainer applies the
key's current Redis hash.  Present → an upsert of the whole object; tombstone →
nothing (its delete drains); absent → nothing, or a delete for the resync of a
dead-lettered delete.  Later entries of the key in the same batch are already in
the hash and change nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
import redis
from drainhelpers import (
    converged,
    create_tables,
    dead_letters,
    drain_in_process,
    partition_of,
    pg_objects,
    queue_key,
    ride,
)
from drainmodels import DRide

import kvfast
from kvfast import codec
from kvfast.batch import DELETE, UPSERT, build_batch
from kvfast.drainer import Drainer
from kvfast.keys import Keys


def resync(key: int, *, gone: bool = False) -> bytes:
    return codec.encode_resync("d_rides", key, codec.now_us(), gone=gone)


def push(r: redis.Redis, settings: kvfast.Settings, key: int, *entries: bytes) -> None:
    r.rpush(queue_key(settings, partition_of(settings, DRide, key)), *entries)


def obj_key(settings: kvfast.Settings, key: int) -> str:
    keys = Keys(settings.namespace, settings.partitions)
    return keys.obj(partition_of(settings, DRide, key), "d_rides", str(key))


def stale_row(pg: psycopg.Connection[Any], key: int) -> None:
    """PostgreSQL behind Redis, as after a dead-lettered write."""
    pg.execute("UPDATE d_rides SET counter = -1, status = 'stale' WHERE id = %s", (key,))


def test_encode_resync_is_a_compact_entry_with_the_mark() -> None:
    raw = codec.encode_resync("d_rides", 7, 123, gone=True)
    assert codec.RESYNC_MARK in raw
    assert codec.decode(raw) == codec.Entry("d_rides", codec.OP_RESYNC, 7, {}, 123, None)
    assert b'"g":true' in raw and b'"g"' not in codec.encode_resync("d_rides", 7, 123)


def test_resync_of_a_present_key_upserts_its_current_object(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many([ride(1, counter=1), ride(2, counter=1)])
        drain_in_process(settings)
        stale_row(pg, 1)
        pg.execute("DELETE FROM d_rides WHERE id = 2")  # a create that never landed
        rides.update(1, counter=5, status=None)
        r.delete(queue_key(settings, partition_of(settings, DRide, 1)))  # lost: only resync
        push(r, settings, 1, resync(1))
        push(r, settings, 2, resync(2))
        assert drain_in_process(settings) == 2
    rows = pg_objects(pg, DRide)
    assert (rows[1].counter, rows[1].status) == (5, None)
    assert rows[2] == ride(2, counter=1)
    converged(r, pg, settings)


def test_resync_of_a_tombstone_applies_nothing_and_its_delete_drains(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many([ride(1), ride(2)])
        drain_in_process(settings)
        push(r, settings, 1, resync(1))  # before the delete, in the same batch
        rides.delete_many([1, 2])
        push(r, settings, 2, resync(2))  # after the delete
        assert drain_in_process(settings) == 4
    assert pg_objects(pg, DRide) == {}
    converged(r, pg, settings)


def test_resync_of_an_absent_key_leaves_the_row_unless_it_replaced_a_delete(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """Absent from Redis: deleted and drained, or in PostgreSQL only (an expired TTL'd
    copy, a row the user brought): the row stays.  The resync of a dead-lettered
    delete (its tombstone was cleared at the ack) deletes it."""
    create_tables(pg)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many([ride(1), ride(2)])
        drain_in_process(settings)
    r.delete(obj_key(settings, 1), obj_key(settings, 2))
    push(r, settings, 1, resync(1))
    push(r, settings, 2, resync(2, gone=True))
    push(r, settings, 3, resync(3, gone=True))  # in neither store: a no-op delete
    assert drain_in_process(settings) == 3
    assert sorted(pg_objects(pg, DRide)) == [1]
    assert not dead_letters(r, settings)


def test_a_resync_between_entries_of_its_key_sets_the_current_state_once(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """[create, update, resync, update, update] in one claim, then one more update
    behind the claim: the hash, read after the claim, holds that last one too, and the
    entries after the resync fold into it without changing it (applied on top they
    would set the counter back to 3)."""
    create_tables(pg)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create(ride(1, counter=1))
        rides.update(1, counter=2, status="two")
        push(r, settings, 1, resync(1))
        rides.update(1, counter=3)
        rides.update(1, status="four")
        rides.create(ride(2, counter=1))
        push(r, settings, 2, resync(2))
        rides.delete(2)
        rides.create(ride(2, counter=9))  # re-created after the delete
    drainer = Drainer(settings)
    try:
        claim = drainer.claim()
        assert claim is not None
        with kvfast.Repository(DRide, settings) as rides:
            rides.update(1, counter=4)
        prepared = drainer.prepare(claim.parts)
        ops = prepared.batch.models["d_rides"].ops
        assert ops[1].kind == UPSERT and len(ops[1].entries) == 5
        values = dict(zip(kvfast.model_info(DRide).field_names, ops[1].row, strict=True))
        assert (values["counter"], values["status"]) == (4, "four")
        assert ops[2].kind == UPSERT and len(ops[2].entries) == 4
        assert dict(zip(kvfast.model_info(DRide).field_names, ops[2].row,
                        strict=True))["counter"] == 9
        drainer.process(claim, prepared)
        assert pg_objects(pg, DRide)[1].counter == 4
        drainer.drain_until_empty()
    finally:
        drainer.close()
    rows = pg_objects(pg, DRide)
    assert (rows[1].counter, rows[1].status) == (4, "four") and rows[2].counter == 9
    converged(r, pg, settings)


def test_the_hashes_are_read_only_for_claims_with_resyncs_in_one_round_trip(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many(ride(k) for k in range(1, 51))
        r.config_resetstat()
        drain_in_process(settings)
        assert "cmdstat_hgetall" not in r.info("commandstats")
        for k in range(1, 21):
            push(r, settings, k, resync(k))
        push(r, settings, 1, resync(1))  # the same key twice: one read
        r.config_resetstat()
        drain_in_process(settings)
    assert r.info("commandstats")["cmdstat_hgetall"]["calls"] == 20
    converged(r, pg, settings)


def test_a_resync_without_its_hash_or_of_a_damaged_hash_is_a_dead_letter(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    p = partition_of(settings, DRide, 1)
    batch = build_batch([(p, [resync(1)])])
    assert [reason for _, reason, _ in batch.dead] == [
        "undecodable entry: DRide resync '1': its Redis hash was not read"]
    batch = build_batch([(p, [resync(1)])], {("d_rides", "1"): {b"id": b"1"}})
    assert "Redis hash has no 'rider'" in batch.dead[0][1]
    batch = build_batch([(p, [resync(1, gone=True)])], {("d_rides", "1"): {}})
    assert batch.models["d_rides"].ops[1].kind == DELETE and not batch.dead
