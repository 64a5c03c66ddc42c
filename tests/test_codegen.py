"""``python -m kvfast.codegen``: models generated from real tables pass the table check
and round-trip writes; what it cannot model is exit 2 with a message naming it."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from codegenhelpers import generated, load_module, ruff_problems, run_codegen
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import kvfast
from kvfast.codegen import generate
from kvfast.drainer import Drainer
from kvfast.introspect import read_tables

Conn = psycopg.Connection[Any]
SCHEMA = "codegen_app"

EVERYTHING_DDL = """
CREATE TYPE codegen_app.ride_status AS ENUM ('new', 'on trip', 'done', '2x');
CREATE TABLE codegen_app.everything (
    id character(36) PRIMARY KEY,
    small smallint NOT NULL,
    counter integer NOT NULL DEFAULT 0,
    big bigint,
    name text NOT NULL DEFAULT 'it''s',
    free varchar NOT NULL,
    status varchar(255) NOT NULL DEFAULT 'new',
    amount numeric NOT NULL,
    fare numeric(30,2) DEFAULT 0.00,
    ratio real,
    score double precision NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    local_at timestamp without time zone,
    day date,
    at_time time,
    span interval,
    config json,
    doc jsonb NOT NULL DEFAULT '{}'::jsonb,
    active boolean NOT NULL DEFAULT false,
    blob bytea,
    ref uuid,
    state codegen_app.ride_status NOT NULL DEFAULT 'on trip',
    tags text[] NOT NULL DEFAULT '{}',
    codes varchar(3)[],
    refs uuid[],
    nums integer[],
    pairs character(2)[],
    bigs bigint[],
    fares numeric(10,2)[],
    flags boolean[],
    days date[],
    stamps timestamptz[]
);
"""


@pytest.fixture
def schema(pg: Conn) -> Iterator[Conn]:
    """The schema ``codegen_app``, empty, dropped afterwards."""
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))
    pg.execute(drop)
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    kvfast.create_tables(pg, [])  # kvfast's own tables, as the supervisor makes them
    try:
        yield pg
    finally:
        pg.execute(drop)


def everything_value(module: Any, i: int) -> Any:
    return module.Everything(
        id=str(uuid.UUID(int=i)), small=-32768, counter=2**31 - 1, big=2**63 - 1,
        name="naïve ☃", free="any length " * 10, status="on its way", amount=Decimal("1e-20"),
        fare=Decimal("1234567890123456789012345678.9"), ratio=0.1, score=1e300,
        created_at=dt.datetime(2026, 12, 3, 7, 0, tzinfo=dt.UTC),
        local_at=dt.datetime(2026, 12, 3, 9, 30, 1, 5), day=dt.date(2026, 1, 31),
        at_time=dt.time(23, 59, 59), span=dt.timedelta(days=3, microseconds=7),
        config={"surge": [1.5, 2], "zone": "north"}, doc={"a": {"b": None}}, active=True,
        blob=b"\x00\xff", ref=uuid.UUID(int=i + 1), state=module.RideStatus.V_2X,
        tags=["airport", "night"], codes=["IN", "KA"], refs=[uuid.UUID(int=9)],
        nums=[-(2**31), 2**31 - 1], pairs=["ab", "c"], bigs=[2**63 - 1],
        fares=[Decimal("12.30")], flags=[True, False], days=[dt.date(2020, 2, 29)],
        stamps=[dt.datetime(2026, 1, 1, tzinfo=dt.UTC)],
    )


def test_every_column_type_generates_a_model_that_passes_the_check_and_round_trips(
    schema: Conn, settings: kvfast.Settings, tmp_path: Path
) -> None:
    schema.execute(EVERYTHING_DDL)
    assert settings.pg_dsn
    source = generated(settings.pg_dsn, f"{SCHEMA}.everything")
    module = load_module(tmp_path, "gen_everything", source)
    info = kvfast.model_info(module.Everything)
    assert (info.table, info.key) == ("codegen_app.everything", "id")
    kvfast.check_tables(schema, [info])
    assert ruff_problems(tmp_path / "gen_everything.py") == ""
    # Labels in pg_enum's order, names Python takes; defaults from the constant ones.
    assert [(m.name, m.value) for m in module.RideStatus] == [
        ("NEW", "new"), ("ON_TRIP", "on trip"), ("DONE", "done"), ("V_2X", "2x")]
    defaults = module.Everything(
        id="k", small=1, free="", amount=Decimal(0), score=0.0,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert (defaults.counter, defaults.name, defaults.status, defaults.fare, defaults.active,
            defaults.state, defaults.big, defaults.tags, defaults.doc) == (
        0, "it's", "new", Decimal("0.00"), False, module.RideStatus.ON_TRIP, None, [], {})
    other = module.Everything(**{k: v for k, v in vars(defaults).items()
                                 if k not in ("tags", "doc")})
    assert other.tags is not defaults.tags and other.doc is not defaults.doc
    objects = [everything_value(module, 1), defaults]
    with kvfast.Client(settings) as client, Drainer(settings) as drainer:
        repo = kvfast.Repository(module.Everything, client=client)
        repo.create_many(objects)
        drainer.drain_until_empty()
        repo.update("k", status="done", state=module.RideStatus.DONE, tags=["x"])
        drainer.drain_until_empty()
        expected = [objects[0], module.Everything(**{**vars(defaults), "status": "done",
                                                     "state": module.RideStatus.DONE,
                                                     "tags": ["x"]})]
        assert repo.get_many([o.id for o in objects]) == expected
        client.redis.flushdb()  # the fallback read: PostgreSQL's rows
        assert repo.get_many([o.id for o in objects]) == expected


def test_the_text_is_exact_and_deterministic(schema: Conn) -> None:
    schema.execute("""
        CREATE TYPE codegen_app.mode AS ENUM ('online', 'silent');
        CREATE TABLE codegen_app.driver_stats (
            "class" text, total integer NOT NULL DEFAULT 0, driver_id character(36),
            "from" varchar(20) NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
            mode codegen_app.mode, "camelCase" bigint NOT NULL, "1st" text, "a b" text,
            "__x" text, dt text, "Mode" text, PRIMARY KEY (driver_id))""")
    tables = read_tables(schema, [f"{SCHEMA}.driver_stats"])
    text = generate(tables, "python -m kvfast.codegen codegen_app.driver_stats")
    assert generate(read_tables(schema, [f"{SCHEMA}.driver_stats"]),
                    "python -m kvfast.codegen codegen_app.driver_stats") == text
    assert text == '''"""kvfast models of codegen_app.driver_stats.

