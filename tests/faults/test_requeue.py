"""Issue 14 item 9: ``python -m kvfast.deadletter requeue`` must never take a key back in time.

Rows are dead-lettered the way production makes them (a CHECK constraint rejects
creates and updates, a foreign key rejects deletes), the same keys are written
again while they sit in the dead-letter lists (updates, deletes, re-creates,
some of which drain), the operator fixes the table and requeues while the
drainers run.  The old requeue pushed each old entry to the tail of its queue:
drained after the newer writes, it set the row back to an older state (112 of
199 keys differed in the report).  Now requeue pushes a resync of each key and
the drainer applies the key's current Redis hash.

Every write sets ``counter`` to the key's next version, so "back in time" is
visible: PostgreSQL is sampled throughout the drain, and each key's counter must
be a value Redis had and never go down.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import (
    ROOT,
    dead_letters,
    pg_objects,
    redis_objects,
    ride,
    same_value,
    start_supervisor,
    subprocess_env,
)
from drainmodels import DDriver, DRide

import kvfast

from .checks import final_check
from .servers import FaultServers, fault_settings
from .supervise import stop_supervisor, wait_drained, wait_for

KEYS = 200


@pytest.fixture
def settings(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any]
) -> kvfast.Settings:
    return fault_settings(fault_servers, partitions=4, batch_size=50, workers=2)


def requeue_cli(settings: kvfast.Settings) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kvfast.deadletter", "--redis-url", settings.redis_url,
         "--partitions", str(settings.partitions), "--namespace", settings.namespace, "requeue"],
        stdin=subprocess.DEVNULL, env=subprocess_env(), cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout.strip()


class Journal:
    """Every write of the scenario: per key, the counters Redis had (its versions)."""

    def __init__(self, rides: kvfast.Repository[DRide]) -> None:
        self.rides = rides
        self.version: dict[int, int] = {}
        self.had: dict[int, set[int]] = {}
        self.live: set[int] = set()
        self.entries = 0

    def _next(self, key: int) -> int:
        v = self.version[key] = self.version.get(key, 0) + 1
        return v

    def create(self, key: int, *, fare: int) -> None:
        v = self._next(key)
        self.rides.create(ride(key, counter=v, fare_cents=fare))
        self.had.setdefault(key, set()).add(v)
        self.live.add(key)
        self.entries += 1

    def update(self, key: int, *, fare: int) -> None:
        v = self._next(key)
        self.rides.update(key, counter=v, fare_cents=fare, status=f"v{v}")
        self.had[key].add(v)
        self.entries += 1

    def delete(self, key: int) -> None:
        self._next(key)
        self.rides.delete(key)
        self.live.discard(key)
        self.entries += 1


def differing(fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings) -> int:
    """Keys whose PostgreSQL row is not their Redis object (present in one store only
    counts too)."""
    in_pg = pg_objects(fpg, DRide)
    in_redis, _ = redis_objects(fr, settings, DRide)
    keys = set(in_pg) | set(in_redis)
    return sum(
        1 for k in keys
        if k not in in_pg or k not in in_redis
        or any(not same_value(getattr(in_pg[k], n), getattr(in_redis[k], n))
               for n in kvfast.model_info(DRide).field_names)
    )


class Sampler(threading.Thread):
    """Reads every row's counter in a loop; records each key's counters in order."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.seen: dict[int, list[int]] = {}
        self.samples = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                last = self.stop.is_set()
                for key, counter in conn.execute("SELECT id, counter FROM d_rides"):
                    seen = self.seen.setdefault(key, [])
                    if not seen or seen[-1] != counter:
                        seen.append(counter)
                self.samples += 1
                if last:
                    return


@pytest.mark.slow
def test_requeue_never_takes_a_key_back_in_time(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    rng = random.Random(14)
    kvfast.create_tables(fpg, [kvfast.model_info(m) for m in (DRide, DDriver)])
    fpg.execute("ALTER TABLE d_rides ADD CONSTRAINT rq_fare CHECK (fare_cents >= 0)")
    fpg.execute("CREATE TABLE rq_guard (ride_id bigint REFERENCES d_rides (id))")
    keys = list(range(1, KEYS + 1))
    rng.shuffle(keys)
    bad_creates, bad_updates, bad_deletes = keys[:50], keys[50:90], keys[90:120]
    rewritten = keys[:150]
    with (
        start_supervisor(settings, workers=2) as sup,
        kvfast.Repository(DRide, settings) as rides,
    ):
        sup.wait_drainers(2)
        journal = Journal(rides)
        # 1. Creates, some of them rejected (CHECK).
        for k in sorted(keys):
            journal.create(k, fare=-1 if k in bad_creates else k)
        wait_drained(fr, settings, sup)
        # 2. Rejected updates (CHECK) and rejected deletes (a guard row references them).
        fpg.execute("INSERT INTO rq_guard SELECT unnest(%s::bigint[])", (bad_deletes,))
        for k in bad_updates:
            journal.update(k, fare=-2)
        for k in bad_deletes:
            journal.delete(k)
        wait_drained(fr, settings, sup)
        first_dead = len(dead_letters(fr, settings))
        # 3. The same keys written again while their writes are dead letters: random
        #    updates, deletes and re-creates; the valid ones drain.
        for k in rewritten:
            for _ in range(rng.randrange(1, 5)):
                if k not in journal.live:
                    journal.create(k, fare=rng.randrange(1000))
                elif rng.random() < 0.25:
                    journal.delete(k)
                else:
                    journal.update(k, fare=rng.randrange(1000))
        wait_drained(fr, settings, sup)
        dead = len(dead_letters(fr, settings))
        before = differing(fr, fpg, settings)

        # 4. Fix the table, requeue while the drainers run, sample PostgreSQL meanwhile.
        fpg.execute("ALTER TABLE d_rides DROP CONSTRAINT rq_fare")
        fpg.execute("DROP TABLE rq_guard")
        sampler = Sampler(settings.pg_dsn or "")
        sampler.start()
        try:
            wait_for(lambda: sampler.samples > 0, 30, "a first sample")
            out = requeue_cli(settings)
            wait_drained(fr, settings, sup)
        finally:
            sampler.stop.set()
            sampler.join(30)
        after = differing(fr, fpg, settings)
        dead_after = len(dead_letters(fr, settings))
        stop_supervisor(sup)

    rekeyed = len({k for k in rewritten if journal.version[k] > 1})
    print(f"\nrequeue scenario: {journal.entries} entries, {first_dead} dead letters before "
          f"the rewrites, {dead} at the requeue, {rekeyed} keys rewritten since, {before} "
          f"keys differing before the requeue, {after} after, {dead_after} dead letters after; "
          f"{sampler.samples} samples; CLI: {out}")
    assert dead >= first_dead >= len(bad_creates) + len(bad_updates) + len(bad_deletes)
    went_back = {k: seen for k, seen in sampler.seen.items()
                 if any(b < a for a, b in itertools.pairwise(seen))}
    print(f"keys that went back in time: {len(went_back)}")
    assert not went_back, f"{len(went_back)} keys went back in time: {list(went_back.items())[:5]}"
    never_had = {k: seen for k, seen in sampler.seen.items()
                 if not set(seen) <= journal.had.get(k, set())}
    assert not never_had, f"states Redis never had: {list(never_had.items())[:5]}"
    assert after == 0 and dead_after == 0
    assert out == f"requeued {dead} dead letters as resyncs of {120} keys", out
    figures = final_check(fr, fpg, settings, produced=journal.entries, models=(DRide,))
    assert figures["dead"] == 0
    assert sorted(pg_objects(fpg, DRide)) == sorted(journal.live)
