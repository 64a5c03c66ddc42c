"""Round trips of every supported type: Redis (create → get_by_id) and PostgreSQL (row
INSERTed with plain psycopg, Redis copy removed, read through the Repository).

Property tests draw whole ``Everything`` objects (every type, Optional ones None or
not); each example gets its own key, so examples never see each other's data.
Edge cases of each type are spelled out below the properties.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import redis
import storeparams
from helpers import (
    create_tables,
    differences,
    everything,
    insert_row,
    obj_key,
    partition,
    queue_key,
)
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from models import Color, Everything, Shade

import kvfast
from kvfast import codec
from kvfast.fieldtypes import EnumType

# every case on one Redis and on the Redis Cluster (tests/storeparams.py)
store, r, settings = storeparams.both_stores()

Conn = psycopg.Connection[Any]

PROPERTY = hsettings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ---------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
INTS = st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 2**53 + 1]) | INT64
TEXT_CHARS = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
TEXTS = st.text(TEXT_CHARS, max_size=50) | st.sampled_from(["", " ", "😀", "'\"\\", "NaN"])
FLOATS = st.floats() | st.sampled_from([-0.0, 0.0, float("nan"), float("inf"), float("-inf")])
ZONES = (
    st.timezones()
    | st.just(dt.UTC)
    | st.integers(-86399, 86399).map(lambda s: dt.timezone(dt.timedelta(seconds=s)))
)
DATETIMES = st.datetimes(
    min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 30), timezones=ZONES
)
DECIMALS = st.decimals(allow_nan=False, allow_infinity=False) | st.builds(
    lambda digits, exponent: Decimal(f"{digits}E{exponent}"),
    st.integers(-(10**40) + 1, 10**40 - 1),
    st.integers(-45, 5),
)
BYTES = st.binary(max_size=100) | st.sampled_from([b"", b"\x00", b"\x00\x00a\x00"])
JSON_FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: "e+" not in repr(f))
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | JSON_FLOATS | st.text(TEXT_CHARS, max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(TEXT_CHARS, max_size=10), inner, max_size=4),
    max_leaves=12,
)
DICTS = st.dictionaries(st.text(TEXT_CHARS, max_size=10), JSON, max_size=5)
LISTS = st.lists(JSON, max_size=5)

BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "int": INTS,
    "str": TEXTS,
    "float": FLOATS,
    "bool": st.booleans(),
    "datetime": DATETIMES,
    "date": st.dates(),
    "decimal": DECIMALS,
    "bytes": BYTES,
    "dict": DICTS,
    "list": LISTS,
    "uuid": st.uuids(),
    "enum": st.sampled_from(Color),
}

EVERYTHING = st.builds(
    Everything,
    id=st.just(0),
    **{f"n_{name}": strategy for name, strategy in BY_TYPE.items()},
    **{f"o_{name}": st.none() | strategy for name, strategy in BY_TYPE.items()},
)

_keys = itertools.count(1)


@pytest.fixture
def repo(pg: Conn, client: kvfast.Client) -> Iterator[kvfast.Repository[Everything]]:
    create_tables(pg, Everything)
    yield kvfast.Repository(Everything, client=client)


def with_new_key(obj: Everything) -> Everything:
    return dataclasses.replace(obj, id=next(_keys))


def decimal_differences(written: Everything, read: Everything, exact: bool) -> list[str]:
    """Decimals keep their digits: exactly in Redis, their scale in PostgreSQL."""
    out = []
    for name in ("n_decimal", "o_decimal"):
        w, g = getattr(written, name), getattr(read, name)
        if w is None:
            continue
        if exact and str(g) != str(w):
            out.append(f"{name}: wrote {w}, read {g}")
        w_exp, g_exp = w.as_tuple().exponent, g.as_tuple().exponent
        if not exact and isinstance(w_exp, int) and w_exp <= 0 and g_exp != w_exp:
            out.append(f"{name}: wrote {w} (exponent {w_exp}), read {g} (exponent {g_exp})")
    return out


def wire_differences(written: Everything, entry: codec.Entry) -> list[str]:
    """Each field of the queue entry decodes back to the value written."""
    info = kvfast.model_info(Everything)
    out = []
    for f in info.fields:
        value = getattr(written, f.name)
        wire = entry.fields[f.name]
        if value is None:
            if wire is not None:
                out.append(f"{f.name}: None queued as {wire!r}")
            continue
        decoded = f.ftype.from_wire(wire)
        if isinstance(f.ftype, EnumType):
            decoded = f.ftype.enum_cls(decoded)
        probe = dataclasses.replace(written, **{f.name: decoded})
        out += [d for d in differences(written, probe) if d.startswith(f.name + ":")]
    return out


# -- properties ---------------------------------------------------------------------------


@PROPERTY
@given(obj=EVERYTHING)
def test_every_type_round_trips_through_redis(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything],
    obj: Everything,
) -> None:
    obj = with_new_key(obj)
    repo.create(obj)
    got = repo.get_by_id(obj.id)
    assert differences(obj, got) == []
    assert got is not None
    assert decimal_differences(obj, got, exact=True) == []
    # The queue entry written with it carries the same values for the drainer.
    raw = r.lindex(queue_key(settings, partition(settings, Everything, obj.id)), -1)
    entry = codec.decode(raw)
    assert (entry.op, entry.key) == ("c", obj.id)
    assert wire_differences(obj, entry) == []


@PROPERTY
@given(obj=EVERYTHING)
def test_every_type_round_trips_through_postgresql(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything],
    obj: Everything,
) -> None:
    obj = with_new_key(obj)
    repo.create(obj)  # validates it, and gives the Redis copy to compare with
    from_redis = repo.get_by_id(obj.id)
    insert_row(pg, obj)
    assert r.delete(obj_key(settings, Everything, obj.id)) == 1
    from_pg = repo.get_by_id(obj.id)
    assert differences(obj, from_pg) == []
    assert from_pg is not None
    assert decimal_differences(obj, from_pg, exact=False) == []
    # Both stores answer with the same value, down to the type.
    assert differences(from_redis, from_pg) == []


@hsettings(PROPERTY, max_examples=50)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
)
def test_get_many_answers_in_the_order_asked(
    pg: Conn, repo: kvfast.Repository[Everything], present: list[bool], order: Any
) -> None:
    """Keys in Redis, only in PostgreSQL, deleted, or absent: answered in order."""
    keys = [next(_keys) for _ in present]
    expected: dict[int, Everything | None] = {}
    for i, (key, here) in enumerate(zip(keys, present, strict=True)):
        obj = everything(key, n_int=i)
        if not here:
            expected[key] = None
            if i % 2:  # deleted, while PostgreSQL still has it
                insert_row(pg, obj)
                repo.delete(key)
        elif i % 3 == 0:
            insert_row(pg, obj)  # PostgreSQL only
            expected[key] = obj
        else:
            repo.create(obj)
            expected[key] = obj
    asked = keys + keys[: len(keys) // 2]
    order.shuffle(asked)
    assert repo.get_many(asked) == [expected[k] for k in asked]


# -- edge cases, one type at a time -------------------------------------------------------

NEW_YORK = ZoneInfo("America/New_York")
EDGES: list[tuple[str, Any]] = [
    ("int", 0),
    ("int", 2**63 - 1),
    ("int", -(2**63)),
    ("int", 2**53 + 1),
    ("str", ""),
    ("str", " "),
    ("str", "ünïcödé ✓ 😀 中文 \u200b a\u0301"),
    ("str", "\n\t\r\x01\x7f"),
    ("str", "'; DROP TABLE t_everything; --"),
    ("str", "x" * 100_000),
    ("float", float("nan")),
    ("float", float("inf")),
    ("float", float("-inf")),
    ("float", -0.0),
    ("float", 0.0),
    ("float", 5e-324),
    ("float", 1.7976931348623157e308),
    ("float", 0.1 + 0.2),
    ("bool", True),
    ("bool", False),
    ("datetime", dt.datetime(2024, 3, 10, 12, 30, 15, 999999, tzinfo=ZoneInfo("Asia/Kolkata"))),
    ("datetime", dt.datetime(2024, 6, 1, 0, 0, tzinfo=ZoneInfo("America/St_Johns"))),
    ("datetime", dt.datetime(2024, 6, 1, 23, 59, tzinfo=ZoneInfo("Pacific/Chatham"))),
    ("datetime", dt.datetime(1900, 1, 1, 12, tzinfo=ZoneInfo("Europe/Amsterdam"))),  # +00:19:32
    ("datetime", dt.datetime(2024, 11, 3, 1, 30, fold=0, tzinfo=NEW_YORK)),
    ("datetime", dt.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=NEW_YORK)),
    ("datetime", dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-12)))),
    ("datetime", dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14)))),
    ("datetime", dt.datetime(1, 1, 1, tzinfo=dt.UTC)),
    ("datetime", dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)),
    ("date", dt.date.min),
    ("date", dt.date.max),
    ("date", dt.date(2024, 2, 29)),
    ("decimal", Decimal("1234567890123456789012345678901234567890")),
    ("decimal", Decimal("0.1234567890123456789012345678901234567890")),
    ("decimal", Decimal("-12345678901234567890.12345678901234567890")),
    ("decimal", Decimal("0")),
    ("decimal", Decimal("1.500")),
    ("decimal", Decimal("1E-30")),
    ("decimal", Decimal("1E+30")),
    ("decimal", Decimal("0E-10")),
    ("bytes", b""),
    ("bytes", b"\x00"),
    ("bytes", b"\x00\x00abc\x00"),
    ("bytes", bytes(range(256))),
    ("dict", {}),
    ("dict", {"": ""}),
    ("dict", {"a": None, "b": [None, {}], "c": {"d": {"e": []}}}),
    ("dict", {"ü ✓": ["😀"], "esc": "\"\\/\n\t"}),
    ("dict", {"max": 2**63 - 1, "min": -(2**63), "f": 1.5, "i": 1, "t": True, "z": 0.0}),
    ("dict", {"small": 5e-324, "precise": 0.30000000000000004, "big": 123456789012345.6}),
    ("dict", {"deep": [[[[[[[[[[{"x": 1}]]]]]]]]]]}),
    ("list", []),
    ("list", [None]),
    ("list", [1, 1.0, True, "1", None]),
    ("list", [{"a": []}, [], ""]),
    ("uuid", uuid.UUID(int=0)),
    ("uuid", uuid.UUID(int=2**128 - 1)),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("enum", Color.RED),
    ("enum", Color.EMPTY),
    ("enum", Color.ODD),
]


def edge_id(case: tuple[str, Any]) -> str:
    kind, value = case
    return f"{kind}:{repr(value)[:40]}"


@pytest.mark.parametrize(("kind", "value"), EDGES, ids=[edge_id(c) for c in EDGES])
def test_edge_values_round_trip_through_both_stores(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything],
    kind: str, value: Any,
) -> None:
    obj = everything(1, **{f"n_{kind}": value, f"o_{kind}": value})
    repo.create(obj)
    from_redis = repo.get_by_id(1)
    assert differences(obj, from_redis) == []
    assert from_redis is not None
    assert decimal_differences(obj, from_redis, exact=True) == []
    insert_row(pg, obj)
    r.delete(obj_key(settings, Everything, 1))
    from_pg = repo.get_by_id(1)
    assert differences(obj, from_pg) == []
    assert from_pg is not None
    assert decimal_differences(obj, from_pg, exact=False) == []
    # An update of a single field through the hydrated copy keeps this one intact.
    repo.update(1, n_int=12345)
    assert differences(dataclasses.replace(obj, n_int=12345), repo.get_by_id(1)) == []


def test_datetimes_come_back_in_utc_as_the_same_instant(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    when = dt.datetime(2024, 7, 1, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    repo.create(everything(1, n_datetime=when))
    got = repo.get_by_id(1)
    assert got is not None
    assert got.n_datetime == when
    assert got.n_datetime.utcoffset() == dt.timedelta(0)
    assert (got.n_datetime.hour, got.n_datetime.day) == (0, 1)
    insert_row(pg, everything(1, n_datetime=when))
    r.delete(obj_key(settings, Everything, 1))
    from_pg = repo.get_by_id(1)
    assert from_pg is not None
    assert from_pg.n_datetime == got.n_datetime
    assert from_pg.n_datetime.utcoffset() == dt.timedelta(0)


def test_optional_fields_set_to_none_come_back_as_none(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    obj = everything(1)
    repo.create(obj)
    got = repo.get_by_id(1)
    assert got is not None
    assert all(getattr(got, f.name) is None for f in dataclasses.fields(got) if f.name[:2] == "o_")
    insert_row(pg, obj)
    r.delete(obj_key(settings, Everything, 1))
    assert repo.get_by_id(1) == obj


def test_a_str_subclass_is_stored_as_its_text(repo: kvfast.Repository[Everything]) -> None:
    """``Shade.DARK`` *is* the str "dark"; it must not be stored as ``"Shade.DARK"``."""
    assert isinstance(Shade.DARK, str) and Shade.DARK == "dark"
    repo.create(everything(1, n_str=Shade.DARK, o_str=Shade.LIGHT))
    got = repo.get_by_id(1)
    assert got is not None
    assert (got.n_str, got.o_str) == ("dark", "light")
    repo.update(1, n_str=Shade.LIGHT)
    got = repo.get_by_id(1)
    assert got is not None and got.n_str == "light"
