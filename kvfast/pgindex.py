"""PostgreSQL indexes for a model's indexed fields (``indexes=``): ``find`` runs one
``SELECT … WHERE col = $1`` per call, which needs an index on ``col`` to stay fast.

``create_tables`` creates a missing one (``CREATE INDEX IF NOT EXISTS``, a btree
on the column alone); the table check only warns when one is missing (a slow
``find`` is not a wrong one, and an existing table's indexes are the owner's
business).  A column counts as indexed when a valid, non-partial index has it
as its first key column.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from kvfast.model import ModelInfo

__all__ = ["create_indexes", "index_name", "missing_indexes", "warn_missing_indexes"]

log = logging.getLogger("kvfast.schema")

# PostgreSQL truncates identifiers beyond 63 bytes (two long names could collide).
_NAME_MAX = 63


def index_name(info: ModelInfo, column: str) -> str:
    """``<table>_<column>_idx``, or a digest of both when that is too long."""
    name = f"{info.pg_name[-1]}_{column}_idx"
    if len(name.encode("utf-8")) <= _NAME_MAX:
        return name
    return "kvfast_idx_" + hashlib.sha1(f"{info.table}\0{column}".encode()).hexdigest()[:20]


def missing_indexes(conn: psycopg.Connection[Any], info: ModelInfo) -> list[str]:
    """The columns of ``info``'s indexed fields no index of its table starts with."""
    if not info.indexes:
        return []
    regclass = sql.Identifier(*info.pg_name).as_string(conn)
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s) AND i.indisvalid "
        "AND i.indpred IS NULL", (regclass,)).fetchall()
    first = {r[0] for r in rows}
    return [info.by_name[name].column for name in info.indexes
            if info.by_name[name].column not in first]


def create_indexes(conn: psycopg.Connection[Any], info: ModelInfo) -> None:
    """An index on every indexed field's column that has none (``--create-tables``)."""
    for column in missing_indexes(conn, info):
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index_name(info, column)), sql.Identifier(*info.pg_name),
            sql.Identifier(column)))


def warn_missing_indexes(conn: psycopg.Connection[Any], info: ModelInfo) -> list[str]:
    """Log (and return) a warning per indexed field whose column has no index."""
    warnings = [
        f"{info.table}.{column}: model {info.name} indexes this field but the column has "
        "no PostgreSQL index: every find scans the table (create one, or start the "
        "supervisor with --create-tables)"
        for column in missing_indexes(conn, info)]
    for text in warnings:
        log.warning("%s", text)
    return warnings
