"""Declared column types (issue 10): declaration errors, values at each limit and one
past it, the table check per mismatch, and stored values a field cannot hold."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any

import numpy as np
import psycopg
import pytest
import redis
from coltypehelpers import Env, make_env, normalized
from helpers import obj_key, snapshot
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from models import RideStatus, Typed
from psycopg import sql

import kvfast
from kvfast.fieldtypes import Reject
from kvfast.pgtypes import RealType

Conn = psycopg.Connection[Any]
INFO = kvfast.model_info(Typed)
AWARE = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
NAIVE = dt.datetime(2024, 1, 2, 3, 4, 5)


@pytest.fixture
def env(r: redis.Redis, pg: Conn, settings: kvfast.Settings) -> Iterator[Env]:
    with make_env(r, pg, settings) as e:
        yield e


def sample(key: str = "k1", **overrides: Any) -> Typed:
    values: dict[str, Any] = dict(
        id=key, small=1, integer=2, big=3, char="ab", varchar="abc", text="text", money=Decimal(
            "1.50"), num=Decimal("1.5"), real=0.5, double=0.25, tstz=AWARE, ts=NAIVE,
        day=dt.date(2024, 2, 29), clock=dt.time(12, 30), span=dt.timedelta(days=1, seconds=5),
        js={"a": 1e300}, jsb=[1, "x"], flag=True, blob=b"\x00b", uid=uuid.UUID(int=5),
        status=RideStatus.ASSIGNED, kind="cab", tags=["x", "y"], codes=["ab", None],
        pads=["a"], ints=[1], smalls=[2], bigs=[2**63 - 1], ids=[uuid.UUID(int=1)],
        reals=[1.5], moneys=[Decimal("1.5"), None], stamps=[NAIVE], tstzs=[AWARE],
        days=[dt.date(2000, 1, 1)], clocks=[dt.time(0, 0)], spans=[dt.timedelta(0)],
        flags=[False],
    )
    values.update(overrides)
    return Typed(**values)


# -- declaration ----------------------------------------------------------------------------


class IntValues(enum.Enum):
    A = 1


@pytest.mark.parametrize(
    ("annotation", "says"),
    [
        (Annotated[int, kvfast.Char(3)], "needs a str field"),
        (Annotated[str, kvfast.Char], "needs arguments"),
        (Annotated[str, kvfast.VarChar(0)], "length must be"),
        (Annotated[Decimal, kvfast.Numeric(0)], "precision"),
        (Annotated[Decimal, kvfast.Numeric(None, 2)], "scale needs a precision"),
        (Annotated[float, kvfast.Numeric(5, 2)], "needs a Decimal field"),
        (Annotated[str, kvfast.Array], "list[T]"),
        (Annotated[list[dict[str, Any]], kvfast.Array], "jsonb elements"),
        (Annotated[list[list[int]], kvfast.Array], "elements are not supported"),
        (Annotated[str, kvfast.PgEnum("e")], "needs labels"),
        (Annotated[IntValues, kvfast.PgEnum("e")], "not str"),
        (Annotated[int, kvfast.Integer, kvfast.BigInt], "more than one column type"),
        (Annotated[int, "not a column type", kvfast.Column("")], "non-empty"),
        (Annotated[dict[str, Any], kvfast.Integer], "needs a int field"),
    ],
    ids=lambda v: repr(v)[:50],
)
def test_a_spec_that_does_not_fit_its_field_is_a_model_error(annotation: Any, says: str) -> None:
    with pytest.raises(kvfast.ModelError, match=re.escape(says)) as excinfo:
        kvfast.model(table="t_badspec", key="id")(
            dataclasses.make_dataclass("BadSpec", [("id", int), ("bad", annotation)])
        )
    assert "BadSpec" in str(excinfo.value) and "'bad'" in str(excinfo.value)
    from kvfast.model import get_model
    assert get_model("t_badspec") is None


def test_two_fields_on_one_column_are_a_model_error() -> None:
    with pytest.raises(kvfast.ModelError, match="both map to column 'a'"):
        kvfast.model(table="t_twocols", key="id")(dataclasses.make_dataclass(
            "TwoCols", [("id", int), ("a", int), ("b", Annotated[int, kvfast.Column("a")])]))


@pytest.mark.parametrize("key", [Annotated[str, kvfast.Char(36)], Annotated[int, kvfast.Integer],
                                 Annotated[str, kvfast.VarChar(10)],
                                 Annotated[int, kvfast.SmallInt()]], ids=repr)
def test_declared_int_and_str_columns_can_be_keys(key: Any) -> None:
    cls: Any = kvfast.model(table="t_keyed_decl", key="id")(
        dataclasses.make_dataclass("KeyedDecl", [("id", key)]))
    assert kvfast.model_info(cls).key_fields[0].ftype.pg_type in (
        "character(36)", "integer", "character varying(10)", "smallint")


def test_an_enum_type_cannot_be_a_key() -> None:
    with pytest.raises(kvfast.ModelError, match="key field"):
        kvfast.model(table="t_enumkey", key="id")(dataclasses.make_dataclass(
            "EnumKey", [("id", Annotated[RideStatus, kvfast.PgEnum("t_ride_status")])]))


def test_plain_annotations_keep_their_defaults_and_declared_ones_their_type() -> None:
    types = {f.name: (f.column, f.ftype.pg_type) for f in INFO.fields}
    assert types["clock"] == ("clock", "time without time zone")
    assert types["span"] == ("span", "interval")
    assert types["class_"] == ("class", "text")
    assert types["camel"] == ("camelCase", "integer")
    assert types["o_money"] == ("o_money", "numeric(7,2)")
    assert types["codes"] == ("codes", "character varying(3)[]")
    assert types["status"] == ("status", "t_ride_status")


# -- values at each limit and one past it -------------------------------------------------

OK: list[tuple[str, Any]] = [
    ("small", 2**15 - 1), ("small", -(2**15)), ("integer", 2**31 - 1), ("integer", -(2**31)),
    ("big", 2**63 - 1), ("big", -(2**63)),
    ("char", "ééééé"), ("char", "ab   "), ("char", "ééééé  "), ("varchar", "😀😀😀😀😀"),
    ("text", "é" * 10_000),
    ("money", Decimal("99999.99")), ("money", Decimal("-99999.99")), ("money", Decimal("1.230")),
    ("money", Decimal("5")), ("money", Decimal("-0.00")), ("num", Decimal("1E-16383")),
    ("real", 3.4028234663852886e38), ("real", 1e-45), ("real", float("inf")), ("real", 0.1),
    ("ts", dt.datetime.min), ("ts", dt.datetime.max), ("clock", dt.time.max),
    ("span", dt.timedelta.max), ("span", dt.timedelta.min), ("js", {"big": 1e300}),
    ("status", "dünn ✓"), ("kind", ""), ("codes", [None, "abc"]), ("ints", [2**31 - 1]),
    ("smalls", [-(2**15)]), ("moneys", [Decimal("9999.9")]), ("pads", ["abc  "]),
]
BAD: list[tuple[str, Any]] = [
    ("small", 2**15), ("small", -(2**15) - 1), ("integer", 2**31), ("integer", -(2**31) - 1),
    ("big", 2**63), ("big", -(2**63) - 1), ("small", True), ("integer", 1.0),
    ("char", "éééééé"), ("char", "a\x00"), ("varchar", "😀😀😀😀😀😀"), ("varchar", "abcd  "),
    ("text", "a\x00b"), ("text", "\ud800"), ("id", "x" * 37),
    ("money", Decimal("100000")), ("money", Decimal("100000.00")), ("money", Decimal("0.001")),
    ("money", Decimal("1.235")), ("money", Decimal("NaN")), ("money", 1.5),
    ("real", 1e39), ("real", 3.4028235677973366e38), ("real", 1e-46), ("real", "1.0"),
    ("ts", AWARE), ("tstz", NAIVE), ("clock", dt.time(1, tzinfo=dt.UTC)), ("clock", NAIVE),
    ("span", 5), ("day", NAIVE), ("jsb", [1e300]), ("js", {"a": float("nan")}),
    ("status", "gone"), ("status", 1), ("kind", "bus"), ("kind", "Auto"),
    ("tags", [None]), ("tags", ["a\x00"]), ("tags", ("a",)), ("tags", "abc"),
    ("codes", ["abcd"]), ("ints", [2**31]), ("smalls", [2**15]), ("bigs", [2**63]),
    ("pads", ["abcd"]), ("moneys", [Decimal("0.05")]), ("stamps", [AWARE]), ("tstzs", [NAIVE]),
    ("reals", [1e39]), ("ids", ["00000000-0000-0000-0000-000000000001"]), ("flags", [1]),
    ("clocks", [None]), ("camel", 2**31),
]


@pytest.mark.parametrize(("field", "value"), OK, ids=[f"{f}={v!r}"[:40] for f, v in OK])
def test_values_at_the_limit_are_accepted(env: Env, field: str, value: Any) -> None:
    obj = sample(**{field: value})
    env.writer.create(obj)
    env.drain()
    env.check(obj)
    assert normalized(obj) == normalized(normalized(obj))


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}"[:40] for f, v in BAD])
def test_values_past_the_limit_are_refused(
    r: redis.Redis, pg: Conn, client: kvfast.Client, field: str, value: Any
) -> None:
    repo = kvfast.Repository(Typed, client=client)
    repo.create(sample("k0"))
    before = snapshot(r)
    with pytest.raises(kvfast.ValidationError) as excinfo:
        repo.create(sample(**{field: value}))
    assert (excinfo.value.model, excinfo.value.field) == ("Typed", field)
    assert f"Typed.{field} = " in str(excinfo.value)
    if field != "id":
        with pytest.raises(kvfast.ValidationError) as excinfo:
            repo.update("k0", **{field: value})
        assert excinfo.value.field == field
    assert snapshot(r) == before


# -- stored values a field cannot hold ---------------------------------------------------


def test_an_unknown_enum_label_in_redis_is_a_decode_error(
    r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    repo = kvfast.Repository(Typed, client=client)
    repo.create(sample())
    r.hset(obj_key(settings, Typed, "k1"), "status", "gone")
    with pytest.raises(kvfast.DecodeError, match=r"Typed.*status.*gone"):
        repo.get_by_id("k1")


def test_an_unknown_enum_label_in_postgresql_is_a_decode_error(env: Env) -> None:
    env.writer.create(sample())
    env.drain()
    env.pg.execute("ALTER TYPE t_ride_status ADD VALUE 'gone'")
    env.pg.execute("UPDATE t_typed SET status = 'gone'")
    env.r.delete(obj_key(env.settings, Typed, "k1"))
    with pytest.raises(kvfast.DecodeError, match=r"Typed\.status = 'gone'"):
        env.writer.get_by_id("k1")


def test_a_null_in_a_field_that_is_not_optional_is_a_decode_error(env: Env) -> None:
    env.writer.create(sample())
    env.drain()
    env.pg.execute('ALTER TABLE t_typed ALTER COLUMN "text" DROP NOT NULL')
    env.pg.execute('UPDATE t_typed SET "text" = NULL')
    env.r.delete(obj_key(env.settings, Typed, "k1"))
    with pytest.raises(kvfast.DecodeError, match=r"Typed\.text = None.*not Optional"):
        env.writer.get_by_id("k1")


def test_a_padded_key_reads_back_from_both_stores(env: Env) -> None:
    env.writer.create(sample("ab  "))
    env.drain()
    assert env.reader.get_by_id("ab") == env.reader.get_by_id("ab   ")
    row = env.pg.execute("SELECT id, octet_length(id::text) FROM t_typed").fetchone()
    assert row == ("ab" + " " * 34, 2)
    env.r.delete(obj_key(env.settings, Typed, "ab"))
    got = env.writer.get_by_id("ab ")
    assert got is not None and got.id == "ab"
    env.writer.update("ab", small=7)  # UPDATE … FROM staging finds the padded row
    env.drain()
    assert env.pg.execute("SELECT small FROM t_typed").fetchone() == (7,)


# -- the table check ----------------------------------------------------------------------


def check(pg: Conn) -> str:
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        kvfast.check_tables(pg, [INFO])
    return str(excinfo.value)


def test_create_tables_makes_every_declared_type_exactly(pg: Conn) -> None:
    kvfast.create_tables(pg, [INFO])
    rows = pg.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = 't_typed'::regclass AND attnum > 0").fetchall()
    got = {name: (ctype, notnull) for name, ctype, notnull in rows}
    assert got == {f.column: (f.ftype.pg_type, not f.nullable) for f in INFO.fields}
    labels = pg.execute("SELECT enum_range(NULL::t_ride_status)::text[]").fetchone()
    assert labels == ([m.value for m in RideStatus],)
    kvfast.check_tables(pg, [INFO])


@pytest.mark.parametrize(
    ("column", "ddl_type", "shown"),
    [
        ("small", "integer", "column is integer, model Typed needs smallint"),
        ("integer", "bigint", "needs integer"),
        ("big", "integer", "needs bigint"),
        ("char", "character(6)", "column is character(6), model Typed needs character(5)"),
        ("varchar", "character varying(6)", "needs character varying(5)"),
        ("varchar", "text", "needs character varying(5)"),
        ("text", "character varying(10)", "needs text"),
        ("text", "character(10)", "needs text"),
        ("money", "numeric(8,2)", "needs numeric(7,2)"),
        ("money", "numeric", "needs numeric(7,2)"),
        ("num", "numeric(10,2)", "needs numeric"),
        ("real", "double precision", "needs real"),
        ("double", "real", "needs double precision"),
        ("ts", "timestamp with time zone", "needs timestamp without time zone"),
        ("tstz", "timestamp without time zone", "needs timestamp with time zone"),
        ("clock", "time with time zone", "needs time without time zone"),
        ("span", "bigint", "needs interval"),
        ("js", "jsonb", "needs json"),
        ("jsb", "json", "needs jsonb"),
        ("tags", "character varying(10)[]", "needs text[]"),
        ("tags", "jsonb", "needs text[]"),
        ("ints", "bigint[]", "needs integer[]"),
        ("pads", "character(4)[]", "needs character(3)[]"),
        ("status", "text", "needs enum type t_ride_status"),
        ("kind", "t_ride_status", "needs enum type t_ride_kind"),
        ("camelCase", "bigint", "t_typed.camelCase (field camel): column is bigint"),
    ],
)
def test_each_type_mismatch_names_table_column_and_type(
    pg: Conn, column: str, ddl_type: str, shown: str
) -> None:
    kvfast.create_tables(pg, [INFO])
    pg.execute(sql.SQL("ALTER TABLE t_typed ALTER COLUMN {} TYPE {} USING NULL").format(
        sql.Identifier(column), sql.SQL(ddl_type)))
    text = check(pg)
    assert f"t_typed.{column}" in text
    assert shown in text
    assert text.count("\n") == 1, text  # that column only


def test_an_enum_type_without_a_label_of_the_model_is_a_mismatch(pg: Conn) -> None:
    pg.execute("CREATE TYPE t_ride_status AS ENUM ('new', 'assigned', 'cancelled')")
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        kvfast.create_tables(pg, [INFO])
    text = str(excinfo.value)
    assert "t_typed.status" in text and "t_typed.o_status" in text
    assert "lacks the labels ['dünn ✓']" in text


def test_an_enum_type_with_more_labels_than_the_model_is_fine(pg: Conn) -> None:
    pg.execute("CREATE TYPE t_ride_kind AS ENUM ('auto', 'cab', '', 'bus')")
    kvfast.create_tables(pg, [INFO])


@pytest.mark.parametrize(
    ("ddl", "shown"),
    [
        ("ALTER TABLE t_typed ALTER COLUMN small DROP NOT NULL",
         "t_typed.small: column is nullable but model Typed's field is not Optional"),
        ("ALTER TABLE t_typed ALTER COLUMN o_small SET NOT NULL",
         "t_typed.o_small: column is NOT NULL but the model field is Optional"),
        ('ALTER TABLE t_typed RENAME COLUMN "class" TO class_',
         "t_typed.class (field class_): column missing"),
    ],
)
def test_nullability_and_column_names_are_checked(pg: Conn, ddl: str, shown: str) -> None:
    kvfast.create_tables(pg, [INFO])
    pg.execute(ddl)
    assert shown in check(pg)


def test_an_unknown_label_of_a_plain_enum_field_is_a_decode_error(
    r: redis.Redis, pg: Conn, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    """A text column behind a Python Enum: an unknown value from either store."""
    from helpers import create_tables, everything, insert_row
    from models import Everything

    create_tables(pg, Everything)
    repo = kvfast.Repository(Everything, client=client)
    repo.create(everything(1))
    r.hset(obj_key(settings, Everything, 1), "n_enum", "purple")
    with pytest.raises(kvfast.DecodeError, match=r"Everything.*n_enum.*purple"):
        repo.get_by_id(1)
    insert_row(pg, everything(2))
    pg.execute("UPDATE t_everything SET n_enum = 'purple'")
    with pytest.raises(kvfast.DecodeError, match=r"Everything\.n_enum = 'purple'"):
        repo.get_by_id(2)


@hsettings(max_examples=3000, deadline=None, database=None)
@given(x=st.floats() | st.floats(width=32) | st.sampled_from(
    [3.4028235677973366e38, 3.4028234663852886e38, 1.401298464324817e-45, 7e-46, 0.1]))
def test_real_rounds_like_numpy_float32_or_refuses(x: float) -> None:
    """real keeps the shortest decimal of the nearest float32 (numpy's), else refuses."""
    with np.errstate(over="ignore"):
        f = np.float32(x)
    try:
        got = RealType().check(x)
    except Reject:
        assert math.isfinite(x) and (math.isinf(f) or (f == 0 and x != 0))
        return
    want = float(str(f)) if math.isfinite(x) else x
    assert got == want or (math.isnan(got) and math.isnan(want))
    assert math.copysign(1.0, got) == math.copysign(1.0, want)
    assert RealType().check(got) == got or math.isnan(got)  # idempotent: both stores agree
