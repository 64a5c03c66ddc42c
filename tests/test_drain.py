"""The drain path against real servers: convergence, per-key order, crashes, stale
drainers, rejected rows.

"Converged" (drainhelpers.converged) means: every PostgreSQL row equals its Redis
object field by field, every live Redis object has its row, no tombstone is left,
and no partition has queued entries or a batch in flight.  "Exactly once" is
checked with the partitions' ``drained`` counters: every entry a producer queued
is acked exactly once, even when its batch was applied twice.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import random
import signal
import threading
import time
from typing import Any

import orjson
import psycopg
import pytest
import redis
from drainhelpers import (
    HeldBatch,
    converged,
    create_tables,
    dead_key,
    dead_letters,
    drain_in_process,
    drain_until_empty,
    drained_total,
    fence_epoch,
    inflight_key,
    inflight_meta_key,
    keys_in_partition,
    partition_of,
    pg_objects,
    produce_in_processes,
    produce_mixed,
    producers,
    queue_key,
    ride,
    start_supervisor,
    wait_idle,
    wait_lease_expired,
)
from drainkeys import tag
from drainmodels import DDriver, DRide

import kvfast
from kvfast import codec
from kvfast.batch import build_batch
from kvfast.client import connect_pg
from kvfast.drainer import Drainer
from kvfast.errors import DecodeError
from kvfast.pgcopy import Applier

# -- convergence ------------------------------------------------------------------------


def test_backlog_from_two_producers_converges(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """2 producer processes × mixed ops on shared keys, then 3 drainers until empty."""
    create_tables(pg)
    produced = produce_in_processes(settings, n=2, n_ops=1500, seed=1)
    assert produced > 1500
    out = drain_until_empty(settings, workers=3)
    counts = converged(r, pg, settings)
    assert drained_total(r, settings) == produced, out[-2000:]
    # The load created and deleted objects of both models.
    assert 0 < counts[DRide] < 150 and 0 < counts[DDriver] < 150


@pytest.mark.slow
def test_concurrent_load_and_two_supervisors_converge(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """Drained while being written, by a long-running supervisor (3 drainers, small
    batches) and a second ``--drain-until-empty`` supervisor on the same servers."""
    create_tables(pg)
    with start_supervisor(settings, "--batch-size", "100", workers=3) as live:
        produced = produce_in_processes(settings, n=2, n_ops=4000, seed=2)
        drain_until_empty(settings, workers=3)
        wait_idle(r, settings)
        live.send(signal.SIGTERM)
        code = live.wait(60)
        assert code == 0, live.output()[-3000:]
    converged(r, pg, settings)
    assert drained_total(r, settings) == produced


# -- per-key order --------------------------------------------------------------------------


def test_hot_key_ends_with_its_last_value(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """3,000 updates of one key, interleaved with other keys' writes, drained as they
    come by 4 drainers in 50-entry batches: PostgreSQL never goes back to an older
    value and ends with the last one."""
    create_tables(pg)
    rng = random.Random(11)
    hot = 10_000
    sampled: list[int] = []
    with (
        kvfast.Client(settings) as client,
        start_supervisor(settings, "--batch-size", "50", workers=4) as sup,
    ):
        rides = kvfast.Repository(DRide, client=client)
        drivers = kvfast.Repository(DDriver, client=client)
        rides.create(ride(hot, counter=0, fare_cents=0))
        # The supervisor is draining before the updates start (on a loaded machine
        # it may otherwise still be starting when the last write is sent).
        deadline = time.monotonic() + 60
        while pg.execute("SELECT 1 FROM d_rides WHERE id = %s", (hot,)).fetchone() is None:
            if time.monotonic() >= deadline:  # a wait-loop guard, not a timing check
                pytest.fail(sup.output()[-3000:])
            time.sleep(0.05)
        i = 0
        while i < 3000:
            if rng.random() < 0.1:
                # A burst of updates of the hot key in one round trip.
                n = min(5, 3000 - i)
                burst = [(hot, {"counter": i + j + 1, "fare_cents": i + j + 1}) for j in range(n)]
                rides.update_many(burst)
                i += n
            else:
                i += 1
                rides.update(hot, counter=i, fare_cents=i)
            k = rng.randrange(1, 300)
            x = rng.random()
            if x < 0.4:
                rides.create(ride(k, counter=rng.randrange(1000)))
            elif x < 0.6:
                rides.delete(k)
            elif x < 0.8:
                drivers.create(DDriver(code=f"d{k}", name="n", rating=1.5, active=True))
            else:
                with contextlib.suppress(kvfast.NotFound):
                    rides.update(k, status=None, counter=-i)
            if i % 100 < 5:
                row = pg.execute("SELECT counter FROM d_rides WHERE id = %s", (hot,)).fetchone()
                sampled.append(-1 if row is None else row[0])
        assert i == 3000
        wait_idle(r, settings)
        sup.send(signal.SIGTERM)
        assert sup.wait(60) == 0, sup.output()[-3000:]
    assert sampled == sorted(sampled), f"the hot key went back in time: {sampled}"
    assert min(sampled) >= 0, "the hot key's row vanished from PostgreSQL"
    row = pg.execute("SELECT counter, fare_cents FROM d_rides WHERE id = %s", (hot,)).fetchone()
    assert row == (3000, 3000)
    converged(r, pg, settings)


# -- crashes ------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["claimed", "committed"])
def test_drainer_killed_mid_batch_loses_nothing(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, stage: str
) -> None:
    """kill -9 a drainer between claim and COPY ("claimed") or between COMMIT and ack
    ("committed"): the batch stays in flight, is taken over once its lease expires,
    and every entry lands exactly once."""
    create_tables(pg)
    produced = produce_mixed(settings, seed=3, n_ops=600)
    held = HeldBatch(settings, stage)
    try:
        parts = held.info["parts"]
        # One claim gathers several partitions (up to the batch size).
        assert len(parts) > 1
        claimed = sum(len(entries) for _, entries in parts.values())
        assert claimed == min(settings.batch_size, produced)
        for p, (epoch, entries) in parts.items():
            assert r.hget(inflight_meta_key(settings, p), "epoch") == str(epoch).encode()
            assert r.lrange(inflight_key(settings, p), 0, -1) == entries
            if stage == "claimed":
                assert fence_epoch(pg, settings, p) is None
            else:
                assert fence_epoch(pg, settings, p) == epoch
        landed = [*pg_objects(pg, DRide).items(), *pg_objects(pg, DDriver).items()]
        if stage == "claimed":
            assert not landed
        else:
            assert landed
            assert {partition_of(settings, type(o), k) for k, o in landed} <= set(parts)
        held.kill()
    finally:
        held.close()
    # The dead drainer's batch is still in flight, nothing was acked.
    assert all(r.exists(inflight_meta_key(settings, p)) for p in parts)
    assert drained_total(r, settings) == 0
    drain_until_empty(settings, workers=2)
    converged(r, pg, settings)
    assert drained_total(r, settings) == produced
    for p, (epoch, _) in parts.items():
        taken_over = fence_epoch(pg, settings, p)
        assert taken_over is not None and taken_over > epoch


@pytest.mark.slow
def test_drainers_killed_under_load_are_restarted_and_converge(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, tmp_path: Any
) -> None:
    """kill -9 the supervisor's drainers while producers write: the supervisor
    restarts them, the dead drainers' batches are taken over, nothing is lost."""
    create_tables(pg)
    rng = random.Random(5)
    stop = tmp_path / "stop"
    kills = 4
    with start_supervisor(settings, "--batch-size", "100", workers=3) as sup:
        with producers(settings, 2, 10**6, stop_file=str(stop), seed=5) as futures:
            victims: list[int] = []
            pids = sup.wait_drainers(3)
            for _ in range(kills):
                time.sleep(0.6)
                victim = rng.choice(pids)
                sup_children = set(sup.drainers())
                assert victim in sup_children
                os.kill(victim, signal.SIGKILL)
                victims.append(victim)
                pids = sup.wait_drainers(3, exclude=victims)
            time.sleep(0.5)
            stop.touch()
            produced = sum(f.result(timeout=120) for f in futures)
        wait_idle(r, settings)
        sup.send(signal.SIGTERM)
        code = sup.wait(60)
        out = sup.output()
    assert code == 0, out[-3000:]
    assert out.count("exited with -9") == kills, out[-3000:]
    converged(r, pg, settings)
    assert drained_total(r, settings) == produced


