"""Tables as pg_catalog describes them: what ``python -m kvfast.codegen`` models.

``read_tables(conn, ["atlas_app.booking", "fit"])`` returns one ``PgTable`` per
name, in the order given: its columns in ``attnum`` order (type as ``format_type``
prints it, which is the text the table check compares, plus the catalog facts
behind it: type kind, schema, array element, domain base type, enum labels),
nullability, default expression, identity/generated flags, and the primary key
columns in key order.  One query per concern (tables, columns, enum labels,
primary keys), each for every table at once, as sqlacodegen reflects through one
``MetaData.reflect``.

Names follow kvfast's model rule (``kvfast.model``): ``SCHEMA.TABLE`` is the table
in that schema, a name without a dot is found through the connection's
``search_path``; each part is an identifier taken as written (``Fit`` is not
``fit``).  Missing tables are one ``SchemaMismatch`` naming all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from kvfast.errors import SchemaMismatch

__all__ = ["PgColumn", "PgTable", "PgType", "read_tables", "split_name"]

#: pg_class.relkind of what kvfast can write into: tables and partitioned tables
_TABLE_KINDS = {"r": "table", "p": "partitioned table"}
_KIND_NAMES = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence",
               "i": "index", "c": "composite type"}


@dataclasses.dataclass(frozen=True, slots=True)
class PgType:
    """A column's type: ``text`` as format_type prints it (with the column's typmod)."""

    text: str
    oid: int
    #: pg_type.typtype: b base, e enum, d domain, c composite, r range, m multirange
    kind: str
    schema: str
    name: str
    #: the element type of an array (with the column's typmod), else None
    element: PgType | None = None
    #: a domain's base type as format_type prints it, else None
    base: str | None = None
    #: an enum's labels in their sort order (the element's, for an array of enums)
    labels: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PgColumn:
    name: str
    type: PgType
    not_null: bool
    #: the default expression as pg_get_expr prints it (``'new'::text``), else None
    default: str | None
    #: pg_attribute.attidentity: "" none, "a" GENERATED ALWAYS, "d" BY DEFAULT
    identity: str = ""
    #: pg_attribute.attgenerated: "" none, "s" a stored generated column
    generated: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class PgTable:
    #: the name as asked for (``atlas_app.booking`` or ``booking``)
    asked: str
    schema: str
    name: str
    #: "table" or "partitioned table", or what else the name is ("view", …)
    kind: str
    columns: tuple[PgColumn, ...]
    primary_key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def split_name(name: str) -> tuple[str, ...]:
    """``("schema", "table")`` or ``("table",)``; ValueError for anything else."""
    parts = tuple(name.split("."))
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(
            f"{name!r}: name a table as SCHEMA.TABLE or TABLE (one dot at most, "
            "both parts non-empty)")
    if any("\x00" in p for p in parts):
        raise ValueError(f"{name!r}: a table name cannot hold a NUL byte")
    return parts


def read_tables(conn: psycopg.Connection[Any], names: Sequence[str]) -> list[PgTable]:
    """Every table of ``names`` as pg_catalog describes it (SchemaMismatch if missing)."""
    oids = _table_oids(conn, names)
    missing = [n for n in names if oids[n] is None]
    if missing:
        raise SchemaMismatch("no such table: " + ", ".join(
            f"{n!r}" + ("" if "." in n else " (looked up through the search_path)")
            for n in missing))
    found = [oid for n in names if (oid := oids[n]) is not None]
    relations = _relations(conn, found)
    columns = _columns(conn, found)
    keys = _primary_keys(conn, found)
    tables = []
    for n in names:
        oid = oids[n]
        assert oid is not None
        schema, relname, relkind = relations[oid]
        kind = _TABLE_KINDS.get(relkind) or _KIND_NAMES.get(relkind, f"relkind {relkind}")
        tables.append(PgTable(n, schema, relname, kind, tuple(columns.get(oid, ())),
                              tuple(keys.get(oid, ()))))
    return tables


def _table_oids(conn: psycopg.Connection[Any], names: Sequence[str]) -> dict[str, int | None]:
    """The oid of each name, by the same lookup the table check makes (``to_regclass``
    of the quoted parts), so the generated model names the table the check finds."""
    regclasses = [sql.Identifier(*split_name(n)).as_string(conn) for n in names]
    rows = conn.execute(
        "SELECT to_regclass(r)::oid FROM unnest(%s::text[]) WITH ORDINALITY AS q(r, i) "
        "ORDER BY i", (regclasses,),
    ).fetchall()
    return {n: row[0] for n, row in zip(names, rows, strict=True)}


def _relations(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s)", (oids,),
    ).fetchall()
    return {oid: (schema, name, kind) for oid, schema, name, kind in rows}


# The element of an array type is described with the column's typmod, so
# varchar(20)[] has the element character varying(20).
_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.attnotnull, a.attidentity, a.attgenerated,
       pg_get_expr(d.adbin, d.adrelid),
       format_type(a.atttypid, a.atttypmod), t.oid, t.typtype, tn.nspname, t.typname,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
       format_type(e.oid, a.atttypmod), e.oid, e.typtype, en.nspname, e.typname
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = t.typnamespace
LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
LEFT JOIN pg_namespace en ON en.oid = e.typnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""


def _columns(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, list[PgColumn]]:
    rows = conn.execute(_COLUMNS_SQL, (oids,)).fetchall()
    enum_oids = sorted({oid for r in rows for oid, kind in ((r[7], r[8]), (r[13], r[14]))
                        if kind == "e"})
    labels = _enum_labels(conn, enum_oids)
    out: dict[int, list[PgColumn]] = {}
    for (rel, name, notnull, identity, generated, default, text, oid, kind, schema, typname,
         base, etext, eoid, ekind, eschema, ename) in rows:
        element = None
        if eoid is not None:
            element = PgType(etext, eoid, ekind, eschema, ename, labels=labels.get(eoid, ()))
        ptype = PgType(text, oid, kind, schema, typname, element, base, labels.get(oid, ()))
        out.setdefault(rel, []).append(
            PgColumn(name, ptype, notnull, default, identity, generated))
    return out


def _enum_labels(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, tuple[str, ...]]:
    if not oids:
        return {}
    out: dict[int, list[str]] = {}
    for typid, label in conn.execute(
        "SELECT enumtypid, enumlabel FROM pg_enum WHERE enumtypid = ANY(%s) "
        "ORDER BY enumtypid, enumsortorder", (oids,),
    ).fetchall():
        out.setdefault(typid, []).append(label)
    return {k: tuple(v) for k, v in out.items()}


def _primary_keys(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, list[str]]:
    """Primary key columns in key order (indkey's order, not attnum's)."""
    out: dict[int, list[str]] = {}
    for rel, name in conn.execute(
        "SELECT i.indrelid, a.attname FROM pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = ANY(%s) AND i.indisprimary ORDER BY i.indrelid, k.ord", (oids,),
    ).fetchall():
        out.setdefault(rel, []).append(name)
    return out
