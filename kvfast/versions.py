"""Which model versions drainers run, in PostgreSQL: what keeps a rolling deploy exact.

During a rolling deploy, an older drainer can apply an older producer's create
to a row a newer model already wrote: its upsert sets only the columns it
knows, and a column only the newer model has would keep its old value while the
Redis copy (written whole by the older model) has none.  So every drainer
records its model versions (fields, and when it was last seen) in
``kvfast_models`` before it applies anything, and a drainer applying creates
checks, in the same transaction, whether a live version of the table has fields
it lacks; if so those creates wait (kvfast.holds) for a drainer that runs it.

Exact, not a cache: the newer drainer registered before it wrote any value of
its new fields, and the older drainer reads the registry after claiming the
partition, i.e. after the newer one's batch for that key was acked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import sql

from kvfast.holds import VERSION
from kvfast.model import ModelInfo, model_version
from kvfast.schema import MODELS_TABLE

__all__ = ["Versions"]

# A drainer refreshes its versions' seen_at every minute; a version no drainer
# has run for ten minutes (a rolled-back deploy) no longer holds older drainers.
_REGISTER_EVERY_S = 60.0
_LIVE_S = 600


class Versions:
    """The model-version registry seen through one drainer's connection."""

    def __init__(self, conn: psycopg.Connection[Any], namespace: str) -> None:
        self.conn = conn
        self.namespace = namespace
        self._models: list[ModelInfo] = []
        self._registered_at = 0.0
        table = sql.Identifier(MODELS_TABLE)
        self._register = sql.SQL(
            "INSERT INTO {0} (namespace, table_name, version, fields, seen_at) "
            "SELECT %s, t, v, ARRAY(SELECT json_array_elements_text(f::json)), now() "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) AS u (t, v, f) "
            "ON CONFLICT (namespace, table_name, version) DO UPDATE SET "
            "fields = EXCLUDED.fields, seen_at = EXCLUDED.seen_at"
        ).format(table)
        self._live = sql.SQL(
            "SELECT table_name, version, fields FROM {} WHERE namespace = %s AND "
            "table_name = ANY(%s) AND seen_at > now() - make_interval(secs => %s)"
        ).format(table)

    def register(self, models: Sequence[ModelInfo]) -> None:
        """Record the versions this drainer runs (a transaction of its own).

        Before the drainer applies anything, and every minute after (``refresh``).
        """
        self._models = list(models)
        if models:
            self.conn.execute(self._register, (
                self.namespace, [m.table for m in models], [model_version(m) for m in models],
                [orjson.dumps(list(m.field_names)).decode() for m in models]))
        self.conn.commit()
        self._registered_at = time.monotonic()

    def refresh(self) -> None:
        """``register`` again when a minute has passed (outside a batch's transaction)."""
        if self._models and time.monotonic() - self._registered_at > _REGISTER_EVERY_S:
            self.register(self._models)

    def live_query(self, creates: Mapping[str, ModelInfo]) -> tuple[sql.Composed, tuple[Any, ...]]:
        """The live versions of ``creates``' tables (table → this drainer's model): the
        query and its parameters, run inside the batch's transaction (pipelined with
        the fence, ``kvfast.pgcopy``); ``judge`` reads its rows."""
        return self._live, (self.namespace, list(creates), _LIVE_S)

    def judge(self, creates: Mapping[str, ModelInfo],
              rows: Sequence[tuple[Any, ...]]) -> dict[str, tuple[str, str]]:
        """Tables a live newer version has more fields for → (hold kind, why), from the
        rows of ``live_query``."""
        out: dict[str, tuple[str, str]] = {}
        for table, version, fields in rows:
            info = creates[table]
            unknown = sorted(set(fields) - set(info.field_names))
            if unknown and table not in out:
                out[table] = (VERSION, (
                    f"model version {version} of {table} has fields {unknown} this drainer's "
                    f"model ({model_version(info)}) lacks: its creates wait for a drainer "
                    "running that version"))
        return out
