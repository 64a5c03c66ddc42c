"""DDL from models: create_tables, and check_tables' mismatch detection."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from helpers import create_tables, insert_row, obj_key, pg_count, queue_entries
from models import ODD_TABLE, Account, Everything, Odd, Token
from psycopg import sql

import kvfast
from kvfast.schema import FENCE_TABLE

Conn = psycopg.Connection[Any]

INFO_SCHEMA_TYPES = {
    "id": "bigint",
    "n_int": "bigint",
    "n_str": "text",
    "n_float": "double precision",
    "n_bool": "boolean",
    "n_datetime": "timestamp with time zone",
    "n_date": "date",
    "n_decimal": "numeric",
    "n_bytes": "bytea",
    "n_dict": "jsonb",
    "n_list": "jsonb",
    "n_uuid": "uuid",
    "n_enum": "text",
}


def columns(pg: Conn, table: str) -> dict[str, tuple[str, str]]:
    """{column: (data_type, is_nullable)} from information_schema."""
    rows = pg.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    ).fetchall()
    return {name: (dtype, nullable) for name, dtype, nullable in rows}


def primary_key(pg: Conn, table: str) -> list[str]:
    rows = pg.execute(
        "SELECT k.column_name FROM information_schema.table_constraints c "
        "JOIN information_schema.key_column_usage k "
        "ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema "
        "WHERE c.table_schema = 'public' AND c.table_name = %s "
        "AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def check(pg: Conn, *models: type) -> None:
    kvfast.check_tables(pg, [kvfast.model_info(m) for m in models])


def alter(pg: Conn, statement: str) -> None:
    pg.execute(sql.SQL(statement).format(t=sql.Identifier("t_everything")))


# -- create_tables -------------------------------------------------------------------


def test_create_tables_creates_every_column_with_the_model_type(pg: Conn) -> None:
    create_tables(pg, Everything)
    cols = columns(pg, "t_everything")
    assert set(cols) == set(kvfast.model_info(Everything).field_names)
    for name, (dtype, nullable) in cols.items():
        assert dtype == INFO_SCHEMA_TYPES[name.replace("o_", "n_")], name
        assert nullable == ("YES" if name.startswith("o_") else "NO"), name
    assert primary_key(pg, "t_everything") == ["id"]


def test_create_tables_handles_uuid_and_text_keys(pg: Conn) -> None:
    create_tables(pg, Token, Account)
    assert primary_key(pg, "t_token") == ["token"]
    assert columns(pg, "t_token")["token"] == ("uuid", "NO")
    assert columns(pg, "t_token")["expires"] == ("timestamp with time zone", "YES")
    assert primary_key(pg, "t_account") == ["name"]
    assert columns(pg, "t_account")["name"] == ("text", "NO")
    assert columns(pg, "t_account")["shade"] == ("text", "YES")


def test_create_tables_also_creates_the_fence_table(pg: Conn) -> None:
    create_tables(pg, Account)
    assert set(columns(pg, FENCE_TABLE)) == {"namespace", "partition", "epoch", "owner"}
    assert primary_key(pg, FENCE_TABLE) == ["namespace", "partition"]


def test_create_tables_is_idempotent_and_keeps_existing_rows(pg: Conn) -> None:
    create_tables(pg, Account)
    insert_row(pg, Account(name="kept", balance=Decimal("1.5"), active=True))
    create_tables(pg, Account)
    check(pg, Account)
    assert pg_count(pg, Account) == 1


def test_create_tables_refuses_an_existing_table_that_does_not_match(pg: Conn) -> None:
    pg.execute("CREATE TABLE t_account (name text PRIMARY KEY, balance integer NOT NULL)")
    with pytest.raises(kvfast.SchemaMismatch, match="t_account"):
        create_tables(pg, Account)


# -- check_tables --------------------------------------------------------------------


def test_check_tables_accepts_what_create_tables_made(pg: Conn) -> None:
    create_tables(pg, Everything, Token, Account)
    check(pg, Everything, Token, Account)


def test_a_missing_table_is_a_schema_mismatch(pg: Conn) -> None:
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        check(pg, Everything)
    text = str(excinfo.value)
    assert "'t_everything'" in text
    assert "Everything" in text
    assert "does not exist" in text
    assert isinstance(excinfo.value, kvfast.KvfastError)


def test_a_missing_column_is_a_schema_mismatch(pg: Conn) -> None:
    create_tables(pg, Everything)
    alter(pg, "ALTER TABLE {t} DROP COLUMN o_uuid")
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        check(pg, Everything)
    assert "t_everything.o_uuid" in str(excinfo.value)
    assert "missing" in str(excinfo.value)


@pytest.mark.parametrize(
    ("column", "column_type", "shown"),
    [
        ("n_int", "integer", "integer"),
        ("n_int", "numeric", "numeric"),
        ("n_str", "bytea USING n_str::bytea", "bytea"),
        ("n_float", "real", "real"),
        ("n_datetime", "timestamp without time zone", "timestamp without time zone"),
        ("n_date", "timestamp with time zone", "timestamp with time zone"),
        ("n_decimal", "double precision", "double precision"),
        ("n_dict", "json", "json"),
        ("n_uuid", "text", "text"),
        ("n_bool", "integer USING n_bool::integer", "integer"),
        ("id", "integer", "integer"),
    ],
)
def test_a_wrong_column_type_is_a_schema_mismatch(
    pg: Conn, column: str, column_type: str, shown: str
) -> None:
    create_tables(pg, Everything)
    alter(pg, f"ALTER TABLE {{t}} ALTER COLUMN {column} TYPE {column_type}")
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        check(pg, Everything)
    text = str(excinfo.value)
    assert f"t_everything.{column}" in text
    assert f"column is {shown}" in text
    assert INFO_SCHEMA_TYPES[column] in text


@pytest.mark.parametrize(
    ("column", "lossy_type", "written"),
    [
        ("n_decimal", "numeric(10,2)", Decimal("1.005")),
        ("n_str", "character(20)", "abc"),
        ("o_str", "character(20)", "abc"),
    ],
)
def test_a_column_that_would_change_the_values_is_a_schema_mismatch(
    pg: Conn, column: str, lossy_type: str, written: object
) -> None:
    """check_tables accepts only types that "hold a model type without loss"."""
    stored = pg.execute(sql.SQL("SELECT %s::" + lossy_type), (written,)).fetchone()
    assert stored is not None and stored[0] != written  # rounded / blank-padded
    create_tables(pg, Everything)
    alter(pg, f"ALTER TABLE {{t}} ALTER COLUMN {column} TYPE {lossy_type}")
    with pytest.raises(kvfast.SchemaMismatch, match=re.escape(f"t_everything.{column}")):
        check(pg, Everything)


def test_a_lossless_text_column_is_accepted(pg: Conn) -> None:
    create_tables(pg, Everything)
    alter(pg, "ALTER TABLE {t} ALTER COLUMN n_str TYPE varchar")
    check(pg, Everything)


@pytest.mark.parametrize(
    ("ddl", "shown"),
    [
        ("ALTER TABLE {t} DROP CONSTRAINT t_everything_pkey, ADD PRIMARY KEY (n_int)",
         "['n_int']"),
        ("ALTER TABLE {t} DROP CONSTRAINT t_everything_pkey", "missing"),
        ("ALTER TABLE {t} DROP CONSTRAINT t_everything_pkey, ADD PRIMARY KEY (id, n_int)",
         "n_int"),
    ],
)
def test_a_wrong_primary_key_is_a_schema_mismatch(pg: Conn, ddl: str, shown: str) -> None:
    create_tables(pg, Everything)
    alter(pg, ddl)
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        check(pg, Everything)
    text = str(excinfo.value)
    assert "t_everything: primary key is" in text
    assert shown in text
    assert "['id']" in text


def test_an_optional_field_on_a_not_null_column_is_a_schema_mismatch(pg: Conn) -> None:
    create_tables(pg, Everything)
    alter(pg, "ALTER TABLE {t} ALTER COLUMN o_str SET NOT NULL")
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        check(pg, Everything)
    assert "t_everything.o_str" in str(excinfo.value)
    assert "NOT NULL" in str(excinfo.value)
    assert "Optional" in str(excinfo.value)


def test_a_required_field_on_a_nullable_column_is_a_schema_mismatch(pg: Conn) -> None:
    """A NULL there would come back as None on a field typed str (issue 10)."""
    create_tables(pg, Everything)
    alter(pg, "ALTER TABLE {t} ALTER COLUMN n_str DROP NOT NULL")
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        check(pg, Everything)
    assert "t_everything.n_str: column is nullable" in str(excinfo.value)
    assert "not Optional" in str(excinfo.value)


def test_extra_columns_are_fine_unless_they_need_a_value(pg: Conn) -> None:
    create_tables(pg, Everything)
    alter(pg, "ALTER TABLE {t} ADD COLUMN extra_nullable integer")
    alter(pg, "ALTER TABLE {t} ADD COLUMN extra_default integer NOT NULL DEFAULT 7")
    check(pg, Everything)
    alter(pg, "ALTER TABLE {t} ADD COLUMN extra_required integer NOT NULL")
    with pytest.raises(kvfast.SchemaMismatch, match=re.escape("t_everything.extra_required")):
        check(pg, Everything)


def test_every_problem_is_listed_in_one_error(pg: Conn) -> None:
    create_tables(pg, Everything, Account)
    alter(pg, "ALTER TABLE {t} DROP COLUMN n_bytes")
    alter(pg, "ALTER TABLE {t} ALTER COLUMN n_int TYPE integer")
    with pytest.raises(kvfast.SchemaMismatch) as excinfo:
        check(pg, Everything, Account, Token)
    text = str(excinfo.value)
    assert "t_everything.n_bytes" in text
    assert "t_everything.n_int" in text
    assert "'t_token'" in text
    assert "t_account" not in text


# -- identifiers that need quoting ------------------------------------------------------


def test_odd_identifiers_are_created_exactly_and_inject_nothing(pg: Conn) -> None:
    create_tables(pg, Everything, Odd)
    names = {r[0] for r in pg.execute("SELECT relname FROM pg_class WHERE relkind = 'r'")}
    assert ODD_TABLE in names
    assert "t_everything" in names  # the "drop table" inside the name did not run
    assert set(columns(pg, ODD_TABLE)) == {"order", "select", "user", "group"}
    assert primary_key(pg, ODD_TABLE) == ["order"]
    check(pg, Odd, Everything)


def test_odd_identifiers_work_end_to_end(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    create_tables(pg, Everything, Odd)
    repo = kvfast.Repository(Odd, client=client)
    sneaky = "1'); DROP TABLE t_everything; --"
    repo.create(Odd(order=sneaky, select=1, user="u", group={"where": "from"}))
    assert repo.get_by_id(sneaky) == Odd(order=sneaky, select=1, user="u", group={"where": "from"})
    entries = [e for es in queue_entries(r, settings).values() for e in es]
    assert [(e.table, e.key) for e in entries] == [(ODD_TABLE, sneaky)]

    # Only in PostgreSQL: the read falls back through quoted identifiers.
    in_pg = Odd(order="pg-only", select=2, user=None, group={"a": [1]})
    insert_row(pg, in_pg)
    assert r.exists(obj_key(settings, Odd, "pg-only")) == 0
    assert repo.get_by_id("pg-only") == in_pg
    assert repo.get_many([sneaky, "pg-only", "absent"]) == [
        Odd(order=sneaky, select=1, user="u", group={"where": "from"}),
        in_pg,
        None,
    ]
    # An update of the PostgreSQL-only row loads it through the same identifiers.
    repo.update("pg-only", user="now set")
    assert repo.get_by_id("pg-only") == Odd(
        order="pg-only", select=2, user="now set", group={"a": [1]}
    )
    assert pg_count(pg, Everything) == 0  # still there, still empty
