"""Apply a collapsed batch to PostgreSQL: COPY BINARY into staging, then set-based SQL.

Per model and kind, one COPY into a temporary staging table and one statement:

    upsert   INSERT INTO t (cols) SELECT cols FROM stage ON CONFLICT (key) DO UPDATE SET …
    update   UPDATE t SET c = s.c, … FROM stage s WHERE t.key = s.key RETURNING t.key
             (one round per distinct set of changed columns)
    delete   DELETE FROM t USING stage s WHERE t.key = s.key

(``t.key = s.key`` is ``t.a = s.a AND t.b = s.b`` for a composite key.)

The staging table is a temporary table with the model's column types and no
constraints, ``ON COMMIT DELETE ROWS`` (emptied by every commit).  A row
PostgreSQL rejects (constraint, type, foreign key) is found by re-running the
batch with savepoints and bisecting the failing group; it and the queue entries
behind it come back as dead letters, everything else commits.
An update whose row does not exist is a dead letter too: never silently dropped.

Each model's statements run under a savepoint of their own: an error that is
the *table's* (a dropped column or table, a revoked grant, a changed type:
SQLSTATE classes 42 and 0A) rolls back only that model, which comes back in
``Applied.failed`` so its entries are held (``kvfast.holds``) while the other
models of the batch commit.  A statement timeout is neither the row's nor the
table's fault: ``StatementTimeout`` tells the drainer to back off and apply the
batch in smaller transactions (``split``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from kvfast.batch import DELETE, UPDATE, UPSERT, Batch, KeyOp, ModelOps, values_of
from kvfast.holds import TABLE
from kvfast.model import ModelInfo
from kvfast.schema import FENCE_TABLE, table_sql, type_sql
from kvfast.versions import Versions

__all__ = ["ROW_ERRORS", "Applied", "Applier", "StaleEpoch", "StatementTimeout", "is_table_error"]

#: Errors caused by the data of some row: isolate the row, commit the rest.  Class
#: 54 is a row too big for the server (an index row over 8191 bytes, say): the
#: row's fault, however psycopg files it (an OperationalError).
ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError,
              psycopg.errors.ProgramLimitExceeded)
#: SQLSTATE classes of an error that is the table's, not a row's: syntax or access
#: rule violation (undefined table/column, insufficient privilege, datatype
#: mismatch …) and feature not supported.
_TABLE_ERROR_CLASSES = ("42", "0A")


def is_table_error(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.Error) and bool(sqlstate) and str(sqlstate)[:2] in (
        _TABLE_ERROR_CLASSES)


def _savepoint_name(i: int) -> bytes:
    return b"kvfast_m%d" % i


def _savepoint(i: int) -> bytes:
    """The savepoint of a batch's ``i``-th model (``Applier._apply``)."""
    return b"SAVEPOINT " + _savepoint_name(i)


class StatementTimeout(Exception):
    """PostgreSQL cancelled a statement (statement_timeout): retry in smaller pieces.

    ``done`` is what the pieces committed before it did; ``rest`` the ops not
    yet committed (the caller goes on from there, not from the start).
    """

    def __init__(self, text: str, done: Applied, rest: Batch) -> None:
        super().__init__(text)
        self.done = done
        self.rest = rest
# When a batch fails, bisect groups of at most this many ops rather than the
# whole batch: with ~1% poison rows a 2,000-op batch has ~20 bad rows and
# bisecting 45-op chunks costs far fewer statements than bisecting 2,000 ops.
_CAREFUL_CHUNK = 45


#: binary COPY's signature, flags (none) and header extension length (0); its end
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"


class RowValueError(psycopg.errors.DataError):
    """A value psycopg could not encode for COPY: the row's fault, like a DataError."""


class StaleEpoch(Exception):
    """PostgreSQL has seen newer epochs for some of the batch's partitions: do not commit."""

    def __init__(self, stale: dict[int, tuple[int, int]]) -> None:
        text = ", ".join(f"partition {p}: epoch {e} is older than {n}"
                         for p, (e, n) in sorted(stale.items()))
        super().__init__(text)
        #: partition → (the batch's epoch, the newest epoch PostgreSQL has seen)
        self.stale = stale


