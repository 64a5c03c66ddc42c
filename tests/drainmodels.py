"""Models of the drain-path tests (tables prefixed ``d_``) and their loads.

Kept in their own module so a supervisor subprocess can load exactly these with
``--models drainmodels`` (``PYTHONPATH`` is set to ``tests/`` by drainhelpers).
kvfast registers models by table name for the whole process, so no other test
module may use these table names.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import kvfast
from kvfast.loadgen import ModelLoad


@kvfast.model(table="d_rides", key="id")
class DRide:
    id: int
    rider: str
    fare_cents: int
    counter: int
    status: str | None = None
    distance: Decimal | None = None
    updated_at: dt.datetime | None = None


@kvfast.model(table="d_drivers", key="code")
class DDriver:
    code: str
    name: str
    rating: float
    active: bool
    vehicle: dict[str, Any] | None = None
    tags: list[Any] | None = None


MODELS = (DRide, DDriver)


# -- their values in a load (kvfast.loadgen) ---------------------------------------------

UTC = dt.UTC
_RIDERS = ("ann", "bob", "chloé", "дмитрий", "李", "🚕 rider", "")
_STATUSES = (None, "new", "assigned", "started", "dünn ✓", "")


def ride_values(rng: random.Random) -> dict[str, Any]:
    return {
        "rider": rng.choice(_RIDERS),
        "fare_cents": rng.randrange(0, 1_000_000),
        "counter": rng.randrange(0, 1_000_000),
        "status": rng.choice(_STATUSES),
        "distance": rng.choice((None, Decimal(rng.randrange(10**12)).scaleb(-rng.randrange(7)))),
        "updated_at": rng.choice((
            None,
            dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=rng.randrange(10**15)),
        )),
    }


def driver_values(rng: random.Random) -> dict[str, Any]:
    return {
        "name": rng.choice(_RIDERS) + str(rng.randrange(100)),
        "rating": rng.choice((0.0, -0.0, 4.75, 1 / 3, 1e-300, rng.random() * 5)),
        "active": rng.random() < 0.5,
        "vehicle": rng.choice((None, {}, {"plate": f"KA-{rng.randrange(9999)}",
                                          "seats": rng.randrange(8), "ev": rng.random() < 0.5,
                                          "make": {"name": "Tata", "kWh": 30.2}})),
        "tags": rng.choice((None, [], ["airport", 1, 2.5, None, True, {"x": "ü"}])),
    }


def driver_key(i: int) -> str:
    return f"drv-{i}-ü"


#: rides keyed 1..N and drivers "drv-0-ü"..: 60% of the calls go to rides
RIDE_LOAD = ModelLoad.of(DRide, ride_values, weight=0.6)
DRIVER_LOAD = ModelLoad.of(DDriver, driver_values, key=driver_key, weight=0.4)
LOADS = (RIDE_LOAD, DRIVER_LOAD)