Generated by ``python -m kvfast.codegen codegen_app.driver_stats``
from the tables as they stand (README.md, "Generating models").
"""

import datetime as dt
import enum
from typing import Annotated

import kvfast


class Mode(enum.StrEnum):
    """The enum type codegen_app.mode."""

    ONLINE = "online"
    SILENT = "silent"


@kvfast.model(table="codegen_app.driver_stats", key="driver_id")
class DriverStats:
    driver_id: Annotated[str, kvfast.Char(36)]
    from_: Annotated[str, kvfast.VarChar(20), kvfast.Column("from")]
    # PostgreSQL default now(): kvfast writes every column, so give a value
    updated_at: dt.datetime
    camelCase: int
    class_: Annotated[str | None, kvfast.Column("class")] = None
    total: Annotated[int, kvfast.Integer] = 0
    mode: Annotated[Mode | None, kvfast.PgEnum("codegen_app.mode")] = None
    c_1st: Annotated[str | None, kvfast.Column("1st")] = None
    a_b: Annotated[str | None, kvfast.Column("a b")] = None
    c___x: Annotated[str | None, kvfast.Column("__x")] = None
    dt_: Annotated[str | None, kvfast.Column("dt")] = None
    Mode_: Annotated[str | None, kvfast.Column("Mode")] = None
'''


def test_mapped_names_pass_the_check_and_write_their_columns(
    schema: Conn, settings: kvfast.Settings, tmp_path: Path
) -> None:
    schema.execute("""
        CREATE TABLE codegen_app.odd ("import" bigint PRIMARY KEY, "camelCase" text,
            "1st" integer NOT NULL, "a b" text, dt text)""")
    assert settings.pg_dsn
    module = load_module(tmp_path, "gen_odd", generated(settings.pg_dsn, f"{SCHEMA}.odd"))
    info = kvfast.model_info(module.Odd)
    assert [(f.name, f.column) for f in info.fields] == [
        ("import_", "import"), ("c_1st", "1st"), ("camelCase", "camelCase"), ("a_b", "a b"),
        ("dt_", "dt")]
    kvfast.check_tables(schema, [info])
    with kvfast.Client(settings) as client, Drainer(settings) as drainer:
        kvfast.Repository(module.Odd, client=client).create(
            module.Odd(import_=1, c_1st=2, camelCase="c", a_b="d", dt_="e"))
        drainer.drain_until_empty()
    assert schema.execute('SELECT "import", "camelCase", "1st", "a b", dt FROM codegen_app.odd'
                          ).fetchall() == [(1, "c", 2, "d", "e")]


def test_a_table_on_the_search_path_keeps_its_unqualified_name(
    schema: Conn, settings: kvfast.Settings, tmp_path: Path
) -> None:
    schema.execute("CREATE TABLE codegen_app.sp (id uuid PRIMARY KEY, n integer)")
    assert settings.pg_dsn
    dsn = make_conninfo(settings.pg_dsn, options=f"-c search_path={SCHEMA}")
    source = generated(dsn, "sp")
    assert '@kvfast.model(table="sp", key="id")' in source
    module = load_module(tmp_path, "gen_sp", source)
    with psycopg.connect(dsn, autocommit=True) as conn:
        kvfast.check_tables(conn, [kvfast.model_info(module.Sp)])


def test_generated_columns_are_left_out_and_identity_by_default_is_written(
    schema: Conn, settings: kvfast.Settings, tmp_path: Path
) -> None:
    schema.execute("""
        CREATE TABLE codegen_app.computed (id bigint PRIMARY KEY, price integer NOT NULL,
            doubled integer GENERATED ALWAYS AS (price * 2) STORED,
            seq bigint GENERATED BY DEFAULT AS IDENTITY NOT NULL)""")
    assert settings.pg_dsn
    module = load_module(tmp_path, "gen_computed",
                         generated(settings.pg_dsn, f"{SCHEMA}.computed"))
    info = kvfast.model_info(module.Computed)
    assert info.field_names == ("id", "price", "seq")
    kvfast.check_tables(schema, [info])
    with kvfast.Client(settings) as client, Drainer(settings) as drainer:
        kvfast.Repository(module.Computed, client=client).create(module.Computed(1, 21, 7))
        drainer.drain_until_empty()
    assert schema.execute("SELECT doubled, seq FROM codegen_app.computed").fetchall() == [(42, 7)]


def test_what_kvfast_cannot_model_is_exit_2_naming_table_column_and_type(
    schema: Conn, settings: kvfast.Settings
) -> None:
    schema.execute("""
        CREATE DOMAIN codegen_app.email AS varchar(80);
        CREATE TYPE codegen_app.st AS ENUM ('a');
        CREATE TABLE codegen_app.nokey (a integer);
        CREATE TABLE codegen_app.bad (id integer PRIMARY KEY, spot point,
            mail codegen_app.email, at3 timestamptz(3), sts codegen_app.st[], ok text);
        CREATE TABLE codegen_app.numkey (id numeric PRIMARY KEY);
        CREATE TABLE codegen_app.ident (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
        CREATE VIEW codegen_app.v AS SELECT 1 AS id;
        CREATE TABLE codegen_app.fine (id bigint PRIMARY KEY)""")
    assert settings.pg_dsn
    done = run_codegen(settings.pg_dsn, *(f"{SCHEMA}.{t}" for t in
                                          ("fine", "nokey", "bad", "numkey", "ident", "v")))
    assert (done.returncode, done.stdout) == (2, "")
    assert "Traceback" not in done.stderr
    for line in ("codegen_app.nokey: has no primary key",
                 "codegen_app.bad.spot: type point is not a type kvfast models",
                 "codegen_app.bad.mail: type codegen_app.email is a domain over "
                 "character varying(80)",
                 "codegen_app.bad.at3: type timestamp(3) with time zone is not a type",
                 "codegen_app.bad.sts: type codegen_app.st[]: kvfast has no arrays of",
                 "codegen_app.numkey.id: primary key column of type numeric",
                 "codegen_app.ident.id: GENERATED ALWAYS AS IDENTITY",
                 "codegen_app.v: is a view"):
        assert line in done.stderr, done.stderr
    assert "codegen_app.fine" not in done.stderr and ".ok" not in done.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    ((f"{SCHEMA}.missing", "nowhere"), 2,
     "no such table: 'codegen_app.missing', 'nowhere' (looked up through the search_path)"),
    (("a.b.c",), 2, "'a.b.c': name a table as SCHEMA.TABLE or TABLE"),
    ((f"{SCHEMA}.t", f"{SCHEMA}.t"), 2, "codegen_app.t: the same table as 'codegen_app.t', "
     "named twice"),
])
def test_operator_mistakes_are_a_message_and_exit_2(
    schema: Conn, settings: kvfast.Settings, args: tuple[str, ...], code: int, message: str
) -> None:
    schema.execute("CREATE TABLE codegen_app.t (id bigint PRIMARY KEY)")
    done = run_codegen(settings.pg_dsn, *args)
    assert (done.returncode, done.stdout) == (code, "")
    assert done.stderr.startswith("kvfast.codegen: ") and message in done.stderr, done.stderr


def test_no_dsn_is_exit_2_and_an_unreachable_server_exit_4(settings: kvfast.Settings) -> None:
    done = run_codegen(None, "t")
    assert (done.returncode, done.stderr) == (
        2, "kvfast.codegen: no PostgreSQL DSN: pass --dsn or set KVFAST_PG_DSN\n")
    assert settings.pg_dsn
    params = conninfo_to_dict(settings.pg_dsn)
    closed = make_conninfo(settings.pg_dsn, port="1", password="s3cret", connect_timeout="2")
    done = run_codegen(None, "--dsn", closed, "t")
    assert done.returncode == 4, done.stderr
    assert "unavailable" in done.stderr and "s3cret" not in done.stderr
    assert "Traceback" not in done.stderr and params  # the DSN parsed: only the port is wrong


def test_output_goes_to_a_file_only_when_every_table_was_modelled(
    schema: Conn, settings: kvfast.Settings, tmp_path: Path
) -> None:
    schema.execute("CREATE TABLE codegen_app.t (id bigint PRIMARY KEY, n integer)")
    schema.execute("CREATE TABLE codegen_app.nokey (id bigint)")
    out = tmp_path / "models.py"
    bad = run_codegen(settings.pg_dsn, "-o", str(out), f"{SCHEMA}.t", f"{SCHEMA}.nokey")
    assert bad.returncode == 2 and not out.exists()
    good = run_codegen(settings.pg_dsn, "-o", str(out), f"{SCHEMA}.t")
    assert (good.returncode, good.stdout) == (0, "")
    assert "class T:" in out.read_text()


def test_a_composite_key_is_a_tuple_in_key_order(schema: Conn) -> None:
    schema.execute("""
        CREATE TABLE codegen_app.pair (rider_detail_id character(36), driver_id character(36),
            favourite boolean NOT NULL DEFAULT false, PRIMARY KEY (driver_id, rider_detail_id))""")
    text = generate(read_tables(schema, [f"{SCHEMA}.pair"]))
    assert '@kvfast.model(table="codegen_app.pair", key=("driver_id", "rider_detail_id"))' in text
    assert "    rider_detail_id: Annotated[str, kvfast.Char(36)]\n" in text


def test_a_composite_key_model_imports_and_passes_the_check(
    schema: Conn, settings: kvfast.Settings, tmp_path: Path
) -> None:
    schema.execute("""
        CREATE TABLE codegen_app.pair (rider_detail_id character(36), driver_id character(36),
            favourite boolean NOT NULL DEFAULT false, PRIMARY KEY (driver_id, rider_detail_id))""")
    text = generate(read_tables(schema, [f"{SCHEMA}.pair"]))
    module = load_module(tmp_path, "gen_pair", text)
    kvfast.check_tables(schema, [kvfast.model_info(module.Pair)])


def test_long_names_are_wrapped_within_the_line_length(schema: Conn, tmp_path: Path) -> None:
    long = "a_rather_long_table_name_that_goes_on_and_on_for_sixty_chars"
    schema.execute(sql.SQL(
        "CREATE TYPE codegen_app.{e} AS ENUM ('a label long enough to wrap once it is "
        "written out'); CREATE TABLE codegen_app.{t} ({c} character varying(255), "
        "{k} bigint, st codegen_app.{e} DEFAULT 'a label long enough to wrap once it is "
        "written out', PRIMARY KEY ({k}, {c}))").format(
        e=sql.Identifier(long[:40]), t=sql.Identifier(long), c=sql.Identifier(long + "_x"),
        k=sql.Identifier("Key " + long[:40])))
    text = generate(read_tables(schema, [f"{SCHEMA}.{long}"]))
    (tmp_path / "gen_long.py").write_text(text)
    assert ruff_problems(tmp_path / "gen_long.py") == ""
    assert max(len(line) for line in text.splitlines()) <= 100
    compile(text, "gen_long.py", "exec")
    assert sys.version_info >= (3, 11)  # enum.StrEnum in the output
