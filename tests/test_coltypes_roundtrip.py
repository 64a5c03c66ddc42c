"""Declared column types (issue 10) through both stores: producer → Redis → drainer
(COPY BINARY into staging, INSERT … ON CONFLICT / UPDATE … FROM) → PostgreSQL, read
back from Redis, from PostgreSQL, and through the fallback read: all equal.

For each column type a value is either refused at the producer (ValidationError naming
the field, Redis untouched) or round-trips exactly: no third outcome.  "Exactly" is
the written value under the documented normalization of its type, computed here
independently of kvfast: character(n) without trailing spaces, numeric(p,s) at scale
s, real as the shortest decimal of its float32 (numpy's), timestamptz in UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from coltypehelpers import Env, make_env
from helpers import snapshot
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from models import RideStatus, Typed

import kvfast

# -- strategies ----------------------------------------------------------------------------

CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
UTC = dt.UTC
INT16, INT32, INT64 = (st.integers(-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (16, 32, 64))


def texts(n: int | None = None) -> st.SearchStrategy[str]:
    return st.text(CHARS, max_size=n if n is not None else 40)


def chars(n: int) -> st.SearchStrategy[str]:
    return st.builds(lambda s, k: s + " " * k, texts(n), st.integers(0, 3))


MONEY = st.decimals(min_value=Decimal("-99999.99"), max_value=Decimal("99999.99"), places=2) | \
    st.sampled_from([Decimal("1.5"), Decimal("-0"), Decimal("1E+2"), Decimal("0.00"),
                     Decimal("99999.99"), Decimal("-99999.99"), Decimal("7")])
MONEY1 = st.decimals(min_value=Decimal("-9999.9"), max_value=Decimal("9999.9"), places=1)
NUM = st.decimals(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [Decimal("1E-16383"), Decimal("-" + "9" * 40 + "." + "9" * 40), Decimal("1E+1000")])
REALS = st.floats(width=32) | st.floats(-1e30, 1e30).filter(lambda x: x == 0 or abs(x) > 1e-37)
AWARE = st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 30),
                     timezones=st.timezones() | st.just(UTC))
JSON_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSONB_FLOATS = JSON_FLOATS.filter(lambda x: "e+" not in repr(x))


def json(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | INT64 | floats | texts(10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(8), inner, max_size=3),
        max_leaves=8,
    )


def lists(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(elements, max_size=4)


VALID: dict[str, st.SearchStrategy[Any]] = {
    "small": INT16, "integer": INT32, "big": INT64,
    "char": chars(5), "varchar": texts(5), "text": texts(),
    "money": MONEY, "num": NUM, "real": REALS, "double": st.floats(),
    "tstz": AWARE, "ts": st.datetimes(), "day": st.dates(), "clock": st.times(),
    "span": st.timedeltas(),
    "js": st.dictionaries(texts(8), json(JSON_FLOATS), max_size=4),
    "jsb": st.lists(json(JSONB_FLOATS), max_size=4),
    "flag": st.booleans(), "blob": st.binary(max_size=40), "uid": st.uuids(),
    "status": st.sampled_from(RideStatus), "kind": st.sampled_from(["auto", "cab", ""]),
    "tags": lists(texts(10)), "codes": lists(st.none() | texts(3)), "pads": lists(chars(3)),
    "ints": lists(INT32), "smalls": lists(INT16), "bigs": lists(INT64), "ids": lists(st.uuids()),
    "reals": lists(st.floats(width=32)), "moneys": lists(st.none() | MONEY1),
    "stamps": lists(st.datetimes()), "tstzs": lists(AWARE), "days": lists(st.dates()),
    "clocks": lists(st.times()), "spans": lists(st.timedeltas()), "flags": lists(st.booleans()),
    "class_": st.none() | texts(), "camel": st.none() | INT32,
}
for _name in ("small", "char", "money", "real", "ts", "clock", "span", "js", "status", "kind",
              "tags"):
    VALID["o_" + _name] = st.none() | VALID[_name]

#: wider than each column: a draw is either refused or round-trips
WIDE: dict[str, st.SearchStrategy[Any]] = {
    "small": st.integers(-(2**16), 2**16), "integer": st.integers(-(2**32), 2**32),
    "big": st.integers(-(2**64), 2**64), "char": chars(8), "varchar": chars(7),
    "text": st.text(max_size=10),
    "money": st.decimals(places=3, min_value=-(10**6), max_value=10**6) | st.decimals(),
    "real": st.floats() | st.integers(-(2**130), 2**130),
    "ts": st.datetimes(timezones=st.none() | st.just(UTC)),
    "tstz": st.datetimes(timezones=st.none() | st.timezones()),
    "clock": st.times(timezones=st.none() | st.just(UTC)),
    "span": st.timedeltas() | st.integers(),
    "js": st.dictionaries(st.text(max_size=4), json(st.floats()), max_size=3),
    "status": st.sampled_from(RideStatus) | st.sampled_from(["new", "dünn ✓", "gone", ""]),
    "kind": st.text(max_size=4) | st.sampled_from(["auto", "cab"]),
    "codes": lists(st.none() | st.text(max_size=5)),
    "pads": lists(chars(4)),
    "ints": lists(st.integers(-(2**32), 2**32)) | st.tuples(INT32),
    "smalls": lists(st.integers(-(2**16), 2**16)),
    "moneys": lists(st.none() | st.decimals(places=2, min_value=-(10**5), max_value=10**5)),
    "stamps": lists(st.datetimes(timezones=st.none() | st.just(UTC))),
    "tags": lists(st.text(max_size=4) | st.integers()) | st.none(),
}

_ids = itertools.count(1)


def typed(draw: Callable[..., Any], **overrides: Any) -> Typed:
    values = {name: draw(strategy, label=name) for name, strategy in VALID.items()}
    values.update(overrides)
    # A character(36) key: a uuid's text, or a shorter one with trailing spaces (dropped).
    n = next(_ids)
    key = f"k{n}  " if draw(st.booleans(), label="padded key") else str(uuid.UUID(int=n))
    return Typed(id=key, **values)


@pytest.fixture
def env(r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings) -> Iterator[Env]:
    with make_env(r, pg, settings) as e:
        yield e


HYPOTHESIS = hsettings(
    max_examples=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

# -- properties -----------------------------------------------------------------------------


@HYPOTHESIS
@given(data=st.data())
def test_every_declared_type_round_trips_through_both_stores(env: Env, data: st.DataObject) -> None:
    obj = typed(data.draw)
    env.writer.create(obj)
    env.drain()
    env.check(obj)
    # A partial update goes through UPDATE … FROM a COPY of the changed columns.
    names = data.draw(st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=5,
                               unique=True), label="changed")
    changes = {n: data.draw(VALID[n], label=n) for n in names}
    env.writer.update(obj.id, **changes)
    env.drain()
    env.check(dataclasses.replace(obj, **changes))


@hsettings(HYPOTHESIS, max_examples=200)
@given(data=st.data(), name=st.sampled_from(sorted(WIDE)))
def test_a_value_is_refused_or_round_trips_exactly(
    env: Env, data: st.DataObject, name: str
) -> None:
    obj = typed(data.draw)
    value = data.draw(WIDE[name], label=name)
    before = snapshot(env.r)
    try:
        env.writer.create(dataclasses.replace(obj, **{name: value}))
    except kvfast.ValidationError as exc:
        assert (exc.model, exc.field) == ("Typed", name)
        assert snapshot(env.r) == before, "a refused write changed Redis"
        return
    env.drain()
    env.check(dataclasses.replace(obj, **{name: value}))
