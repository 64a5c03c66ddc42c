"""A PostgreSQL query sent now and read later, on a sync psycopg connection.

``find`` has two Redis round trips that do not depend on its SELECT (the index
sets, then the members' hashes).  psycopg's sync ``execute`` sends and waits, so
only one of them could run while PostgreSQL worked.  With libpq's own split
(``send_query_prepared``, then the result when it is wanted) both run while the
query does: ``PendingQuery(conn, query, params)`` sends it, ``rows()`` waits
for its rows, converted by psycopg's ``Transformer`` as a cursor would.

The connection's lock is held from the send to the read (psycopg's own
methods take it: nothing else can use the connection in between).  A query
whose rows are not wanted any more (the Redis side failed) is read and thrown
away by ``abandon()``; a connection that cannot do even that is closed, and
``Client.pg`` opens a new one.

Statements are prepared once per connection, as psycopg does after a few
executions of a query; with psycopg's ``prepare_threshold=None`` (a
transaction pooler that cannot keep them) the unnamed statement is used.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_exc
from psycopg import generators
from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus

__all__ = ["PendingQuery"]

#: per connection: numbered query -> its prepared statement's name
_PREPARED: weakref.WeakKeyDictionary[psycopg.Connection[Any], dict[bytes, bytes]] = (
    weakref.WeakKeyDictionary())


class PendingQuery:
    """``query`` (placeholders ``$1``…) with text ``params``, sent; ``rows()`` reads it."""

    def __init__(self, conn: psycopg.Connection[Any], query: bytes,
                 params: Sequence[str]) -> None:
        self.conn = conn
        conn.lock.acquire()
        self._open = True
        try:
            pgconn = conn.pgconn
            values: list[bytes | None] = [p.encode() for p in params]
            if conn.prepare_threshold is None:
                pgconn.send_query_params(query, values)
            else:
                pgconn.send_query_prepared(self._prepared(query), values)
            conn.wait(generators.send(pgconn))
        except BaseException:
            self._close()
            raise

    def _prepared(self, query: bytes) -> bytes:
        names = _PREPARED.setdefault(self.conn, {})
        name = names.get(query)
        if name is None:
            name = b"_kvfast_%d" % len(names)
            result = self.conn.pgconn.prepare(name, query)
            if result.status != ExecStatus.COMMAND_OK:
                raise pg_exc.error_from_result(result, encoding=self.conn.info.encoding)
            names[query] = name
        return name

    def rows(self) -> list[tuple[Any, ...]]:
        """The query's rows (a psycopg error for a failed query)."""
        try:
            results = self.conn.wait(generators.fetch_many(self.conn.pgconn))
        finally:
            self._close()
        if not results:
            raise pg_exc.InterfaceError("PostgreSQL returned no result for find's query")
        result = results[0]
        if result.status != ExecStatus.TUPLES_OK:
            raise pg_exc.error_from_result(result, encoding=self.conn.info.encoding)
        tx = Transformer(self.conn)
        tx.set_pgresult(result)
        return tx.load_rows(0, result.ntuples, tuple)

    def abandon(self) -> None:
        """The rows are not wanted: read them off the connection, or close it."""
        if not self._open:
            return
        try:
            self.conn.wait(generators.fetch_many(self.conn.pgconn))
        except Exception:  # called while another error propagates: never replace it
            with contextlib.suppress(Exception):
                self.conn.close()
        finally:
            self._close()

    def _close(self) -> None:
        if self._open:
            self._open = False
            self.conn.lock.release()