class _Stmts:
    """The SQL of one model, built once per connection."""

    def __init__(self, conn: psycopg.Connection[Any], info: ModelInfo, n: int) -> None:
        self.info = info
        self.stage = sql.Identifier(f"_kvfast_stage_{n}")
        table = table_sql(info)  # schema-qualified when the model names one
        keys = [sql.Identifier(c) for c in info.key_columns]
        key_list = sql.SQL(", ").join(keys)
        #: ``t.a = s.a AND t.b = s.b``: the stage row's key in the target
        joined = sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(k) for k in keys)
        names = [f.name for f in info.fields]
        #: field name → its column's identifier (a field may map to another column name)
        self.col = {f.name: sql.Identifier(f.column) for f in info.fields}
        cols = sql.SQL(", ").join(self.col[c] for c in names)
        # The model's own column types, not the target's: a drainer that keeps
        # running while someone widens a varchar must not keep the old width.
        conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
                self.stage,
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(self.col[f.name], type_sql(f.ftype, stage=True))
                    for f in info.fields
                ),
            )
        )
        non_key = [self.col[c] for c in names if c not in info.key_names]
        conflict: sql.Composable
        if non_key:
            conflict = sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in non_key
            )
        else:
            conflict = sql.SQL("DO NOTHING")
        self.upsert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
            table, cols, cols, self.stage, key_list, conflict
        )
        self.delete = sql.SQL("DELETE FROM {} t USING {} s WHERE {}").format(
            table, self.stage, joined
        )
        self.clear = sql.SQL("DELETE FROM {}").format(self.stage)
        # The stage may hold rows of an earlier group of this transaction (it
        # empties itself at commit: ON COMMIT DELETE ROWS).  Cleared lazily, before
        # the next COPY into it: a batch of creates only never pays a DELETE.
        self.dirty = False
        self.table = table
        self.joined = joined
        self.returning = sql.SQL(", ").join(sql.SQL("t.{}").format(k) for k in keys)
        #: RETURNING gives a character(n) key padded: compare it as the model's value
        self.key_from_pg = [f.ftype.from_pg for f in info.key_fields]
        self._copy: dict[tuple[str, ...], sql.Composed] = {}
        self._update: dict[tuple[str, ...], sql.Composed] = {}
        self.all_columns = tuple(names)

    def copy(self, columns: tuple[str, ...]) -> sql.Composed:
        """COPY into the stage, ``columns`` given as field names."""
        stmt = self._copy.get(columns)
        if stmt is None:
            stmt = self._copy[columns] = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                self.stage, sql.SQL(", ").join(self.col[c] for c in columns)
            )
        return stmt

    def update(self, columns: tuple[str, ...]) -> sql.Composed:
        stmt = self._update.get(columns)
        if stmt is None:
            sets = sql.SQL(", ").join(
                sql.SQL("{0} = s.{0}").format(self.col[c]) for c in columns
            )
            stmt = self._update[columns] = sql.SQL(
                "UPDATE {} t SET {} FROM {} s WHERE {} RETURNING {}"
            ).format(self.table, sets, self.stage, self.joined, self.returning)
        return stmt


DeadList = list[tuple[KeyOp, str]]


@dataclass(slots=True)
class Applied:
    """What a batch did: the rejected ops, and the tables PostgreSQL refused whole."""

    dead: DeadList = field(default_factory=list)
    #: table → (hold kind, why): PostgreSQL refused it (the error's SQLSTATE and
    #: message), or a newer model version is live; its ops were rolled back
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, other: Applied) -> None:
        self.dead += other.dead
        self.failed.update(other.failed)


