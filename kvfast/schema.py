"""PostgreSQL tables from models: create them, and check that existing ones match.

A table that exists but does not match its model is a ``SchemaMismatch`` at
start-up, naming the table and every difference, instead of a failure at drain
time.  All identifiers go through ``psycopg.sql.Identifier``: a table or column
named ``select`` or ``my "odd" col`` works and cannot inject SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from kvfast.errors import SchemaMismatch
from kvfast.model import ModelInfo

__all__ = ["FENCE_TABLE", "MODELS_TABLE", "check_tables", "create_tables", "select_rows",
           "select_rows_sql"]

#: One row per (namespace, partition): the newest epoch that committed a batch,
#: and the drainer (owner) that committed it.
FENCE_TABLE = "kvfast_fence"
#: One row per model version a drainer runs: its fields, and when a drainer running
#: it was last seen.  An older drainer holds a table's creates while a newer
#: version with more fields is live (kvfast.pgcopy: its upsert would leave them).
MODELS_TABLE = "kvfast_models"

# Column types that hold a model's values unchanged, beyond the exact one.  A
# varchar(n) rejects a longer value (a dead letter, visible) but never alters
# one; character(n) pads and numeric(p,s) rounds, so PostgreSQL would silently
# hold something other than Redis: those are mismatches.
_COMPATIBLE = {
    "text": ("text", "character varying"),
}


def _column_def(info: ModelInfo) -> sql.Composed:
    cols = []
    for f in info.fields:
        null = sql.SQL("") if f.nullable else sql.SQL(" NOT NULL")
        cols.append(
            sql.SQL("{} {}{}").format(sql.Identifier(f.name), sql.SQL(f.ftype.pg_type), null)
        )
    cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(info.key)))
    return sql.SQL(", ").join(cols)


def create_tables(conn: psycopg.Connection[Any], models: Iterable[ModelInfo]) -> None:
    """Create missing tables (and kvfast's fence table), then check every model's table."""
    infos = list(models)
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (namespace text NOT NULL, partition integer "
                "NOT NULL, epoch bigint NOT NULL, owner text, PRIMARY KEY (namespace, partition))"
            ).format(sql.Identifier(FENCE_TABLE))
        )
        # Fence tables made before the owner column existed.
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS owner text").format(
                sql.Identifier(FENCE_TABLE)
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (namespace text NOT NULL, table_name text "
                "NOT NULL, version text NOT NULL, fields text[] NOT NULL, seen_at timestamptz "
                "NOT NULL DEFAULT now(), PRIMARY KEY (namespace, table_name, version))"
            ).format(sql.Identifier(MODELS_TABLE))
        )
        for info in infos:
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    sql.Identifier(info.table), _column_def(info)
                )
            )
    check_tables(conn, infos)


def _describe(conn: psycopg.Connection[Any], table: str) -> tuple[dict[str, Any], list[str]] | None:
    """(columns {name: (type, not null, has default)}, primary key columns) or None."""
    regclass = sql.Identifier(table).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid", (regclass,)).fetchone()
    if row is None or row[0] is None:
        return None
    oid = row[0]
    columns = {
        name: (ctype, notnull, hasdef)
        for name, ctype, notnull, hasdef in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef "
            "FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        ).fetchall()
    }
    pk = [
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary",
            (oid,),
        ).fetchall()
    ]
    return columns, pk


def _type_matches(model_type: str, column_type: str) -> bool:
    if column_type == model_type:
        return True
    base = column_type.split("(", 1)[0].strip()
    return base in _COMPATIBLE.get(model_type, ())


def check_tables(conn: psycopg.Connection[Any], models: Iterable[ModelInfo]) -> None:
    """Raise SchemaMismatch listing every table that does not fit its model."""
    problems: list[str] = []
    for info in models:
        described = _describe(conn, info.table)
        if described is None:
            problems.append(
                f"table {info.table!r} (model {info.name}) does not exist: create it with "
                "kvfast.create_tables() or the supervisor's --create-tables"
            )
            continue
        columns, pk = described
        for f in info.fields:
            col = columns.get(f.name)
            if col is None:
                problems.append(f"{info.table}.{f.name}: column missing (model {info.name})")
                continue
            ctype, notnull, _ = col
            if not _type_matches(f.ftype.pg_type, ctype):
                problems.append(
                    f"{info.table}.{f.name}: column is {ctype}, model {info.name} needs "
                    f"{f.ftype.pg_type}"
                )
            if f.nullable and notnull and f.name != info.key:
                problems.append(
                    f"{info.table}.{f.name}: column is NOT NULL but the model field is Optional"
                )
        for name, (_ctype, notnull, hasdef) in columns.items():
            if name not in info.by_name and notnull and not hasdef:
                problems.append(
                    f"{info.table}.{name}: extra NOT NULL column without a default "
                    f"(model {info.name} never writes it)"
                )
        if pk != [info.key]:
            problems.append(
                f"{info.table}: primary key is {pk or 'missing'}, model {info.name} needs "
                f"[{info.key!r}]"
            )
    if problems:
        raise SchemaMismatch("tables do not match their models:\n  " + "\n  ".join(problems))


def select_rows_sql(info: ModelInfo) -> sql.Composed:
    """``SELECT <every column in field order> FROM t WHERE key = ANY(%s)``."""
    return sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(
        sql.SQL(", ").join(sql.Identifier(f.name) for f in info.fields),
        sql.Identifier(info.table),
        sql.Identifier(info.key),
    )


def select_rows(
    conn: psycopg.Connection[Any], info: ModelInfo, keys: Sequence[Any]
) -> dict[Any, tuple[Any, ...]]:
    """Rows for ``keys`` (all columns in field order), by key."""
    if not keys:
        return {}
    query = select_rows_sql(info)
    key_index = info.key_field.index
    rows = conn.execute(query, (list(keys),)).fetchall()
    return {row[key_index]: row for row in rows}
