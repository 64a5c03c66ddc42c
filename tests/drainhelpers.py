"""Helpers shared by the drain-path tests (plain functions, no fixtures).

* ``start_supervisor`` / ``run_supervisor``: ``python -m kvfast.supervisor`` as a
  subprocess in its own session, output captured in a file, always reaped.
* ``converged``: every PostgreSQL row equals its Redis object and the other way
  round, no tombstone left, nothing queued or in flight.
* ``produce_mixed``: ``kvfast.loadgen``'s mixed create / partial update / delete
  load on a shared key space, run in N ``spawn`` processes (``producers``).
* ``hold_batch``: a child process that claims one batch (and optionally commits
  it) and then stops itself with SIGSTOP, for the crash and stale-drainer tests.

The key names (``drainkeys``) and the processes (``drainprocs``: the supervisor
subprocess, the held batch) live in modules of their own and are imported from
here too, so every drain test imports its helpers from one place.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import redis
from drainkeys import (
    counters_key,
    dead_key,
    inflight_key,
    inflight_meta_key,
    partition_of,
    queue_key,
    tag,
)
from drainmodels import LOADS, MODELS, DRide
from drainprocs import (
    ROOT,
    SPAWN,
    HeldBatch,
    SupervisorProcess,
    ack_args,
    children_of,
    drain_in_process,
    drain_until_empty,
    hold_batch,
    run_supervisor,
    start_supervisor,
    subprocess_env,
    supervisor_args,
    wait_lease_expired,
    wait_stopped,
)
from helpers import same_json
from psycopg import sql

import kvfast
from kvfast import loadgen
from kvfast.model import TOMBSTONE_FIELD

__all__ = [
    "MIX",
    "ROOT",
    "SPAWN",
    "UTC",
    "HeldBatch",
    "SupervisorProcess",
    "ack_args",
    "assert_idle",
    "busy_partitions",
    "children_of",
    "converged",
    "counter_total",
    "counters_key",
    "create_tables",
    "dead_key",
    "dead_letters",
    "differences",
    "drain_in_process",
    "drain_until_empty",
    "drained_total",
    "fence_epoch",
    "hold_batch",
    "inflight_key",
    "inflight_meta_key",
    "is_idle",
    "keys_in_partition",
    "partition_of",
    "pg_objects",
    "produce_in_processes",
    "produce_mixed",
    "producers",
    "queue_key",
    "redis_objects",
    "ride",
    "run_supervisor",
    "same_value",
    "start_supervisor",
    "subprocess_env",
    "supervisor_args",
    "tag",
    "wait_idle",
    "wait_lease_expired",
    "wait_stopped",
]

UTC = dt.UTC

# -- state of the drain in Redis -------------------------------------------------------


def busy_partitions(r: redis.Redis, settings: kvfast.Settings) -> dict[str, list[int]]:
    """Partitions with queued entries, an in-flight list or metadata, or held tables."""
    out: dict[str, list[int]] = {"queued": [], "inflight": [], "inflight_meta": [], "held": []}
    for p in range(settings.partitions):
        if r.exists(queue_key(settings, p)[:-2] + ":h"):
            out["held"].append(p)
        if r.llen(queue_key(settings, p)):
            out["queued"].append(p)
        if r.exists(inflight_key(settings, p)):
            out["inflight"].append(p)
        if r.exists(inflight_meta_key(settings, p)):
            out["inflight_meta"].append(p)
    return out


def is_idle(r: redis.Redis, settings: kvfast.Settings) -> bool:
    return not any(busy_partitions(r, settings).values())


def assert_idle(r: redis.Redis, settings: kvfast.Settings) -> None:
    busy = busy_partitions(r, settings)
    assert not any(busy.values()), f"queues or in-flight keys not empty: {busy}"


def wait_idle(r: redis.Redis, settings: kvfast.Settings, timeout: float = 90.0) -> None:
    """Wait until nothing is queued and nothing is in flight (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while not is_idle(r, settings):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still busy after {timeout}s: {busy_partitions(r, settings)}"
            )
        time.sleep(0.1)