# -- stale drainers -------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["claimed", "committed"])
def test_stale_drainer_cannot_overwrite_newer_data(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, stage: str
) -> None:
    """A drainer stopped (SIGSTOP) past its lease while holding a batch wakes up after
    another drainer re-applied that batch and newer writes drained: its commit is
    fenced off, its ack refused, and the batch now in flight is left alone."""
    create_tables(pg)
    p = 3
    keys = keys_in_partition(settings, DRide, p, 40)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many(ride(k, counter=1, status="first") for k in keys)
        held = HeldBatch(settings, stage)
        try:
            assert list(held.info["parts"]) == [p]
            old_epoch = held.info["parts"][p][0]
            wait_lease_expired(r, settings, p)
            # Another drainer takes the batch over and applies it; newer writes follow.
            drain_in_process(settings)
            assert (fence_epoch(pg, settings, p) or 0) > old_epoch
            rides.update_many({k: {"counter": 2, "status": "newer"} for k in keys})
            rides.delete(keys[0])
            drain_in_process(settings)
            # The newest writes are claimed by a third drainer: in flight at wake-up.
            rides.update_many({k: {"counter": 3} for k in keys[1:]})
            third = Drainer(settings)
            try:
                claim = third.claim()
                assert claim is not None and [part.partition for part in claim.parts] == [p]
                meta = r.hgetall(inflight_meta_key(settings, p))
                inflight = r.lrange(inflight_key(settings, p), 0, -1)

                result = held.resume()

                assert result == {"ack": 0, "stale": True, "acked": False}
                assert r.hgetall(inflight_meta_key(settings, p)) == meta
                assert r.lrange(inflight_key(settings, p), 0, -1) == inflight
                rows = pg_objects(pg, DRide)
                assert keys[0] not in rows
                assert {(o.counter, o.status) for o in rows.values()} == {(2, "newer")}
                report = third.process(claim)
                assert report.acked and not report.stale
            finally:
                third.close()
        finally:
            held.close()
    rows = pg_objects(pg, DRide)
    assert sorted(rows) == keys[1:]
    assert {(o.counter, o.status) for o in rows.values()} == {(3, "newer")}
    converged(r, pg, settings)


