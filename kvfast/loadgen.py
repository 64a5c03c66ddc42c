"""A mixed producer load over the demo models (tools/demo and the benchmarks).

Each producer process owns an id range per model, creates objects there, and
partially updates and deletes objects it created (so every update hits a live
object).  Batches rotate through the models and through the mix of operations.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kvfast.client import Client
from kvfast.demo import Booking, Driver, Ride
from kvfast.repository import Repository
from kvfast.settings import Settings

__all__ = ["LoadResult", "make_booking", "run_producer"]

STATUSES = ("new", "assigned", "started", "completed", "cancelled")
#: share of creates, updates, deletes in the records written
DEFAULT_MIX = (0.6, 0.3, 0.1)
_ID_SPAN = 1_000_000_000


@dataclass
class LoadResult:
    records: int = 0
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


def make_booking(i: int, now: dt.datetime) -> Booking:
    return Booking(id=i, driver_id=i % 5000, rider_id=i * 7 % 100_000, status="new",
                   fare_cents=500 + i % 5000, created_at=now, updated_at=now)


def _driver(i: int, now: dt.datetime) -> Driver:
    return Driver(id=i, name=f"driver {i}", phone=f"+91{i:010d}", rating=4.0 + (i % 10) / 10,
                  active=True, vehicle={"plate": f"KA{i % 100:02d}{i:06d}", "seats": 4},
                  updated_at=now)


def _ride(i: int, now: dt.datetime) -> Ride:
    return Ride(id=f"r{i}", booking_id=i, driver_id=i % 5000,
                distance_km=Decimal(i % 40_000) / 1000, route=[[12.97, 77.59], [12.93, 77.62]],
                started_on=now.date(), finished_at=None)


class _Live:
    """Keys created and not deleted, with O(1) random pick and removal."""

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def add(self, key: Any) -> None:
        self.keys.append(key)

    def pick(self, rng: random.Random) -> Any:
        return self.keys[rng.randrange(len(self.keys))]

    def pop(self, rng: random.Random) -> Any:
        i = rng.randrange(len(self.keys))
        self.keys[i], self.keys[-1] = self.keys[-1], self.keys[i]
        return self.keys.pop()


def run_producer(
    settings: Settings,
    index: int,
    writes: int,
    *,
    batch: int = 500,
    mix: tuple[float, float, float] = DEFAULT_MIX,
    latency_samples: int = 1000,
    deadline: float | None = None,
    seed: int | None = None,
) -> LoadResult:
    """Write ``writes`` records (or until ``deadline``, a time.monotonic() value)."""
    rng = random.Random(seed if seed is not None else index)
    client = Client(settings)
    repos: list[tuple[Repository[Any], Any]] = [
        (Repository(Booking, client=client), make_booking),
        (Repository(Driver, client=client), _driver),
        (Repository(Ride, client=client), _ride),
    ]
    live = [_Live() for _ in repos]
    next_id = [index * _ID_SPAN + 1] * len(repos)
    result = LoadResult()
    now = dt.datetime.now(dt.UTC)
    try:
        # Single-record round trips first, timed one by one.
        booking_repo = repos[0][0]
        for _ in range(latency_samples):
            i = next_id[0]
            next_id[0] += 1
            obj = make_booking(i, now)
            t0 = time.perf_counter_ns()
            booking_repo.create(obj)
            result.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
            live[0].add(i)
        result.records += latency_samples
        result.creates += latency_samples

        start = time.perf_counter()
        m = 0
        while result.records < writes + latency_samples:
            if deadline is not None and time.monotonic() >= deadline:
                break
            m = (m + 1) % len(repos)
            repo, make = repos[m]
            n = min(batch, writes + latency_samples - result.records)
            r = rng.random()
            if r < mix[0] or len(live[m].keys) < n:
                objs = []
                for _ in range(n):
                    objs.append(make(next_id[m], now))
                    live[m].add(objs[-1].id)
                    next_id[m] += 1
                repo.create_many(objs)
                result.creates += n
            elif r < mix[0] + mix[1]:
                changes = {}
                for _ in range(n):
                    key = live[m].pick(rng)
                    changes[key] = _change(m, rng, now)
                repo.update_many(changes)
                result.updates += len(changes)
                n = len(changes)
            else:
                repo.delete_many([live[m].pop(rng) for _ in range(n)])
                result.deletes += n
            result.records += n
        result.elapsed_s = time.perf_counter() - start
    finally:
        client.close()
    return result


def _change(model: int, rng: random.Random, now: dt.datetime) -> dict[str, Any]:
    if model == 0:
        return {"status": rng.choice(STATUSES), "updated_at": now,
                "fare_cents": rng.randrange(100, 10_000)}
    if model == 1:
        return {"rating": round(rng.uniform(3.0, 5.0), 2), "active": rng.random() < 0.9}
    return {"finished_at": now, "distance_km": Decimal(rng.randrange(100, 40_000)) / 1000}
