"""What the benchmarks write: a sample booking's bytes, and producer processes.

The objects and the mixed load come from ``kvfast.loadgen``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

from _config import flush_redis, redis_client, settings

import kvfast
from kvfast.demo import Booking
from kvfast.loadgen import Spawned, make_booking, run_producer


def sample_booking_writes() -> tuple[list[bytes], bytes]:
    """The HSET field/value arguments and the queue entry kvfast writes for one booking.

    Read back from Redis after a real ``create`` into the emptied benchmark
    database, so the references send the same bytes whatever the key layout.
    """
    flush_redis()
    with kvfast.Repository(Booking, settings()) as repo:
        repo.create(make_booking(424242, dt.datetime.now(dt.UTC)))
    fields: dict[bytes, bytes] = {}
    entry = b""
    with contextlib.closing(redis_client()) as r:
        for key in r.scan_iter(count=1000):
            kind = r.type(key)
            if kind == b"hash" and b"424242" in key:
                fields = r.hgetall(key)
            elif kind == b"list":
                entry = r.lindex(key, -1) or b""
        r.flushdb()
    if not fields or not entry:
        raise RuntimeError("could not find the hash and queue entry of a created booking")
    args: list[bytes] = []
    for k, v in fields.items():
        args += [k, v]
    return args, entry


def produce_creates(first_id: int, count: int, batch: int) -> int:
    """Create ``count`` bookings (ids from ``first_id``) with create_many (a worker process)."""
    now = dt.datetime.now(dt.UTC)
    with kvfast.Repository(Booking, settings()) as repo:
        done = 0
        while done < count:
            n = min(batch, count - done)
            repo.create_many([make_booking(first_id + done + i, now) for i in range(n)])
            done += n
    return done


def produce_mix(index: int, writes: int) -> dict[str, int]:
    """loadgen's mix (60% creates, 30% updates, 10% deletes over 3 models; a worker process)."""
    res = run_producer(settings(), index, writes, batch=1000, latency_samples=0, seed=index)
    return {"records": res.records, "creates": res.creates, "updates": res.updates,
            "deletes": res.deletes}


def paced_producer(rate: float, seconds: float, first_id: int) -> dict[str, float]:
    """create_many at ``rate`` records/s for ``seconds`` (a worker process); times are wall.

    Stops at ``seconds`` even when it could not keep the rate (a saturated machine).
    """
    now = dt.datetime.now(dt.UTC)
    total = max(1, int(rate * seconds))
    chunk = max(10, int(rate / 200))  # ~200 calls per second
    objs = [make_booking(first_id + i, now) for i in range(total)]
    with kvfast.Repository(Booking, settings()) as repo:
        repo.create_many(objs[:1])  # connect and check partitions before the clock starts
        sent = 1
        behind = 0.0
        wall0 = time.time()
        t0 = time.perf_counter()
        while sent < total and time.perf_counter() - t0 < seconds:
            due = t0 + sent / rate
            now_p = time.perf_counter()
            if due > now_p:
                time.sleep(due - now_p)
            else:
                behind = max(behind, now_p - due)
            part = objs[sent:sent + chunk]
            repo.create_many(part)
            sent += len(part)
        elapsed = time.perf_counter() - t0
    return {"records": float(sent), "elapsed_s": elapsed, "t_start": wall0,
            "t_end": wall0 + elapsed, "behind_max_s": behind, "chunk": float(chunk)}


def run_spawned(fn: Callable[..., Any], arg_lists: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``fn(*args)`` for each args in its own spawned process, in parallel."""
    with Spawned(fn, arg_lists) as spawned:
        return spawned.results()
