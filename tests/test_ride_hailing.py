"""Issue 10's end-to-end test: a ride-hailing back end's own schema, as its developers
would write it (``character(36)`` ids, ``varchar(255)`` statuses, ``numeric(30,2)``
money, ``integer`` counters, ``text[]`` tags, ``json`` config, an enum type,
``timestamp without time zone``, a composite key, two schemas), modelled by
``python -m kvfast.codegen`` alone, written through Repository, drained by a
supervisor that does not create tables; then every key is equal in Redis, in
PostgreSQL and through the fallback read."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from codegenhelpers import generated, load_module, ruff_problems
from drainprocs import run_supervisor

import kvfast
from kvfast.deadletter import count as dead_letters
from kvfast.schema import select_rows

Conn = psycopg.Connection[Any]

DDL = """
CREATE SCHEMA atlas_app;
CREATE SCHEMA atlas_driver_offer_bpp;

CREATE TYPE atlas_app.booking_status AS ENUM
    ('NEW', 'CONFIRMED', 'TRIP_ASSIGNED', 'COMPLETED', 'CANCELLED');

CREATE TABLE atlas_app.booking (
    id character(36) NOT NULL,
    rider_id character(36) NOT NULL,
    status atlas_app.booking_status NOT NULL DEFAULT 'NEW',
    vehicle_variant character varying(255) NOT NULL,
    estimated_fare numeric(30,2) NOT NULL,
    discount numeric(30,2),
    estimated_distance integer,
    special_location_tag text,
    payment_config json,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    CONSTRAINT booking_pkey PRIMARY KEY (id)
);

CREATE TABLE atlas_app.ride (
    id character(36) NOT NULL PRIMARY KEY,
    booking_id character(36) NOT NULL,
    short_id character varying(36) NOT NULL,
    status character varying(255) NOT NULL,
    driver_name character varying(255) NOT NULL,
    fare numeric(30,2),
    total_fare numeric(30,2),
    chargeable_distance integer,
    ride_rating integer,
    tags text[] NOT NULL DEFAULT '{}',
    trip_start_time timestamp without time zone,
    created_at timestamp without time zone NOT NULL DEFAULT now()
);
CREATE INDEX idx_ride_booking_id ON atlas_app.ride USING btree (booking_id);

CREATE TABLE atlas_driver_offer_bpp.driver_information (
    driver_id character(36) NOT NULL PRIMARY KEY,
    active boolean NOT NULL DEFAULT false,
    on_ride boolean NOT NULL DEFAULT false,
    mode character varying(255),
    num_of_locks integer NOT NULL DEFAULT 0,
    blocked_reason text,
    payer_vpa character varying(255),
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);