def counter_total(r: redis.Redis, settings: kvfast.Settings, name: str) -> int:
    """The sum of every partition's counter ``name`` (drained, dead ...)."""
    return sum(int(r.hget(counters_key(settings, p), name) or 0)
               for p in range(settings.partitions))


def drained_total(r: redis.Redis, settings: kvfast.Settings) -> int:
    return counter_total(r, settings, "drained")


def dead_letters(r: redis.Redis, settings: kvfast.Settings) -> list[tuple[int, dict[str, Any]]]:
    """Every dead letter as (partition, parsed JSON document)."""
    return [
        (p, orjson.loads(raw))
        for p in range(settings.partitions)
        for raw in r.lrange(dead_key(settings, p), 0, -1)
    ]


def fence_epoch(pg: psycopg.Connection[Any], settings: kvfast.Settings, p: int) -> int | None:
    row = pg.execute(
        "SELECT epoch FROM kvfast_fence WHERE namespace = %s AND partition = %s",
        (settings.namespace, p),
    ).fetchone()
    return None if row is None else int(row[0])


# -- comparing values ----------------------------------------------------------------


def same_value(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same stored value: same type, same value, strictly."""
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dt.datetime):
        zero = dt.timedelta(0)
        return a == b and a.utcoffset() == zero and b.utcoffset() == zero
    if isinstance(a, Decimal):
        ea, eb = a.as_tuple().exponent, b.as_tuple().exponent
        assert isinstance(ea, int) and isinstance(eb, int)
        # numeric keeps the scale (digits after the point), not a positive exponent.
        return a == b and (ea == eb or (ea >= 0 and eb >= 0))
    if isinstance(a, (dict, list)):
        return same_json(a, b)
    return bool(a == b)


def differences(a: Any, b: Any, labels: tuple[str, str] = ("pg", "redis")) -> list[str]:
    return [
        f"{f.name}: {labels[0]} {getattr(a, f.name)!r} != {labels[1]} {getattr(b, f.name)!r}"
        for f in dataclasses.fields(a)
        if not same_value(getattr(a, f.name), getattr(b, f.name))
    ]


# -- PostgreSQL and Redis contents ---------------------------------------------------------


def create_tables(pg: psycopg.Connection[Any], models: Iterable[type] = MODELS) -> None:
    kvfast.create_tables(pg, [kvfast.model_info(m) for m in models])


def pg_objects(pg: psycopg.Connection[Any], model: type) -> dict[Any, Any]:
    """Every row of the model's table as a model instance, by key."""
    info = kvfast.model_info(model)
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(f.name) for f in info.fields),
        sql.Identifier(info.table),
    )
    objs = [info.from_pg_row(row) for row in pg.execute(query).fetchall()]
    return {getattr(o, info.key): o for o in objs}


def redis_objects(
    r: redis.Redis, settings: kvfast.Settings, model: type
) -> tuple[dict[Any, Any], list[str]]:
    """(live objects by key read through a Redis-only Repository, tombstoned keys)."""
    info = kvfast.model_info(model)
    marker = f":o:{info.table}:"
    live: list[Any] = []
    tombstones: list[str] = []
    pattern = f"{{{settings.namespace}:*}}{marker}*"
    for name in r.scan_iter(match=pattern, count=1000):
        text = name.decode()
        key_str = text.split(marker, 1)[1]
        if r.hexists(name, TOMBSTONE_FIELD):
            tombstones.append(text)
        else:
            live.append(info.key_fields[0].ftype.from_hash(key_str.encode()))
    redis_only = dataclasses.replace(settings, pg_dsn=None)
    with kvfast.Repository(model, redis_only) as repo:
        objs = repo.get_many(live)
    return {k: o for k, o in zip(live, objs, strict=True) if o is not None}, tombstones


