"""The PostgreSQL reference: hand-written psycopg COPY BINARY + set-based upserts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from _config import BY_TABLE, MODELS, pg_connect
from psycopg import sql

import kvfast


@dataclass
class Step:
    """One COPY + statement of the reference: upsert, update (one column set) or delete."""

    table: str
    kind: str
    columns: tuple[str, ...]
    rows: list[Sequence[Any]]


def _wire_to_value(info: kvfast.ModelInfo, name: str, raw: Any) -> Any:
    if raw is None:
        return None
    ftype = info.by_name[name].ftype
    return raw if ftype.wire_is_value else ftype.from_wire(raw)


def reference_batches(queues: Sequence[Sequence[bytes]], batch_size: int) -> list[list[Step]]:
    """Decode and collapse queued entries into the reference's batches (not timed).

    The same cut as the drainers: per partition, in queue order, ``batch_size``
    entries per transaction; per key the ops of a batch are folded in order
    (create → upsert, update → merged into it or an update, delete → delete).
    """
    batches: list[list[Step]] = []
    for entries in queues:
        for start in range(0, len(entries), batch_size):
            per_model: dict[str, dict[Any, list[Any]]] = {}
            for raw in entries[start:start + batch_size]:
                e = orjson.loads(raw)
                info = BY_TABLE[e["m"]]
                ops = per_model.setdefault(info.table, {})
                op = e["o"]
                if op == "c":
                    wire = e["f"]
                    row = [_wire_to_value(info, f.name, wire.get(f.name)) for f in info.fields]
                    ops[info.key_from_values(row)] = ["upsert", row]
                    continue
                key = _wire_to_value(info, info.key, e["k"])
                if op == "d":
                    ops[key] = ["delete", None]
                    continue
                changes = {n: _wire_to_value(info, n, v) for n, v in e["f"].items()}
                prior = ops.get(key)
                if prior is None:
                    ops[key] = ["update", changes]
                elif prior[0] == "upsert":
                    for n, v in changes.items():
                        prior[1][info.by_name[n].index] = v
                elif prior[0] == "update":
                    prior[1].update(changes)
                # an update after a delete in one batch is a dead letter for kvfast: skip
            steps: list[Step] = []
            for table, ops in per_model.items():
                info = BY_TABLE[table]
                upserts = [row for kind, row in ops.values() if kind == "upsert"]
                if upserts:
                    steps.append(Step(table, "upsert", info.field_names, upserts))
                groups: dict[tuple[str, ...], list[Sequence[Any]]] = {}
                for key, (kind, changes) in ops.items():
                    if kind == "update":
                        groups.setdefault(tuple(changes), []).append([key, *changes.values()])
                for cols, rows in groups.items():
                    steps.append(Step(table, "update", (info.key, *cols), rows))
                deletes = [[key] for key, (kind, _) in ops.items() if kind == "delete"]
                if deletes:
                    steps.append(Step(table, "delete", (info.key,), deletes))
            batches.append(steps)
    return batches


class PgReference:
    """Hand-written COPY BINARY into a temp staging table + set-based SQL, one connection.

    The session turns hash and merge joins off, so UPDATE … FROM and DELETE …
    USING always probe the target's primary key for each staged row: the planner
    has no statistics for a fresh temporary table and stale ones for a table
    that grows during the drain, and otherwise may hash-join the whole target
    table once per batch (EXPLAIN shows Hash Join + Seq Scan on bookings), a cost
    that grows with the table, not the batch.
    """

    def __init__(self) -> None:
        self.conn = pg_connect(autocommit=False)
        self.conn.execute("SET enable_hashjoin = off")
        self.conn.execute("SET enable_mergejoin = off")
        self._copy: dict[tuple[str, tuple[str, ...]], tuple[sql.Composed, list[str]]] = {}
        self._stmt: dict[tuple[str, str, tuple[str, ...]], sql.Composed] = {}
        for info in MODELS:
            self.conn.execute(sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
                "SELECT * FROM {} WITH NO DATA").format(self._stage(info.table),
                                                         sql.Identifier(info.table)))
        self.conn.commit()

    @staticmethod
    def _stage(table: str) -> sql.Identifier:
        return sql.Identifier(f"_bench_stage_{table}")

    def _prepare(self, step: Step) -> tuple[sql.Composed, list[str], sql.Composed]:
        info = BY_TABLE[step.table]
        ck = (step.table, step.columns)
        if ck not in self._copy:
            self._copy[ck] = (
                sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    self._stage(step.table),
                    sql.SQL(", ").join(sql.Identifier(c) for c in step.columns)),
                [info.by_name[c].ftype.copy_type for c in step.columns],
            )
        sk = (step.table, step.kind, step.columns)
        if sk not in self._stmt:
            t, s, k = sql.Identifier(step.table), self._stage(step.table), sql.Identifier(info.key)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in step.columns)
            if step.kind == "upsert":
                sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                          for c in step.columns if c != info.key)
                stmt = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) "
                               "DO UPDATE SET {}").format(t, cols, cols, s, k, sets)
            elif step.kind == "update":
                sets = sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(sql.Identifier(c))
                                          for c in step.columns[1:])
                stmt = sql.SQL("UPDATE {} t SET {} FROM {} s WHERE t.{} = s.{}").format(
                    t, sets, s, k, k)
            else:
                stmt = sql.SQL("DELETE FROM {} t USING {} s WHERE t.{} = s.{}").format(t, s, k, k)
            self._stmt[sk] = stmt
        copy_stmt, types = self._copy[ck]
        return copy_stmt, types, self._stmt[sk]

    def apply(self, batches: Sequence[Sequence[Step]]) -> int:
        """Apply every batch, one transaction each; returns the rows written."""
        conn = self.conn
        cur = conn.cursor()
        rows = 0
        for steps in batches:
            for i, step in enumerate(steps):
                copy_stmt, types, stmt = self._prepare(step)
                with cur.copy(copy_stmt) as copy:
                    copy.set_types(types)
                    for row in step.rows:
                        copy.write_row(row)
                cur.execute(stmt)
                rows += len(step.rows)
                if i < len(steps) - 1:
                    cur.execute(sql.SQL("DELETE FROM {}").format(self._stage(step.table)))
            conn.commit()
        return rows

    def close(self) -> None:
        self.conn.close()
