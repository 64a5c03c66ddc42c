"""Example models of a ride-hailing back end, used by tools/demo and the benchmarks."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal

from kvfast.model import model

__all__ = ["Booking", "BookingStatus", "Driver", "Ride"]


class BookingStatus(enum.Enum):
    NEW = "new"
    ASSIGNED = "assigned"
    STARTED = "started"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@model(table="bookings", key="id")
class Booking:
    id: int
    driver_id: int | None
    rider_id: int
    status: str
    fare_cents: int
    created_at: dt.datetime
    updated_at: dt.datetime


@model(table="drivers", key="id")
class Driver:
    id: int
    name: str
    phone: str
    rating: float
    active: bool
    vehicle: dict[str, object]
    updated_at: dt.datetime


@model(table="rides", key="id")
class Ride:
    id: str
    booking_id: int
    driver_id: int
    distance_km: Decimal
    route: list[object]
    started_on: dt.date
    finished_at: dt.datetime | None = None