def converged(
    r: redis.Redis,
    pg: psycopg.Connection[Any],
    settings: kvfast.Settings,
    models: Sequence[type] = MODELS,
    *,
    diverged: dict[type, set[Any]] | None = None,
    allow_dead: bool = False,
) -> dict[type, int]:
    """Assert PostgreSQL == Redis for ``models`` and an idle drain; return rows per model.

    ``diverged`` names keys allowed to differ (their writes were dead-lettered).
    """
    assert_idle(r, settings)
    if not allow_dead:
        dead = dead_letters(r, settings)
        assert not dead, f"{len(dead)} dead letters, first: {dead[:3]}"
    counts: dict[type, int] = {}
    for model in models:
        skip = (diverged or {}).get(model, set())
        in_pg = pg_objects(pg, model)
        in_redis, tombstones = redis_objects(r, settings, model)
        assert not tombstones, f"tombstones left after the drain: {tombstones[:10]}"
        only_pg = sorted(set(in_pg) - set(in_redis) - skip, key=repr)
        only_redis = sorted(set(in_redis) - set(in_pg) - skip, key=repr)
        assert not only_pg, f"{model.__name__}: rows in PostgreSQL only: {only_pg[:20]}"
        assert not only_redis, f"{model.__name__}: objects in Redis only: {only_redis[:20]}"
        problems = []
        for key, obj in in_pg.items():
            if key in skip or key not in in_redis:
                continue
            diffs = differences(obj, in_redis[key])
            if diffs:
                problems.append(f"{model.__name__} {key!r}: {diffs}")
        assert not problems, f"{len(problems)} rows differ:\n" + "\n".join(problems[:20])
        counts[model] = len(in_pg)
    return counts


# -- a mixed load (kvfast.loadgen) ------------------------------------------------------------

#: the drain tests' mix: single and batched creates, partial updates (often of one key
#: several times in a call), deletes, on a key space the producers share
MIX = loadgen.Mix(create=0.38, update=0.42, delete=0.20, sizes=(1, 1, 1, 1, 3, 5, 10),
                  single=0.8, partial=True, repeat=0.5)


def produce_mixed(
    settings: kvfast.Settings,
    seed: int,
    n_ops: int,
    keys_per_model: int = 150,
    stop_file: str | None = None,
) -> int:
    """Run ``n_ops`` random writes (or until ``stop_file`` exists); return entries queued."""
    gen = loadgen.LoadGenerator(LOADS, mix=MIX, seed=seed, keys=keys_per_model)
    with kvfast.Client(settings) as client:
        produced = loadgen.produce(gen, loadgen.repositories(client, MODELS), None, ops=n_ops,
                                   stop=loadgen.stop_file_exists(stop_file))
    return produced.entries


@contextlib.contextmanager
def producers(
    settings: kvfast.Settings,
    n: int,
    n_ops: int,
    *,
    keys_per_model: int = 150,
    stop_file: str | None = None,
    seed: int = 0,
) -> Iterator[list[concurrent.futures.Future[int]]]:
    """``n`` producer processes running ``produce_mixed``; the futures give entry counts."""
    args = [(settings, seed * 1000 + i, n_ops, keys_per_model, stop_file) for i in range(n)]
    with loadgen.Spawned(produce_mixed, args, stop_file=stop_file) as spawned:
        try:
            yield spawned.futures
        finally:
            spawned.stop()


def produce_in_processes(settings: kvfast.Settings, n: int, n_ops: int, seed: int = 0) -> int:
    """Run ``n`` producers to completion; return the total entries queued."""
    with producers(settings, n, n_ops, seed=seed) as futures:
        return sum(f.result(timeout=300) for f in futures)


def ride(key: int, **overrides: Any) -> DRide:
    values: dict[str, Any] = {"id": key, "rider": "ann", "fare_cents": 1000, "counter": 0,
                              "status": "new", "distance": Decimal("12.500"),
                              "updated_at": dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)}
    values.update(overrides)
    return DRide(**values)


def keys_in_partition(settings: kvfast.Settings, model: type, p: int, n: int) -> list[int]:
    """The first ``n`` int keys (from 1) that hash to partition ``p``."""
    out: list[int] = []
    k = 0
    while len(out) < n:
        k += 1
        if partition_of(settings, model, k) == p:
            out.append(k)
    return out
