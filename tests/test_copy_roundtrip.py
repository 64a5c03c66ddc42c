"""COPY BINARY round trip: every supported type, written through the producer, drained
into PostgreSQL in process, reads back equal from both stores.

The expected value is the written one with datetimes moved to UTC (timestamptz keeps
the instant, not the offset).  Comparisons are strict (drainhelpers.same_value):
same type, NaN is NaN, -0.0 is not 0.0, a Decimal keeps its scale, 1 is not 1.0
or True inside JSON.  Creates go through the upsert path, partial updates through
UPDATE … FROM staging (COPY of a column subset), deletes through DELETE … USING.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import itertools
import math
import uuid
import zoneinfo
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import dead_letters, differences, is_idle
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import kvfast
from kvfast.drainer import Drainer
from kvfast.schema import select_rows

UTC = dt.UTC
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class DTone(enum.Enum):
    PLAIN = "plain"
    EMPTY = ""
    ODD = "ünï ✓ 🚕"
    PADDED = "  padded  "


@kvfast.model(table="d_alltypes", key="id")
class DAll:
    id: int
    i: int
    s: str
    f: float
    b: bool
    ts: dt.datetime
    d: dt.date
    dec: Decimal
    by: bytes
    js: dict[str, Any]
    jl: list[Any]
    u: uuid.UUID
    oi: int | None = None
    os: str | None = None
    of: float | None = None
    ob: bool | None = None
    ots: dt.datetime | None = None
    od: dt.date | None = None
    odec: Decimal | None = None
    oby: bytes | None = None
    ojs: dict[str, Any] | None = None
    ojl: list[Any] | None = None
    ou: uuid.UUID | None = None


class DShade(enum.StrEnum):
    """A StrEnum: its members are str instances too."""

    LIGHT = "light"
    DARK = "därk"


@kvfast.model(table="d_enums", key="id")
class DEnums:
    """Enum fields, kept out of DAll so that one bug does not hide the others."""

    id: int
    e: DTone
    sh: DShade
    oe: DTone | None = None
    osh: DShade | None = None


@kvfast.model(table="d_strkeyed", key="name")
class DStrKeyed:
    name: str
    v: int | None = None


@kvfast.model(table="d_uuidkeyed", key="k")
class DUuidKeyed:
    k: uuid.UUID
    when: dt.datetime | None = None


MODELS = (DAll, DEnums, DStrKeyed, DUuidKeyed)
_ids = itertools.count(1)

# -- strategies ----------------------------------------------------------------------------

TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.sampled_from(["", " ", "ünï ✓", "🚕" * 10, "a'b\"c\\d", "\t\n\r", "NULL", "\\N",
                     "\u2028\ufeff", "x" * 5000]),
)
FLOATS = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308,
                     -2.2250738585072014e-308]),
)
JSON_FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: "e+" not in repr(x))
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(INT64_MIN, INT64_MAX), JSON_FLOATS, TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)
OFFSETS = [
    dt.timedelta(0),
    dt.timedelta(hours=5, minutes=45),
    dt.timedelta(hours=-9, minutes=-30),
    dt.timedelta(hours=14),
    dt.timedelta(hours=-12),
    dt.timedelta(seconds=1),
    dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999),
    -dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999),
]
ZONES = [zoneinfo.ZoneInfo(n) for n in ("Asia/Kathmandu", "America/St_Johns",
                                       "Australia/Lord_Howe", "Pacific/Chatham")]
EDGE_DATETIMES = [dt.datetime.min, dt.datetime.max, dt.datetime(1970, 1, 1),
                  dt.datetime(2000, 2, 29, 23, 59, 59, 999999), dt.datetime(1, 1, 1, 0, 0, 1)]


@st.composite
def aware_datetimes(draw: st.DrawFn) -> dt.datetime:
    naive = draw(st.one_of(st.datetimes(), st.sampled_from(EDGE_DATETIMES)))
    tz = draw(st.one_of(st.sampled_from(OFFSETS).map(dt.timezone), st.sampled_from(ZONES)))
    value = naive.replace(tzinfo=tz)
    try:
        value.astimezone(UTC)
    except OverflowError:  # the instant lies outside datetime's range once in UTC
        value = naive.replace(tzinfo=UTC)
    return value


DECIMALS = st.one_of(
    st.builds(
        lambda digits, exp, neg: Decimal(f"{'-' if neg else ''}{digits}E{exp}"),
        st.integers(0, 10**40 - 1), st.integers(-45, 20), st.booleans(),
    ),
    st.sampled_from([
        Decimal("0"), Decimal("-0"), Decimal("0.000"), Decimal("1E-16383"), Decimal("9" * 40),
        Decimal("-" + "9" * 40 + "." + "9" * 40), Decimal("1E+1000"), Decimal("-0.5"),
        Decimal("0." + "0" * 38 + "1"), Decimal("123456789012345678901234567890.1234567890"),
    ]),
)
BYTES = st.one_of(st.binary(max_size=64),
                  st.sampled_from([b"", b"\x00", b"\x00" * 8, bytes(range(256)), b"\\x00"]))

REQUIRED: dict[str, st.SearchStrategy[Any]] = {
    "i": st.integers(INT64_MIN, INT64_MAX),
    "s": TEXT,
    "f": FLOATS,
    "b": st.booleans(),
    "ts": aware_datetimes(),
    "d": st.dates(),
    "dec": DECIMALS,
    "by": BYTES,
    "js": st.dictionaries(TEXT, JSON, max_size=5),
    "jl": st.lists(JSON, max_size=5),
    "u": st.uuids(),
}
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **REQUIRED,
    **{"o" + name: st.one_of(st.none(), strategy) for name, strategy in REQUIRED.items()},
}
VALUES = st.fixed_dictionaries(FIELDS)


@st.composite
def changes(draw: st.DrawFn, keys: list[int]) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(keys))
        names = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4,
                              unique=True))
        out.append((key, {n: draw(FIELDS[n]) for n in names}))
    return out


# -- fixtures and checks ------------------------------------------------------------------


@dataclasses.dataclass
class Env:
    r: redis.Redis
    pg: psycopg.Connection[Any]
    settings: kvfast.Settings
    drainer: Drainer
    writer: kvfast.Client
    reader: kvfast.Client  # Redis only: reads never fall back to PostgreSQL

    def drain(self) -> None:
        while (claim := self.drainer.claim()) is not None:
            report = self.drainer.process(claim)
            assert report.acked and report.dead == 0, dead_letters(self.r, self.settings)
        assert is_idle(self.r, self.settings)

    def check(self, model: type, expected: dict[Any, Any]) -> None:
        """PostgreSQL and Redis both hold exactly ``expected`` (None = deleted)."""
        info = kvfast.model_info(model)
        keys = list(expected)
        rows = select_rows(self.pg, info, keys)
        in_redis = kvfast.Repository(model, client=self.reader).get_many(keys)
        problems = []
        for key, from_redis in zip(keys, in_redis, strict=True):
            want = expected[key]
            row = rows.get(key)
            if want is None:
                if row is not None or from_redis is not None:
                    problems.append(f"{key!r}: deleted but pg={row!r} redis={from_redis!r}")
                continue
            if row is None or from_redis is None:
                problems.append(f"{key!r}: missing, pg={row!r} redis={from_redis!r}")
                continue
            want = normalized(want)
            problems += [f"{key!r} {d}" for d in
                         differences(want, info.from_pg_row(row), ("wrote", "pg"))]
            problems += [f"{key!r} {d}" for d in differences(want, from_redis, ("wrote", "redis"))]
        assert not problems, "\n".join(problems)


def normalized(obj: Any) -> Any:
    """``obj`` as both stores must return it: datetimes in UTC."""
    return dataclasses.replace(obj, **{
        f.name: getattr(obj, f.name).astimezone(UTC)
        for f in dataclasses.fields(obj)
        if isinstance(getattr(obj, f.name), dt.datetime)
    })


@pytest.fixture
def env(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> Iterator[Env]:
    kvfast.create_tables(pg, [kvfast.model_info(m) for m in MODELS])
    drainer = Drainer(settings)
    with (
        kvfast.Client(settings) as writer,
        kvfast.Client(dataclasses.replace(settings, pg_dsn=None)) as reader,
    ):
        try:
            yield Env(r, pg, settings, drainer, writer, reader)
        finally:
            drainer.close()


HYPOTHESIS = hsettings(
    max_examples=60,
    deadline=None,
    database=None,
    # filter_too_much: the strategies reject values a field cannot hold, and some
    # seeds draw many of them early (seen once in 8 kept of 58 drawn)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- tests ------------------------------------------------------------------------------------


@pytest.mark.slow
@HYPOTHESIS
@given(data=st.data())
def test_every_type_round_trips(env: Env, data: st.DataObject) -> None:
    repo = kvfast.Repository(DAll, client=env.writer)
    written = {(k := next(_ids)): DAll(id=k, **v)
               for v in data.draw(st.lists(VALUES, min_size=1, max_size=6), label="creates")}
    repo.create_many(written.values())
    expected: dict[int, Any] = dict(written)
    keys = list(written)
    # Changes before the drain fold into the upsert; after it they are UPDATEs.
    for step in ("folded", "updated"):
        for key, fields in data.draw(changes(keys), label=step):
            repo.update(key, **fields)
            expected[key] = dataclasses.replace(expected[key], **fields)
        env.drain()
        env.check(DAll, expected)
    deleted = data.draw(st.lists(st.sampled_from(keys), max_size=2, unique=True), label="deletes")
    repo.delete_many(deleted)
    expected.update(dict.fromkeys(deleted))
    env.drain()
    env.check(DAll, expected)


KEY_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                   max_size=20)


@HYPOTHESIS
@given(names=st.lists(st.one_of(KEY_TEXT, st.sampled_from(
           ["{x}", "a:b", "o:d_strkeyed:1", " ", "*?[]", "🚕"])), min_size=1, max_size=6,
           unique=True),
       uuids=st.lists(st.uuids(), min_size=1, max_size=4, unique=True),
       when=aware_datetimes())
def test_str_and_uuid_keys_round_trip(
    env: Env, names: list[str], uuids: list[uuid.UUID], when: dt.datetime
) -> None:
    """Keys go through COPY too (staging for UPDATE and DELETE): odd str and UUID keys."""
    by_name = kvfast.Repository(DStrKeyed, client=env.writer)
    by_uuid = kvfast.Repository(DUuidKeyed, client=env.writer)
    by_name.create_many(DStrKeyed(n, None) for n in names)
    by_uuid.create_many(DUuidKeyed(u) for u in uuids)
    env.drain()
    by_name.update(names[0], v=len(names))
    by_uuid.update(uuids[0], when=when)
    by_name.delete_many(names[1:2])
    by_uuid.delete_many(uuids[1:2])
    env.drain()
    want_names: dict[str, Any] = {n: DStrKeyed(n, None) for n in names}
    want_names[names[0]] = DStrKeyed(names[0], len(names))
    want_names.update(dict.fromkeys(names[1:2]))
    want_uuids: dict[uuid.UUID, Any] = {u: DUuidKeyed(u) for u in uuids}
    want_uuids[uuids[0]] = DUuidKeyed(uuids[0], when)
    want_uuids.update(dict.fromkeys(uuids[1:2]))
    env.check(DStrKeyed, want_names)
    env.check(DUuidKeyed, want_uuids)


def _deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": [1, 1.5, "ü", None, True, False, -0.5]}
    for i in range(depth):
        node = {f"level{i}": node, "n": i}
    return node


def test_edge_values_round_trip(env: Env) -> None:
    """The edges, every time: limits of each type, NUL bytes, empty values, odd offsets."""
    kathmandu = dt.timezone(dt.timedelta(hours=5, minutes=45))
    marquesas = dt.timezone(-dt.timedelta(hours=9, minutes=30))
    lowest = DAll(
        id=next(_ids), i=INT64_MIN, s="", f=-0.0, b=False,
        ts=dt.datetime.min.replace(tzinfo=UTC), d=dt.date.min,
        dec=Decimal("-" + "9" * 40 + "." + "9" * 40), by=b"", js={}, jl=[],
        u=uuid.UUID(int=0),
    )
    highest = DAll(
        id=next(_ids), i=INT64_MAX, s="🚕" * 2000 + "\U0010ffff", f=math.inf, b=True,
        ts=dt.datetime.max.replace(tzinfo=UTC), d=dt.date.max, dec=Decimal("1E-16383"),
        by=b"\x00" * 3 + bytes(range(256)), js=_deep(60),
        jl=[None, True, 1, 1.5, -0.0, "s", {"": []}, INT64_MIN, INT64_MAX, 1e-300],
        u=uuid.UUID(int=2**128 - 1),
        oi=0, os="\\N", of=math.nan, ob=False,
        ots=dt.datetime(1, 1, 1, 12, 0, tzinfo=kathmandu), od=dt.date(2000, 2, 29),
        odec=Decimal("0." + "0" * 38 + "1"), oby=b"\x00", ojs={"k": {"": None}}, ojl=[[]],
        ou=uuid.uuid4(),
    )
    offsets = DAll(
        id=next(_ids), i=-1, s="NULL", f=5e-324, b=True,
        ts=dt.datetime(9999, 12, 31, 10, 0, 0, 1, tzinfo=marquesas),
        d=dt.date(1970, 1, 1), dec=Decimal("1E+1000"), by=b"\\x00", js={"a": -0.0},
        jl=["\u2028"], u=uuid.uuid4(),
        ots=dt.datetime(2024, 10, 6, 2, 30, tzinfo=zoneinfo.ZoneInfo("Australia/Lord_Howe")),
        odec=Decimal("-0.000"), of=-math.inf,
    )
    repo = kvfast.Repository(DAll, client=env.writer)
    repo.create_many([lowest, highest, offsets])
    env.drain()
    expected: dict[int, Any] = {o.id: o for o in (lowest, highest, offsets)}
    env.check(DAll, expected)
    # Every Optional field to NULL and back to a value, through UPDATE … FROM staging.
    nulls = {f"o{name}": None for name in REQUIRED}
    repo.update(highest.id, **nulls)
    expected[highest.id] = dataclasses.replace(highest, **nulls)
    repo.update(lowest.id, oby=b"\x00\xff", odec=Decimal("1E-16383"),
                ots=dt.datetime.max.replace(tzinfo=kathmandu), of=-0.0, ojl=[{"x": [None]}])
    expected[lowest.id] = dataclasses.replace(
        lowest, oby=b"\x00\xff", odec=Decimal("1E-16383"),
        ots=dt.datetime.max.replace(tzinfo=kathmandu), of=-0.0, ojl=[{"x": [None]}])
    env.drain()
    env.check(DAll, expected)


def test_enum_fields_round_trip(env: Env) -> None:
    """Enum members (Enum and StrEnum), NULL and back, through upsert and UPDATE."""
    repo = kvfast.Repository(DEnums, client=env.writer)
    objs = [DEnums(next(_ids), tone, shade, None if i % 2 else tone, None if i % 3 else shade)
            for i, (tone, shade) in enumerate(itertools.product(DTone, DShade))]
    repo.create_many(objs)
    env.drain()
    expected: dict[int, Any] = {o.id: o for o in objs}
    env.check(DEnums, expected)
    first, second = objs[0], objs[1]
    repo.update(first.id, e=DTone.ODD, oe=None, osh=DShade.DARK)
    repo.update(second.id, oe=DTone.EMPTY, sh=DShade.LIGHT)
    expected[first.id] = dataclasses.replace(first, e=DTone.ODD, oe=None, osh=DShade.DARK)
    expected[second.id] = dataclasses.replace(second, oe=DTone.EMPTY, sh=DShade.LIGHT)
    env.drain()
    env.check(DEnums, expected)
