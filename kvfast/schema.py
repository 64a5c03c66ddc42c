"""PostgreSQL tables from models: create them, and check that existing ones match.

A table that exists but does not match its model is a ``SchemaMismatch`` at
start-up, naming the table and every difference, instead of a failure at drain
time.  All identifiers go through ``psycopg.sql.Identifier``: a table or column
named ``select`` or ``my "odd" col`` works and cannot inject SQL.  A model's
table is ``table_sql(info)``: ``"schema"."table"`` for ``table="schema.table"``
(each part quoted on its own, see ``kvfast.model``), else the bare name the
search_path resolves.  kvfast's own tables (fence, model versions) are unqualified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from kvfast.errors import SchemaMismatch
from kvfast.fieldtypes import FieldType, StrType
from kvfast.model import FieldInfo, ModelInfo
from kvfast.pgindex import create_indexes, warn_missing_indexes
from kvfast.pgtypes import PgEnumType

__all__ = ["FENCE_TABLE", "MODELS_TABLE", "check_tables", "create_tables", "select_rows",
           "select_rows_sql", "table_sql", "type_sql"]

#: One row per (namespace, partition): the newest epoch that committed a batch,
#: and the drainer (owner) that committed it.
FENCE_TABLE = "kvfast_fence"
#: One row per model version a drainer runs: its fields, and when a drainer running
#: it was last seen.  An older drainer holds a table's creates while a newer
#: version with more fields is live (kvfast.pgcopy: its upsert would leave them).
MODELS_TABLE = "kvfast_models"

# A column type accepted for a model type beyond the exact one (format_type text):
# an unbounded varchar holds every text unchanged.  Anything else that differs
# (varchar(n) for text, numeric(p,s) for numeric, integer for bigint…) would
# reject or alter values the producer accepts, so the model must declare it.
_COMPATIBLE = {
    "text": ("character varying",),
}


def type_sql(ftype: FieldType, stage: bool = False) -> sql.Composable:
    """The column type as SQL: enum type names are identifiers (quoted), the rest
    are kvfast's own type texts."""
    if isinstance(ftype, PgEnumType):
        return sql.Identifier(*_enum_name_parts(ftype.pg_type))
    return sql.SQL(ftype.stage_type if stage else ftype.pg_type)


def table_sql(info: ModelInfo) -> sql.Identifier:
    """The model's table in SQL, schema-qualified when the model names a schema."""
    return sql.Identifier(*info.pg_name)


def _enum_name_parts(name: str) -> list[str]:
    return name.split(".", 1) if "." in name else [name]


def _column_def(info: ModelInfo) -> sql.Composed:
    cols = []
    for f in info.fields:
        null = sql.SQL("") if f.nullable else sql.SQL(" NOT NULL")
        cols.append(
            sql.SQL("{} {}{}").format(sql.Identifier(f.column), type_sql(f.ftype), null)
        )
    cols.append(sql.SQL("PRIMARY KEY ({})").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in info.key_columns)))
    return sql.SQL(", ").join(cols)


def _create_enum_types(conn: psycopg.Connection[Any], infos: list[ModelInfo]) -> None:
    for info in infos:
        for f in info.fields:
            ftype = f.ftype
            if not isinstance(ftype, PgEnumType):
                continue
            ident = sql.Identifier(*_enum_name_parts(ftype.pg_type))
            row = conn.execute("SELECT to_regtype(%s)", (ident.as_string(conn),)).fetchone()
            if row is None or row[0] is None:
                conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
                    ident, sql.SQL(", ").join(sql.Literal(x) for x in ftype.labels)))


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
        _create_enum_types(conn, infos)
        for info in infos:
            _check_schema(conn, info)
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    table_sql(info), _column_def(info)
                )
            )
            _add_missing_columns(conn, info)
            create_indexes(conn, info)
    check_tables(conn, infos)


def _check_schema(conn: psycopg.Connection[Any], info: ModelInfo) -> None:
    """A model's schema must exist: kvfast creates tables in it, never the schema."""
    if len(info.pg_name) == 1:
        return
    name = sql.Identifier(info.pg_name[0]).as_string(conn)
    row = conn.execute("SELECT to_regnamespace(%s)", (name,)).fetchone()
    if row is None or row[0] is None:
        raise SchemaMismatch(
            f"table {info.table!r} (model {info.name}): schema {info.pg_name[0]!r} does not "
            "exist (kvfast creates tables, not schemas: CREATE SCHEMA it first)")


