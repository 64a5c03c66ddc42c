"""The demo's load over ``kvfast.demo`` (tools/demo and the benchmarks).

kvfast.demo is imported where it is used: importing it registers its models, and a
supervisor that loads a module using kvfast.loadgen (tests/drainmodels) must not
see them.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import kvfast
from kvfast.loadgen._plan import DEFAULT_MIX, LoadGenerator, Mix, ModelLoad, Op
from kvfast.loadgen._write import Produced, produce, repositories

if TYPE_CHECKING:
    from kvfast.demo import Booking

__all__ = ["demo_loads", "make_booking", "run_producer"]

STATUSES = ("new", "assigned", "started", "completed", "cancelled")
#: the id range each demo producer owns (``index * _ID_SPAN + 1`` onwards)
_ID_SPAN = 1_000_000_000


def make_booking(i: int, now: dt.datetime) -> Booking:
    from kvfast.demo import Booking

    return Booking(id=i, driver_id=i % 5000, rider_id=i * 7 % 100_000, status="new",
                   fare_cents=500 + i % 5000, created_at=now, updated_at=now)


def demo_loads(now: dt.datetime) -> list[ModelLoad]:
    """Bookings, drivers and rides of id ``i`` (the same values as ``make_booking``)."""
    from kvfast.demo import Booking, Driver, Ride

    def driver(i: int, rng: random.Random) -> Driver:
        return Driver(id=i, name=f"driver {i}", phone=f"+91{i:010d}", rating=4.0 + (i % 10) / 10,
                      active=True, vehicle={"plate": f"KA{i % 100:02d}{i:06d}", "seats": 4},
                      updated_at=now)

    def ride(i: int, rng: random.Random) -> Ride:
        return Ride(id=f"r{i}", booking_id=i, driver_id=i % 5000,
                    distance_km=Decimal(i % 40_000) / 1000,
                    route=[[12.97, 77.59], [12.93, 77.62]], started_on=now.date(),
                    finished_at=None)

    def booking_change(rng: random.Random) -> dict[str, Any]:
        return {"status": rng.choice(STATUSES), "updated_at": now,
                "fare_cents": rng.randrange(100, 10_000)}

    def driver_change(rng: random.Random) -> dict[str, Any]:
        return {"rating": round(rng.uniform(3.0, 5.0), 2), "active": rng.random() < 0.9}

    def ride_change(rng: random.Random) -> dict[str, Any]:
        return {"finished_at": now, "distance_km": Decimal(rng.randrange(100, 40_000)) / 1000}

    return [
        ModelLoad(Booking, lambda i: i, lambda i, rng: make_booking(i, now), booking_change),
        ModelLoad(Driver, lambda i: i, driver, driver_change),
        ModelLoad(Ride, lambda i: f"r{i}", ride, ride_change),
    ]


def run_producer(
    settings: kvfast.Settings,
    index: int,
    writes: int,
    *,
    batch: int = 500,
    mix: Mix = DEFAULT_MIX,
    latency_samples: int = 1000,
    deadline: float | None = None,
    seed: int | None = None,
) -> Produced:
    """Producer ``index`` of the demo: ``latency_samples`` single creates, each timed, then
    ``writes`` records in calls of ``batch`` (or until ``deadline``, a time.monotonic())
    on the id range it owns."""
    from kvfast.demo import Booking

    loads = demo_loads(dt.datetime.now(dt.UTC))
    gen = LoadGenerator(loads, mix=mix.with_batch(batch), seed=index if seed is None else seed,
                        first=index * _ID_SPAN + 1)
    with kvfast.Client(settings) as client:
        repos = repositories(client, [ml.model for ml in loads])
        out = Produced()
        booking = repos[Booking]
        for _ in range(latency_samples):
            obj = gen.make(Booking)
            t0 = time.perf_counter_ns()
            booking.create(obj)
            out.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
            out.count(Op("create", Booking, [obj], True), 1)
        return produce(gen, repos, writes, deadline=deadline, produced=out)