CREATE TABLE atlas_driver_offer_bpp.rider_driver_correlation (
    rider_detail_id character(36) NOT NULL,
    driver_id character(36) NOT NULL,
    merchant_id character(36) NOT NULL,
    favourite boolean NOT NULL DEFAULT false,
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL,
    PRIMARY KEY (driver_id, rider_detail_id)
);
"""

SINGLE_KEY_TABLES = ("atlas_app.booking", "atlas_app.ride",
                     "atlas_driver_offer_bpp.driver_information")
COMPOSITE_TABLE = "atlas_driver_offer_bpp.rider_driver_correlation"
T0 = dt.datetime(2026, 12, 3, 6, 0)


@pytest.fixture
def ride_schema(pg: Conn) -> Iterator[Conn]:
    def drop() -> None:
        pg.execute("DROP SCHEMA IF EXISTS atlas_app, atlas_driver_offer_bpp CASCADE")

    drop()
    pg.execute(DDL)
    try:
        yield pg
    finally:
        drop()


def ident(i: int) -> str:
    return str(uuid.UUID(int=i))


#: model class → {key: the object the application last wrote, None once deleted}
Expected = dict[type, dict[Any, Any]]


def write_rides(m: Any, client: kvfast.Client) -> Expected:
    """The application's writes: creates (batched and single), partial updates, deletes."""
    bookings = {ident(i): m.Booking(
        id=ident(i), rider_id=ident(1000 + i % 7), vehicle_variant="SEDAN" if i % 2 else "AUTO",
        estimated_fare=Decimal(f"{100 + i}.5"), created_at=T0, updated_at=T0,
        estimated_distance=1200 * i, special_location_tag=None if i % 3 else "SureAirport",
        payment_config={"method": "UPI", "vpa": f"rider{i}@upi"} if i % 2 else None,
    ) for i in range(1, 41)}
    rides = {ident(5000 + i): m.Ride(
        id=ident(5000 + i), booking_id=ident(i), short_id=f"R{i:06d}", status="NEW",
        driver_name=f"Driver {i}", tags=["airport"] if i % 4 == 0 else [],
        created_at=T0 + dt.timedelta(minutes=i),
    ) for i in range(1, 31)}
    drivers = {ident(9000 + i): m.DriverInformation(
        driver_id=ident(9000 + i), created_at=T0, updated_at=T0, mode="ONLINE" if i % 2 else None,
    ) for i in range(1, 21)}
    expected: Expected = {m.Booking: dict(bookings), m.Ride: dict(rides),
                          m.DriverInformation: dict(drivers)}
    booking_repo = kvfast.Repository(m.Booking, client=client)
    ride_repo = kvfast.Repository(m.Ride, client=client)
    driver_repo = kvfast.Repository(m.DriverInformation, client=client)
    booking_repo.create_many(list(bookings.values()))
    for ride in rides.values():
        ride_repo.create(ride)
    driver_repo.create_many(list(drivers.values()))

    def update(repo: Any, cls: type, key: str, **changes: Any) -> None:
        repo.update(key, **changes)
        expected[cls][key] = dataclasses.replace(expected[cls][key], **changes)

    later = T0 + dt.timedelta(hours=1)
    for i in range(1, 11):
        update(booking_repo, m.Booking, ident(i), status=m.BookingStatus.CONFIRMED,
               discount=Decimal("10.00"), updated_at=later)
        update(ride_repo, m.Ride, ident(5000 + i), status="INPROGRESS",
               trip_start_time=later, tags=["airport", "night"], chargeable_distance=4200)
    for i in range(1, 4):
        update(booking_repo, m.Booking, ident(i), status=m.BookingStatus.COMPLETED)
        update(ride_repo, m.Ride, ident(5000 + i), status="COMPLETED", ride_rating=5,
               fare=Decimal("250.75"), total_fare=Decimal("270.75"))
        update(driver_repo, m.DriverInformation, ident(9000 + i), num_of_locks=2**31 - 1,
               on_ride=True, blocked_reason="too many cancellations")
    for i in range(35, 41):
        booking_repo.delete(ident(i))
        expected[m.Booking][ident(i)] = None
    ride_repo.delete_many([ident(5029), ident(5030)])
    expected[m.Ride].update({ident(5029): None, ident(5030): None})
    driver_repo.delete(ident(9020))
    expected[m.DriverInformation][ident(9020)] = None
    return expected


def write_correlations(m: Any, client: kvfast.Client) -> Expected:
    rows = {(ident(9000 + i), ident(1000 + i % 3)): m.RiderDriverCorrelation(
        rider_detail_id=ident(1000 + i % 3), driver_id=ident(9000 + i), merchant_id=ident(1),
        created_at=T0, updated_at=T0) for i in range(1, 11)}
    repo = kvfast.Repository(m.RiderDriverCorrelation, client=client)
    repo.create_many(list(rows.values()))
    expected = dict(rows)
    first, last = next(iter(rows)), list(rows)[-1]
    repo.update(first, favourite=True)
    expected[first] = dataclasses.replace(rows[first], favourite=True)
    repo.delete(last)
    expected[last] = None
    return {m.RiderDriverCorrelation: expected}