def _add_missing_columns(conn: psycopg.Connection[Any], info: ModelInfo) -> None:
    """Expand only: add the model's columns a table lacks when they may be NULL.

    A rolling deploy adds an Optional field; the new drainers' ``--create-tables``
    adds its column, and entries of the older model drain with NULL there.  A
    missing NOT NULL column is left to the table check (it needs a value for
    the rows already there: the operator's migration).  Nothing is dropped or
    retyped, ever.
    """
    described = _describe(conn, info)
    if described is None:
        return
    columns, _ = described
    for f in info.fields:
        if f.column not in columns and f.nullable:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                table_sql(info), sql.Identifier(f.column), type_sql(f.ftype)))


def _describe(
    conn: psycopg.Connection[Any], info: ModelInfo
) -> tuple[dict[str, Any], list[str]] | None:
    """(columns {name: (type, not null, has default)}, primary key columns) or None."""
    regclass = table_sql(info).as_string(conn)
    row = conn.execute("SELECT to_regclass(%s)::oid", (regclass,)).fetchone()
    if row is None or row[0] is None:
        return None
    oid = row[0]
    columns = {
        name: (ctype, notnull, hasdef, typid)
        for name, ctype, notnull, hasdef, typid in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef, atttypid "
            "FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            (oid,),
        ).fetchall()
    }
    pk = [
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary "
            "ORDER BY array_position(i.indkey::int2[], a.attnum)",
            (oid,),
        ).fetchall()
    ]
    return columns, pk


def _type_matches(model_type: str, column_type: str) -> bool:
    return column_type == model_type or column_type in _COMPATIBLE.get(model_type, ())


def _enum_problems(
    conn: psycopg.Connection[Any], where: str, model: str, ftype: PgEnumType, ctype: str,
    typid: int,
) -> list[str]:
    """The column must be of the declared enum type and have every label of the model."""
    ident = sql.Identifier(*_enum_name_parts(ftype.pg_type)).as_string(conn)
    row = conn.execute("SELECT to_regtype(%s)::oid", (ident,)).fetchone()
    declared = None if row is None else row[0]
    if declared is None:
        return [f"{where}: enum type {ftype.pg_type} of model {model} does not exist "
                f"(column is {ctype})"]
    if declared != typid:
        return [f"{where}: column is {ctype}, model {model} needs enum type {ftype.pg_type}"]
    labels = [r[0] for r in conn.execute(
        "SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder", (typid,)
    ).fetchall()]
    if not labels and conn.execute(
        "SELECT typtype FROM pg_type WHERE oid = %s", (typid,)
    ).fetchone() != ("e",):
        return [f"{where}: type {ctype} is not an enum type"]
    missing = [x for x in ftype.labels if x not in labels]
    if missing:
        return [f"{where}: enum type {ctype} lacks the labels {missing} of the model "
                f"(it has {labels})"]
    return []


def _hint(f: FieldInfo, ctype: str) -> str:
    if isinstance(f.ftype, StrType) and ctype.startswith(("character", "text")):
        return " (declare the column type, e.g. Annotated[str, kvfast.VarChar(n)])"
    return " (declare the column type with typing.Annotated, see kvfast.columns)"


