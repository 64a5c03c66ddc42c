"""Models of the drain-path tests (tables prefixed ``d_``).

Kept in their own module so a supervisor subprocess can load exactly these with
``--models drainmodels`` (``PYTHONPATH`` is set to ``tests/`` by drainhelpers).
kvfast registers models by table name for the whole process, so no other test
module may use these table names.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import kvfast


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
