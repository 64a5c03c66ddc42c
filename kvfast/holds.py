"""Held tables: entries that wait, in order, until a drainer can apply them.

A drainer cannot apply an entry when its table is broken in PostgreSQL (a
dropped column, a revoked grant: a *table* error, not a row's fault) or when it
comes from a model the drainer does not know (a newer version with more fields
during a rolling deploy, or a model the drainer was not given).  Applying it
lossily or dead-lettering it would break the promise; blocking the partition
would stop every other table.  So the entry and every later entry of the same
table in the same partition wait in the partition's held list, in queue
order, while everything else drains:

    {ns:p}:h            hash  "t:<table>" → this module's JSON document, "next" → ms
    {ns:p}:h:<table>    list  the held entries, oldest first

``claim.lua`` hands a partition out when its hold is due even with an empty
queue; the drainer that holds the claim reads the head of the held list, puts it
in front of the claim's new entries of that table, and ``ack.lua`` trims what
was applied (or appends what must keep waiting).  A key lives in one table and
one partition, so holding a table's entries per partition keeps every key's
writes in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["FIELD_PREFIX", "Hold", "parse_holds", "retry_delay_ms"]

FIELD_PREFIX = "t:"
#: kinds of hold, by what would release it
TABLE = "table"  # PostgreSQL refused the table: fixed by an operator
MODEL = "model"  # no model for the table in this drainer: a drainer that has it
VERSION = "version"  # entries of a newer model version: a drainer running it

# A broken table is retried after 0.5 s, 1 s, 2 s … at most every 30 s: often
# enough to resume soon after the fix, rarely enough that a table broken for
# an hour costs nothing measurable (one read of the held list's head).
_RETRY_BASE_MS = 500
_RETRY_CAP_MS = 30_000


def retry_delay_ms(tries: int) -> int:
    return int(min(_RETRY_CAP_MS, _RETRY_BASE_MS * 2 ** min(max(tries, 0), 20)))


@dataclass(slots=True)
class Hold:
    """Why one table's entries wait in one partition."""

    table: str
    kind: str
    reason: str
    #: unix time (s) the hold began
    since: float
    #: failed attempts to apply the held entries; -1 once a try applied again (the
    #: rest of the list then drains a batch at a time)
    tries: int = 0
    #: VERSION holds: the model version the first held entry was written by
    version: str | None = None

    @property
    def field(self) -> str:
        return FIELD_PREFIX + self.table

    def doc(self) -> bytes:
        body: dict[str, Any] = {"kind": self.kind, "reason": self.reason,
                                "since": self.since, "tries": self.tries}
        if self.version is not None:
            body["version"] = self.version
        return orjson.dumps(body)

    @classmethod
    def new(cls, table: str, kind: str, reason: str, version: str | None = None) -> Hold:
        return cls(table, kind, reason, time.time(), 0, version)

    @classmethod
    def from_doc(cls, table: str, raw: bytes) -> Hold:
        try:
            body = orjson.loads(raw)
            return cls(table, str(body["kind"]), str(body["reason"]), float(body["since"]),
                       int(body["tries"]), body.get("version"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # Somebody wrote the hash by hand: keep holding, say so.
            return cls(table, TABLE, f"unreadable hold document {raw[:80]!r}", time.time())


def parse_holds(flat: list[Any]) -> tuple[dict[str, Hold], int | None]:
    """The holds of a partition from HGETALL's flat reply, and its ``next`` (ms)."""
    holds: dict[str, Hold] = {}
    next_ms: int | None = None
    for name, value in zip(flat[0::2], flat[1::2], strict=True):
        key = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        if key == "next":
            next_ms = int(value)
        elif key.startswith(FIELD_PREFIX):
            table = key[len(FIELD_PREFIX):]
            holds[table] = Hold.from_doc(table, value)
    return holds, next_ms


def table_of(raw: bytes) -> str | None:
    """The table an entry names, or None when it does not parse (it is dead-lettered)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    table = value.get("m") if isinstance(value, dict) else None
    return table if isinstance(table, str) else None


@dataclass(slots=True)
class HeldTable:
    """One held table of one claimed partition, and what this claim does with it.

    ``chunk`` is the head of the held list read for a retry (empty when the
    hold is not retried now); ``folded`` is what goes into the batch, in
    order (the chunk, then the claim's new entries of the table when the chunk
    was the whole list); ``waiting`` the new entries that must stay behind
    the held list without being tried.
    """

    partition: int
    table: str
    hold: Hold | None
    list_len: int = 0
    chunk: list[bytes] = field(default_factory=list)
    folded: list[bytes] = field(default_factory=list)
    waiting: list[bytes] = field(default_factory=list)
    #: how many of ``folded`` were applied (the rest wait: a suffix, in order)
    applied: int = 0

    def outcome(self, failed: Hold | None) -> tuple[int, list[bytes], Hold | None]:
        """(entries to trim off the held list, entries to append, the hold that remains).

        ``applied`` says how many of ``folded`` were applied (0 when the table
        refused the batch).  ``failed`` is the hold this claim found (a table
        error, an entry it cannot apply), None when nothing new went wrong.
        The held list keeps every entry not applied, in queue order: those of
        the chunk stay where they are, the claim's new ones are appended.
        """
        trim = min(self.applied, len(self.chunk))
        push = self.folded[max(len(self.chunk), self.applied):] + self.waiting
        if failed is not None:
            if self.hold is not None and failed.kind == self.hold.kind:
                failed.since, failed.tries = self.hold.since, max(0, self.hold.tries) + 1
            return trim, push, failed
        if self.list_len - trim + len(push) == 0:
            return trim, push, None  # everything held has drained: the hold ends
        if self.hold is not None and self.applied:
            self.hold.tries = -1  # it applies again: the rest is due at once, a batch at a time
        return trim, push, self.hold