def drain(settings: kvfast.Settings, directory: Path, module: str) -> None:
    """A supervisor without --create-tables: its start-up table check passes or exits 2."""
    code, out = run_supervisor(settings, "--drain-until-empty", workers=2, models=(module,),
                               pythonpath=[str(directory)])
    assert code == 0, out[-4000:]
    assert "--create-tables" not in out


def assert_equal_everywhere(pg: Conn, r: redis.Redis, settings: kvfast.Settings,
                            expected: Expected, key_of: Callable[[Any], Any]) -> None:
    """Redis, PostgreSQL's rows, then the fallback read (Redis flushed) all equal
    ``expected``; and nothing was dead-lettered."""
    with kvfast.Client(settings) as client:
        assert dead_letters(client) == {}
        for cls, objects in expected.items():
            keys = list(objects)
            repo = kvfast.Repository(cls, client=client)
            assert repo.get_many(keys) == list(objects.values()), f"{cls.__name__} in Redis"
            info = kvfast.model_info(cls)
            in_pg = {key_of(o): o for o in map(info.from_pg_row,
                                                select_rows(pg, info, keys).values())}
            assert in_pg == {k: o for k, o in objects.items() if o is not None}, cls.__name__
        r.flushdb()  # the Redis copies gone: every read is PostgreSQL's
        for cls, objects in expected.items():
            repo = kvfast.Repository(cls, client=client)
            assert repo.get_many(list(objects)) == list(objects.values()), (
                f"{cls.__name__} read back")


def single_key(obj: Any) -> Any:
    return obj.driver_id if hasattr(obj, "on_ride") else obj.id


def test_ride_hailing_tables_end_to_end(
    ride_schema: Conn, r: redis.Redis, settings: kvfast.Settings, tmp_path: Path
) -> None:
    assert settings.pg_dsn
    m = load_module(tmp_path, "gen_rides", generated(settings.pg_dsn, *SINGLE_KEY_TABLES))
    assert [kvfast.model_info(c).table for c in (m.Booking, m.Ride, m.DriverInformation)] == \
        list(SINGLE_KEY_TABLES)
    with kvfast.Client(settings) as client:
        expected = write_rides(m, client)
    drain(settings, tmp_path, "gen_rides")
    assert_equal_everywhere(ride_schema, r, settings, expected, single_key)
    # the PostgreSQL side as other code reads it: padded ids, money at scale 2, the enum
    assert ride_schema.execute(
        "SELECT id, status::text, discount, octet_length(id) FROM atlas_app.booking "
        "WHERE id = %s", (ident(1),)).fetchone() == (ident(1), "COMPLETED", Decimal("10.00"), 36)


def test_the_composite_key_table_is_generated_with_its_key(
    ride_schema: Conn, settings: kvfast.Settings, tmp_path: Path
) -> None:
    assert settings.pg_dsn
    text = generated(settings.pg_dsn, *SINGLE_KEY_TABLES, COMPOSITE_TABLE)
    assert ('@kvfast.model(\n    table="atlas_driver_offer_bpp.rider_driver_correlation",\n'
            '    key=("driver_id", "rider_detail_id"),\n)\nclass RiderDriverCorrelation:\n'
            in text), text
    (tmp_path / "gen_all.py").write_text(text)
    assert ruff_problems(tmp_path / "gen_all.py") == ""


def test_ride_hailing_end_to_end_with_the_composite_key_table(
    ride_schema: Conn, r: redis.Redis, settings: kvfast.Settings, tmp_path: Path
) -> None:
    assert settings.pg_dsn
    m = load_module(tmp_path, "gen_rides_all",
                    generated(settings.pg_dsn, *SINGLE_KEY_TABLES, COMPOSITE_TABLE))
    with kvfast.Client(settings) as client:
        expected = write_rides(m, client) | write_correlations(m, client)
    drain(settings, tmp_path, "gen_rides_all")

    def key_of(obj: Any) -> Any:
        if isinstance(obj, m.RiderDriverCorrelation):
            return (obj.driver_id, obj.rider_detail_id)
        return single_key(obj)

    assert_equal_everywhere(ride_schema, r, settings, expected, key_of)