def test_drain_resumes_after_redis_rolls_back_its_epochs(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """Redis restored from an older snapshot (or restarted without persistence) hands
    out epochs PostgreSQL's fence has already seen.  Draining must go on without
    waiting for one lease expiry per missing epoch (the drainer that still owns
    its batch moves the counter past the fence: rebase.lua)."""
    create_tables(pg)
    p = 1
    key = keys_in_partition(settings, DRide, p, 1)[0]
    epoch_key = f"{tag(settings, p)}:e"
    drainer = Drainer(settings)
    try:
        with kvfast.Repository(DRide, settings) as rides:
            rides.create(ride(key, counter=0))
            claim = drainer.claim()
            assert claim is not None
            drainer.process(claim)
            snapshot = r.get(epoch_key)
            for i in range(1, 20):
                rides.update(key, counter=i)
                claim = drainer.claim()
                assert claim is not None and drainer.process(claim).acked
            assert (fence_epoch(pg, settings, p) or 0) > int(snapshot or 0)
            r.set(epoch_key, snapshot or b"0")  # the restored snapshot's counter
            rides.update(key, counter=999)
    finally:
        drainer.close()

    stop = threading.Event()
    drainer = Drainer(settings, should_stop=stop.is_set)
    thread = threading.Thread(target=drainer.run, name="drainer", daemon=True)
    thread.start()
    try:
        # Three leases: time for a drainer to notice a stale epoch and recover.
        deadline = time.monotonic() + 3 * settings.lease_ms / 1000
        counter = None
        while time.monotonic() < deadline and counter != 999:
            row = pg.execute("SELECT counter FROM d_rides WHERE id = %s", (key,)).fetchone()
            counter = row[0] if row else None
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
        drainer.close()
    assert counter == 999, (
        f"partition {p} is stuck behind the fence (epoch {fence_epoch(pg, settings, p)}, "
        f"Redis counter {r.get(epoch_key)!r}): the write never reached PostgreSQL"
    )
    converged(r, pg, settings)


# -- rows PostgreSQL rejects ---------------------------------------------------------------


def test_rejected_rows_are_dead_lettered_and_the_rest_lands(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    pg.execute(
        "ALTER TABLE d_rides ADD CONSTRAINT d_rides_fare_nonneg CHECK (fare_cents >= 0)"
    )
    keys = list(range(1, 201))
    bad = {7, 50, 51, 120, 200}
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many(ride(k, fare_cents=-1 if k in bad else k, counter=k) for k in keys)
        # Updates and deletes in the same batches as the bad rows.
        rides.update_many({k: {"status": "updated"} for k in range(2, 201, 10)})
        rides.delete_many([3, 33, 133])
        assert drain_in_process(settings) == 200 + 20 + 3

        rows = pg_objects(pg, DRide)
        assert set(rows) == set(keys) - bad - {3, 33, 133}
        assert all(o.status == "updated" for k, o in rows.items() if k % 10 == 2)
        dead = dead_letters(r, settings)
        assert sorted(orjson.loads(d["entry"])["k"] for _, d in dead) == sorted(bad)
        for p, doc in dead:
            entry = orjson.loads(doc["entry"])
            assert entry["m"] == "d_rides" and entry["o"] == "c"
            assert partition_of(settings, DRide, entry["k"]) == p
            assert "d_rides_fare_nonneg" in doc["error"] and "23514" in doc["error"], doc
        counted = sum(int(r.hget(f"{tag(settings, p)}:s", "dead") or 0)
                      for p in range(settings.partitions))
        assert counted == len(bad)

        # The partitions are not stuck: later writes to them drain, a bad partial
        # update is dead-lettered on its own, and an update of a row whose create
        # was rejected is dead-lettered rather than silently dropped.
        r.delete(*[dead_key(settings, p) for p in range(settings.partitions)])
        rides.update(8, fare_cents=-5)
        rides.update(9, fare_cents=99, status="fine")
        rides.update(7, status="orphan")
        rides.create_many([ride(k, fare_cents=k) for k in (1000, 1001, 1002)])
        rides.delete(10)
        drain_in_process(settings)
    rows = pg_objects(pg, DRide)
    assert rows[8].fare_cents == 8
    assert (rows[9].fare_cents, rows[9].status) == (99, "fine")
    assert {1000, 1001, 1002} <= set(rows) and 10 not in rows
    errors = {orjson.loads(d["entry"])["k"]: d["error"] for _, d in dead_letters(r, settings)}
    assert set(errors) == {7, 8}
    assert "d_rides_fare_nonneg" in errors[8]
    assert "not in PostgreSQL" in errors[7]
    converged(r, pg, settings, diverged={DRide: bad | {8}}, allow_dead=True)


def test_garbage_entries_are_dead_lettered_and_draining_continues(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    p = 5
    k1, k2 = keys_in_partition(settings, DRide, p, 2)
    garbage = [
        b"\xff\xfe\x00not utf-8",
        b"not json",
        b"[1, 2, 3]",
        b'{"v": 99, "m": "d_rides", "o": "c", "k": 1, "f": {"id": 1}, "t": 1}',
        b'{"v": 1, "m": "d_rides", "o": "c", "k": 1, "f": {"id": "one"}, "t": 1}',
        b'{"v": 1, "m": "d_rides", "o": "d", "k": 1, "t": 1}',
        # Object-shaped pieces that would parse if a batch were read as one JSON
        # array naively.
        b'{"v": 1, "m": "d_rides", "o": "d", "k": 1, "i": "x", "t": 1}, {"v": 1}',
        b'{"v": 1, "m": "d_rides", "o": "u", "k": 1, "f": {"x": "}',
        b'{"counter": 1}}, "t": 1}',
    ]
    # An entry of a model this drainer was not given is not garbage: it waits, in
    # order, for a drainer that has the model (kvfast.holds), and blocks nothing.
    foreign = b'{"v": 1, "m": "no_such_table", "o": "c", "k": 1, "f": {"id": 1}, "t": 1}'
    with kvfast.Repository(DRide, settings) as rides:
        rides.create(ride(k1))
        r.rpush(queue_key(settings, p), *garbage[:4], foreign, *garbage[4:])
        rides.create(ride(k2))
        rides.update(k1, counter=41)
        drain_in_process(settings)
        assert rides.client.holds() == {
            "no_such_table": (1, "no model registered for table 'no_such_table' in this drainer")}
    held = f"{queue_key(settings, p)[:-2]}:h"
    assert r.lrange(f"{held}:no_such_table", 0, -1) == [foreign]
    r.delete(held, f"{held}:no_such_table")  # it waits for its drainer; the rest is checked
    rows = pg_objects(pg, DRide)
    assert sorted(rows) == [k1, k2] and rows[k1].counter == 41
    dead = dead_letters(r, settings)
    assert [q for q, _ in dead] == [p] * len(garbage)
    assert all(d["error"].startswith("undecodable entry") for _, d in dead), dead
    stored = [
        d["entry"].encode() if "entry" in d else base64.b64decode(d["entry_b64"])
        for _, d in dead
    ]
    assert stored == garbage
    converged(r, pg, settings, allow_dead=True)


@pytest.mark.parametrize("deferred", [False, True], ids=["immediate_fk", "deferred_fk"])
def test_foreign_key_violation_is_isolated(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, deferred: bool
) -> None:
    """A foreign key PostgreSQL checks at COMMIT (DEFERRABLE INITIALLY DEFERRED) must be
    isolated like any other rejected row, not fail the whole batch again and again."""
    create_tables(pg)
    pg.execute("CREATE TABLE d_riders (name text PRIMARY KEY)")
    pg.execute("INSERT INTO d_riders VALUES ('ann'), ('bob')")
    when = " DEFERRABLE INITIALLY DEFERRED" if deferred else ""
    pg.execute(
        "ALTER TABLE d_rides ADD CONSTRAINT d_rides_rider_fk FOREIGN KEY (rider) "
        f"REFERENCES d_riders (name){when}"
    )
    p = 2
    keys = keys_in_partition(settings, DRide, p, 30)
    ghosts = set(keys[5::10])
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many(ride(k, rider="ghost" if k in ghosts else "bob") for k in keys)
    drainer = Drainer(settings)
    try:
        claim = drainer.claim()
        assert claim is not None and [part.partition for part in claim.parts] == [p]
        assert len(claim.entries) == 30
        batch = build_batch(claim.slices())
        with connect_pg(settings, autocommit=False) as conn:
            dead = Applier(conn, settings.namespace).apply(batch, {p: claim.parts[0].epoch}).dead
    finally:
        drainer.close()
    assert sorted(op.key for op, _ in dead) == sorted(ghosts)
    assert all("d_rides_rider_fk" in error for _, error in dead), dead
    assert sorted(pg_objects(pg, DRide)) == sorted(set(keys) - ghosts)


def test_big_batch_with_many_keys_and_ops_drains_in_one_claim(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """A 5,000-entry batch (beyond Lua's unpack limit) with creates, partial updates
    and deletes folded per key, applied in one claim."""
    create_tables(pg)
    big = dataclasses.replace(settings, batch_size=20_000)
    p = 6
    keys = keys_in_partition(settings, DRide, p, 1500)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many(ride(k, counter=0) for k in keys)
        rides.update_many([(k, {"counter": 1, "distance": None}) for k in keys])
        rides.update_many([(k, {"counter": 2}) for k in keys[::2]])
        rides.delete_many(keys[::3])
        rides.create_many(ride(k, counter=7, status=None) for k in keys[::6])
        n = r.llen(queue_key(settings, p))
        assert n > 4000
    drainer = Drainer(big)
    try:
        claim = drainer.claim()
        assert claim is not None and len(claim.entries) == n
        report = drainer.process(claim)
        assert report.acked and report.dead == 0
        assert drainer.claim() is None
    finally:
        drainer.close()
    rows = pg_objects(pg, DRide)
    expected = set(keys) - set(keys[::3]) | set(keys[::6])
    assert set(rows) == expected
    assert {rows[k].counter for k in keys[::6]} == {7}
    converged(r, pg, settings)


def test_parse_reads_each_entry_as_if_alone() -> None:
    """codec.parse (the drainer's parser): every entry comes out exactly as
    orjson reads it, or a DecodeError naming it not JSON."""
    good = [b'{"a": 1}', b'{"b": [1, 2]}', b'{}']
    tricky = [
        b'{"a": 1}, {"b": 2}',  # two objects in one entry
        b'{"s": "}',  # an open string that the next entry would close
        b'{"t": 1}"}',
        b"[1]",
        b"",
        b"{",
        b"}",
    ]
    assert [codec.parse(raw) for raw in good] == [{"a": 1}, {"b": [1, 2]}, {}]
    for raw in tricky:
        try:
            alone: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            with pytest.raises(DecodeError, match="not JSON"):
                codec.parse(raw)
        else:
            assert codec.parse(raw) == alone, raw


def test_claims_take_the_partitions_round_robin(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """A claim fills its batch from several partitions; the next claim starts after
    the last partition the previous one took, so a partition that did not fit is
    not starved by the ones before it in the order."""
    create_tables(pg)
    small = dataclasses.replace(settings, batch_size=25)
    with kvfast.Repository(DRide, settings) as rides:
        for p in range(settings.partitions):
            rides.create_many(ride(k) for k in keys_in_partition(settings, DRide, p, 10))
    drainer = Drainer(small)
    claims: list[list[tuple[int, int]]] = []
    try:
        while (claim := drainer.claim()) is not None:
            claims.append([(part.partition, len(part.entries)) for part in claim.parts])
            assert drainer.process(claim).acked
    finally:
        drainer.close()
    n = settings.partitions
    first = claims[0][0][0]
    assert claims[0] == [(first, 10), ((first + 1) % n, 10), ((first + 2) % n, 5)]
    # The second claim goes on after the partition the first one left half-drained.
    assert claims[1][0][0] == (first + 3) % n
    assert sum(count for parts in claims for _, count in parts) == 10 * n
    assert all(sum(count for _, count in parts) <= 25 for parts in claims)
    converged(r, pg, settings)


def test_a_partition_taken_over_mid_batch_is_dropped_and_the_rest_commits(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """One claim holds two partitions; before it commits, another drainer owns one
    of them (its lease ran out) and has committed a newer epoch.  The fence refuses
    that share: the drainer drops it, commits and acks the other one, and leaves
    the new owner's in-flight record alone."""
    create_tables(pg)
    kept_p, lost_p = 1, 2
    kept = keys_in_partition(settings, DRide, kept_p, 5)
    lost = keys_in_partition(settings, DRide, lost_p, 5)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many(ride(k, counter=1) for k in kept + lost)
    drainer = Drainer(settings)
    try:
        claim = drainer.claim()
        assert claim is not None
        assert sorted(part.partition for part in claim.parts) == [kept_p, lost_p]
        lost_epoch = next(part.epoch for part in claim.parts if part.partition == lost_p)
        # The new owner: it holds the partition in Redis and fenced a newer epoch.
        newer = lost_epoch + 1
        r.hset(inflight_meta_key(settings, lost_p),
               mapping={"owner": "the-new-owner", "epoch": newer})
        pg.execute("UPDATE kvfast_fence SET epoch = %s, owner = 'the-new-owner' "
                   "WHERE namespace = %s AND partition = %s", (newer, settings.namespace, lost_p))
        if fence_epoch(pg, settings, lost_p) is None:
            pg.execute("INSERT INTO kvfast_fence VALUES (%s, %s, %s, 'the-new-owner')",
                       (settings.namespace, lost_p, newer))
        report = drainer.process(claim)
    finally:
        drainer.close()
    assert report.stale == 1 and report.acked
    assert report.applied == len(kept) and report.dead == 0
    assert sorted(pg_objects(pg, DRide)) == sorted(kept)
    assert fence_epoch(pg, settings, kept_p) is not None
    assert fence_epoch(pg, settings, lost_p) == newer
    assert not r.exists(inflight_meta_key(settings, kept_p))
    assert r.hget(inflight_meta_key(settings, lost_p), "owner") == b"the-new-owner"
    assert r.llen(inflight_key(settings, lost_p)) == len(lost)