def check_tables(conn: psycopg.Connection[Any], models: Iterable[ModelInfo]) -> None:
    """Raise SchemaMismatch listing every table that does not fit its model; log a
    warning for an indexed field whose column has no index (kvfast.pgindex)."""
    problems: list[str] = []
    models = list(models)
    for info in models:
        described = _describe(conn, info)
        if described is None:
            problems.append(
                f"table {info.table!r} (model {info.name}) does not exist: create it with "
                "kvfast.create_tables() or the supervisor's --create-tables"
            )
            continue
        columns, pk = described
        model_columns = {f.column for f in info.fields}
        for f in info.fields:
            col = columns.get(f.column)
            where = f"{info.table}.{f.column}"
            if f.column != f.name:
                where += f" (field {f.name})"
            if col is None:
                problems.append(f"{where}: column missing (model {info.name})")
                continue
            ctype, notnull, _, typid = col
            if isinstance(f.ftype, PgEnumType):
                problems += _enum_problems(conn, where, info.name, f.ftype, ctype, typid)
            elif not _type_matches(f.ftype.pg_type, ctype):
                problems.append(
                    f"{where}: column is {ctype}, model {info.name} needs "
                    f"{f.ftype.pg_type}{_hint(f, ctype)}"
                )
            if f.nullable and notnull and f.name not in info.key_names:
                problems.append(
                    f"{where}: column is NOT NULL but the model field is Optional"
                )
            if not f.nullable and not notnull and f.name not in info.key_names:
                problems.append(
                    f"{where}: column is nullable but model {info.name}'s field is not "
                    "Optional: a NULL would not load (make the field `T | None`, or the "
                    "column NOT NULL)"
                )
        for name, (_ctype, notnull, hasdef, _typid) in columns.items():
            if name not in model_columns and notnull and not hasdef:
                problems.append(
                    f"{info.table}.{name}: extra NOT NULL column without a default "
                    f"(model {info.name} never writes it)"
                )
        # The same columns in any order: ON CONFLICT and the key lookups need the
        # set, and a composite key's tuple order is the model's to choose.
        if sorted(pk) != sorted(info.key_columns):
            problems.append(
                f"{info.table}: primary key is {pk or 'missing'}, model {info.name} needs "
                f"{list(info.key_columns)}"
            )
    if problems:
        raise SchemaMismatch("tables do not match their models:\n  " + "\n  ".join(problems))
    for info in models:
        warn_missing_indexes(conn, info)


def select_list(info: ModelInfo, alias: str | None = None) -> sql.Composed:
    """Every column in field order, as the reads select them (character(n) ``::text``),
    qualified by the table's ``alias`` if given."""

    def column(f: FieldInfo) -> sql.Composable:
        ident = sql.Identifier(f.column) if alias is None else sql.Identifier(alias, f.column)
        if isinstance(f.ftype, StrType) and f.ftype.pad:
            return sql.SQL("{}::text").format(ident)
        return ident

    return sql.SQL(", ").join(column(f) for f in info.fields)


def select_rows_sql(info: ModelInfo) -> sql.Composed:
    """``SELECT <every column in field order> FROM t WHERE key = ANY(%s)``; for a
    composite key ``WHERE (a, b) IN (SELECT * FROM unnest(%s, %s))``, one array
    per key column (``select_rows_params``).

    A character(n) column is read ``::text``, which drops its padding (the rule in
    ``StrType``): a key read back equals the key asked for.  The keys are cast to
    the key columns' types so that the primary key's index serves the lookup."""

    columns = select_list(info)
    if not info.composite:
        return sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s::{}[])").format(
            columns, table_sql(info), sql.Identifier(info.key_columns[0]),
            type_sql(info.key_fields[0].ftype),
        )
    return sql.SQL("SELECT {} FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
        columns, table_sql(info),
        sql.SQL(", ").join(sql.Identifier(c) for c in info.key_columns),
        sql.SQL(", ").join(sql.SQL("%s::{}[]").format(type_sql(f.ftype))
                           for f in info.key_fields),
    )


def select_rows_params(info: ModelInfo, keys: Sequence[Any]) -> tuple[list[Any], ...]:
    """The parameters of ``select_rows_sql`` for normalized ``keys``: one list per
    key column."""
    if not info.composite:
        return (list(keys),)
    return tuple([key[i] for key in keys] for i in range(len(info.key_fields)))


def rows_by_key(info: ModelInfo, rows: Iterable[tuple[Any, ...]]) -> dict[Any, tuple[Any, ...]]:
    """``select_rows_sql``'s rows by their (normalized) key."""
    return {info.key_from_values(row): row for row in rows}


def select_rows(
    conn: psycopg.Connection[Any], info: ModelInfo, keys: Sequence[Any]
) -> dict[Any, tuple[Any, ...]]:
    """Rows for ``keys`` (all columns in field order), by key."""
    if not keys:
        return {}
    rows = conn.execute(select_rows_sql(info), select_rows_params(info, keys)).fetchall()
    return rows_by_key(info, rows)