def _pieces(batch: Batch, n: int) -> list[Batch]:
    """``batch`` cut into ``n`` batches by key (one op per key: order is unaffected)."""
    out = [Batch() for _ in range(n)]
    for table, mops in batch.models.items():
        ops = list(mops.ops.items())
        for i, piece in enumerate(out):
            part = ops[i::n]
            if part:
                piece.models[table] = ModelOps(mops.info, dict(part))
    return [piece for piece in out if piece.models]


def _joined(pieces: list[Batch]) -> Batch:
    """The ops of several pieces of one batch as one batch again."""
    out = Batch()
    for piece in pieces:
        for table, mops in piece.models.items():
            into = out.models.get(table)
            if into is None:
                out.models[table] = ModelOps(mops.info, dict(mops.ops))
            else:
                into.ops.update(mops.ops)
    return out


class Applier:
    """Applies batches on one PostgreSQL connection (not autocommit)."""

    def __init__(self, conn: psycopg.Connection[Any], namespace: str, owner: str = "") -> None:
        self.conn = conn
        self.namespace = namespace
        self.owner = owner
        self._stmts: dict[str, _Stmts] = {}
        # Newer epochs win; an equal epoch only from the drainer that committed
        # it (a retry after a lost connection).  Epochs come from Redis, and a
        # Redis that lost its last second (crash + AOF everysec) can hand the
        # same epoch to two drainers: the owner check fences the older one off.
        # One statement fences every partition of the batch.  Rows are locked
        # in partition order, so two drainers fencing overlapping partitions
        # (an expired lease and its successor) queue up instead of deadlocking.
        self._fence = sql.SQL(
            "INSERT INTO {0} (namespace, partition, epoch, owner) "
            "SELECT %s, p, e, %s FROM unnest(%s::int[], %s::bigint[]) AS f (p, e) ORDER BY p "
            "ON CONFLICT (namespace, partition) DO UPDATE SET epoch = EXCLUDED.epoch, "
            "owner = EXCLUDED.owner WHERE {0}.epoch < EXCLUDED.epoch OR "
            "({0}.epoch = EXCLUDED.epoch AND {0}.owner IS NOT DISTINCT FROM EXCLUDED.owner) "
            "RETURNING partition"
        ).format(sql.Identifier(FENCE_TABLE))
        self._newest = sql.SQL(
            "SELECT partition, epoch FROM {} WHERE namespace = %s AND partition = ANY(%s)"
        ).format(sql.Identifier(FENCE_TABLE))
        self.versions = Versions(conn, namespace)

    def register(self, models: Sequence[ModelInfo]) -> None:
        """Record the model versions this drainer runs (see ``kvfast.versions``)."""
        self.versions.register(models)

    def _for(self, info: ModelInfo) -> _Stmts:
        stmts = self._stmts.get(info.table)
        if stmts is None or stmts.info is not info:
            stmts = self._stmts[info.table] = _Stmts(self.conn, info, len(self._stmts))
        return stmts

    def apply(self, batch: Batch, epochs: dict[int, int], split: int = 1) -> Applied:
        """Apply ``batch`` in one transaction fenced by ``epochs`` (partition → epoch),
        or in ``split`` transactions by key after a statement timeout.

        Returns the rejected ops and the tables refused whole.  Raises StaleEpoch
        (rolled back) when a newer epoch already committed for any partition,
        StatementTimeout when PostgreSQL cancelled a statement, and lets
        connection errors propagate (rolled back) for the caller to retry.
        """
        pieces = _pieces(batch, split) if split > 1 else [batch]
        total = Applied()
        for i, piece in enumerate(pieces):
            try:
                done = self._apply_once(piece, epochs)
            except psycopg.errors.QueryCanceled as exc:
                raise StatementTimeout(_error_text(exc), total, _joined(pieces[i:])) from exc
            total.add(done)
        return total

    def _apply_once(self, batch: Batch, epochs: dict[int, int]) -> Applied:
        self.versions.refresh()  # still alive: its versions stay live
        for mops in batch.models.values():
            if mops.info.table not in self._stmts:
                # Staging tables are created in a transaction of their own: one
                # created inside a batch that rolls back would vanish with it.
                self._for(mops.info)
                self.conn.commit()
        try:
            return self._apply(batch, epochs, careful=False)
        except ROW_ERRORS:
            self.conn.rollback()
        return self._apply(batch, epochs, careful=True)

    def _apply(self, batch: Batch, epochs: dict[int, int], *, careful: bool) -> Applied:
        """One transaction: the fence, then every model under its own savepoint.

        Round trips for a batch of one model's creates: one for BEGIN, the fence,
        ``SET CONSTRAINTS``, the live model versions and the first model's
        savepoint (pipelined: none of them depends on another's result before
        the fence's is read), two for the COPY, one for the upsert, one for the
        COMMIT -- five, as many as a hand-written COPY + upsert loop; before they
        were pipelined and while each savepoint was released, ten.  A savepoint is
        never released: COMMIT ends them all, ``ROLLBACK TO`` still reaches each.
        """
        conn = self.conn
        done = Applied()
        models = list(batch.models.values())
        creates = {m.info.table: m.info for m in models if m.of_kind(UPSERT)}
        try:
            # The fence goes first: it row-locks the partition's epoch, so a stale
            # drainer stops before doing any work, and two drainers of one
            # partition (old lease, new lease) commit one after the other.
            # A DEFERRABLE INITIALLY DEFERRED constraint would only fail at COMMIT,
            # where no savepoint can isolate the row: every constraint is checked
            # at its statement instead.
            parts = list(epochs)
            with conn.pipeline():
                fence = conn.execute(
                    self._fence, (self.namespace, self.owner, parts, [epochs[p] for p in parts]))
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                live = conn.execute(*self.versions.live_query(creates)) if creates else None
                if models:
                    conn.execute(_savepoint(0))
            fenced = fence.fetchall()
            if len(fenced) != len(parts):
                ok = {r[0] for r in fenced}
                newest = dict(conn.execute(
                    self._newest, (self.namespace, [p for p in parts if p not in ok])
                ).fetchall())
                raise StaleEpoch({p: (epochs[p], int(newest.get(p, 0)))
                                  for p in parts if p not in ok})
            if live is not None:
                done.failed.update(self.versions.judge(creates, live.fetchall()))
            for i, mops in enumerate(models):
                if mops.info.table in done.failed:
                    continue
                if i:
                    conn.execute(_savepoint(i))
                try:  # a broken table fails alone
                    dead = self._model(mops, careful)
                except psycopg.Error as exc:
                    if not is_table_error(exc):
                        raise
                    conn.execute(b"ROLLBACK TO SAVEPOINT " + _savepoint_name(i))
                    # One line: it is shown in logs, health and the status line.
                    done.failed[mops.info.table] = (TABLE, _error_text(exc).splitlines()[0])
                    continue
                done.dead += dead
            conn.commit()
        except BaseException:
            if not conn.closed and not conn.broken:
                conn.rollback()
            raise
        finally:
            # Commit and rollback both leave every stage empty.
            for stmts in self._stmts.values():
                stmts.dirty = False
        return done

    def _model(self, mops: ModelOps, careful: bool) -> DeadList:
        stmts = self._for(mops.info)
        dead: DeadList = []
        upserts = mops.of_kind(UPSERT)
        if upserts:
            dead += self._run(stmts, upserts, self._upsert, careful)
        updates = mops.of_kind(UPDATE)
        if updates:
            groups: dict[tuple[str, ...], list[KeyOp]] = {}
            for op in updates:
                groups.setdefault(tuple(op.row), []).append(op)
            for group in groups.values():
                dead += self._run(stmts, group, self._update, careful)
        deletes = mops.of_kind(DELETE)
        if deletes:
            dead += self._run(stmts, deletes, self._delete, careful)
        return dead

    # -- one group -------------------------------------------------------------

    def _run(
        self,
        stmts: _Stmts,
        ops: list[KeyOp],
        step: Callable[[_Stmts, list[KeyOp]], DeadList],
        careful: bool,
    ) -> DeadList:
        if not careful:
            return step(stmts, ops)
        dead: DeadList = []
        for start in range(0, len(ops), _CAREFUL_CHUNK):
            dead += self._bisect(stmts, ops[start : start + _CAREFUL_CHUNK], step)
        return dead

    def _bisect(
        self, stmts: _Stmts, ops: list[KeyOp], step: Callable[[_Stmts, list[KeyOp]], DeadList]
    ) -> DeadList:
        try:
            with self.conn.transaction():  # a SAVEPOINT inside the batch transaction
                return step(stmts, ops)
        except ROW_ERRORS as exc:
            if len(ops) == 1:
                return [(ops[0], _error_text(exc))]
            mid = len(ops) // 2
            return self._bisect(stmts, ops[:mid], step) + self._bisect(stmts, ops[mid:], step)

    def _copy(self, stmts: _Stmts, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> None:
        info = stmts.info
        types = [info.by_name[c].ftype.copy_type for c in columns]
        if stmts.dirty:
            self.conn.execute(stmts.clear)
        # Set before the COPY and only reset by the transaction's end: a savepoint
        # rolled back (row isolation) may bring back rows a clear had removed.
        stmts.dirty = True
        with self.conn.cursor().copy(stmts.copy(columns)) as copy:
            copy.set_types(types)
            try:
                for row in rows:
                    copy.write_row(row)
            except (TypeError, ValueError, OverflowError) as exc:
                # Decoding checked every value, so this is a bug or a foreign
                # entry that slipped through: isolate the row, never crash-loop.
                raise RowValueError(f"cannot encode a row for COPY: {exc}") from exc

    def _copy_rows(self, stmts: _Stmts, rows: list[bytes]) -> None:
        """COPY whole binary rows (C-decoded upserts, kvfast.crows) into the stage.

        In block mode psycopg sends the buffer as given: the header and the
        trailer are ours (psycopg's ``BinaryFormatter`` adds them only to rows).
        """
        if stmts.dirty:
            self.conn.execute(stmts.clear)
        stmts.dirty = True
        with self.conn.cursor().copy(stmts.copy(stmts.all_columns)) as copy:
            copy.write(b"".join((_COPY_HEADER, *rows, _COPY_TRAILER)))

    def _upsert(self, stmts: _Stmts, ops: list[KeyOp]) -> DeadList:
        # Upsert rows are lists in field order, or the binary COPY rows C made of
        # creates (see batch.KeyOp): all bytes go as one buffer, a mix as values.
        rows = [op.row for op in ops]
        if all(type(row) is bytes for row in rows):
            self._copy_rows(stmts, rows)
        else:
            info = stmts.info
            self._copy(stmts, stmts.all_columns, [values_of(info, op) for op in ops])
        self.conn.execute(stmts.upsert)
        return []

    def _update(self, stmts: _Stmts, ops: list[KeyOp]) -> DeadList:
        changed = tuple(ops[0].row)
        info = stmts.info
        columns = (*info.key_names, *changed)
        parts = info.key_parts
        self._copy(stmts, columns, [[*parts(op.key), *op.row.values()] for op in ops])
        from_pg = stmts.key_from_pg
        returned = self.conn.execute(stmts.update(changed)).fetchall()
        if info.composite:
            found = {tuple(f(v) for f, v in zip(from_pg, r, strict=True)) for r in returned}
        else:
            found = {from_pg[0](r[0]) for r in returned}
        return [(op, "update of a row that is not in PostgreSQL") for op in ops
                if op.key not in found]

    def _delete(self, stmts: _Stmts, ops: list[KeyOp]) -> DeadList:
        info = stmts.info
        self._copy(stmts, info.key_names, [list(info.key_parts(op.key)) for op in ops])
        self.conn.execute(stmts.delete)
        return []


def _error_text(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    sqlstate = getattr(exc, "sqlstate", None) or ""
    text = str(exc).strip()
    if diag is not None and diag.constraint_name:
        text += f" (constraint {diag.constraint_name})"
    return f"{sqlstate} {text}".strip()
