"""Queue entries: the bytes a producer RPUSHes and a drainer decodes.

An entry is one orjson object, self-describing and versioned::

    {"v": 1, "m": "<table>", "mv": "<model version>", "o": "c"|"u"|"d"|"r",
     "k": <key>, "f": {field: wire value}, "i": "<mark id>", "g": true,
     "t": <write time, unix µs>}

``c`` (create) carries every field, ``u`` (update) only the changed ones, ``d``
(delete) no ``f`` but the id of the tombstone it left in Redis, so the drainer
removes exactly that tombstone and not a newer object.  A write of a model with
a TTL carries in ``i`` the write id it left in the object's hash
(``keys.WRITE_FIELD``): the ack gives the object its TTL only while that id is
still there.  ``mv`` is the writing model's version (``model.model_version``): a
drainer whose model differs reads the entry field by field (an older model's
entry drains with defaults, a newer one's waits; see ``kvfast.holds``).  ``r``
(resync, pushed by ``python -m kvfast.deadletter requeue`` in place of a
dead-lettered entry) carries only the key: the drainer applies the key's
*current* Redis hash (see ``kvfast.batch``); ``"g": true`` says the
dead-lettered entry was a delete, so a key absent from Redis is deleted in
PostgreSQL too.  Wire values are JSON
(see ``fieldtypes``); ``t`` lets the drainer measure drain lag.  A reader that
meets a ``v`` it does not know dead-letters the entry instead of guessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from kvfast.errors import DecodeError

__all__ = [
    "FIELDS_SEP",
    "FORMAT_VERSION",
    "OP_CREATE",
    "OP_DELETE",
    "OP_RESYNC",
    "OP_UPDATE",
    "RESYNC_MARK",
    "Entry",
    "check",
    "decode",
    "encode_delete",
    "encode_resync",
    "encode_write",
    "entry_head",
    "entry_tail",
    "mark",
    "now_us",
    "parse",
]

FORMAT_VERSION = 1
OP_CREATE = "c"
OP_UPDATE = "u"
OP_DELETE = "d"
OP_RESYNC = "r"
_OPS = frozenset((OP_CREATE, OP_UPDATE, OP_DELETE, OP_RESYNC))
#: bytes every resync entry holds (``encode_resync``): a cheap test before parsing a claim
RESYNC_MARK = b'"o":"r"'


def now_us() -> int:
    return time.time_ns() // 1000


def entry_head(table: str, op: str, version: str | None = None) -> bytes:
    """The bytes every entry of ``table``/``op`` starts with (up to the key's value)."""
    mv = b',"mv":%b' % orjson.dumps(version) if version is not None else b""
    return b'{"v":%d,"m":%b%b,"o":%b,"k":' % (FORMAT_VERSION, orjson.dumps(table), mv,
                                               orjson.dumps(op))


#: between the key and the fields of a write entry
FIELDS_SEP = b',"f":'


def entry_tail(t_us: int) -> bytes:
    """The bytes every write entry of one batch ends with (the write time)."""
    return b',"t":%d}' % t_us


def mark(write_id: bytes) -> bytes:
    """The bytes of a write entry's ``i`` (its write id), between fields and tail."""
    return b',"i":"%b"' % write_id


def encode_write(table: str, op: str, key: Any, fields: dict[str, Any], t_us: int,
                 version: str | None = None, write_id: str | None = None) -> bytes:
    """One write entry.  The producer's hot loop builds the same bytes from the
    pieces above (head once per model, tail once per batch)."""
    return (entry_head(table, op, version) + orjson.dumps(key) + FIELDS_SEP
            + orjson.dumps(fields) + (mark(write_id.encode()) if write_id else b"")
            + entry_tail(t_us))


def encode_delete(table: str, key: Any, tomb_id: str, t_us: int) -> bytes:
    return orjson.dumps(
        {"v": FORMAT_VERSION, "m": table, "o": OP_DELETE, "k": key, "i": tomb_id, "t": t_us}
    )


def encode_resync(table: str, key: Any, t_us: int, *, gone: bool = False) -> bytes:
    """A resync of ``key``: "apply its current Redis hash" (``gone``: the entry it
    replaces was a delete, so a key absent from Redis is absent from PostgreSQL)."""
    obj: dict[str, Any] = {"v": FORMAT_VERSION, "m": table, "o": OP_RESYNC, "k": key, "t": t_us}
    if gone:
        obj["g"] = True
    return orjson.dumps(obj)


@dataclass(slots=True)
class Entry:
    table: str
    op: str
    key: Any
    fields: dict[str, Any]
    t_us: int
    #: deletes: the tombstone id; writes of a model with a TTL: the write id
    tomb_id: str | None


def decode(raw: bytes) -> Entry:
    """Parse one queue entry; anything malformed is a DecodeError saying why."""
    return Entry(*check(parse(raw)))


def parse(raw: bytes) -> Any:
    """``orjson.loads`` of one entry, a DecodeError if it is not JSON.

    The drainer parses entry by entry: parsing a claim as one JSON array (one
    call instead of thousands) measured no faster on the 2-core bench machine
    (the joined 500 KB buffer costs fresh pages, and the checks that keep a
    malformed entry from changing how its neighbours read cost the rest).
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"entry is not JSON: {exc}") from None


def _composite_key(key: Any) -> bool:
    """A composite key's wire form (``keys.key_wire``): a list of two or more ints/strs."""
    return (type(key) is list and len(key) > 1
            and all(type(part) is int or type(part) is str for part in key))


def check(obj: Any) -> tuple[str, str, Any, dict[str, Any], int, str | None]:
    """A parsed entry's (table, op, key, fields, write time, mark id), checked.

    The mark id is a delete's tombstone id, or a TTL model's write id (else None).
    """
    try:
        version = obj["v"]
        table, op, key, t_us = obj["m"], obj["o"], obj["k"], obj["t"]
    except (KeyError, TypeError):
        raise DecodeError("entry is not an object with v, m, o, k and t") from None
    if version != FORMAT_VERSION:
        raise DecodeError(f"unknown entry format version {version!r}")
    if type(table) is not str or op not in _OPS:
        raise DecodeError(f"entry has a bad model {table!r} or op {op!r}")
    if type(key) is not int and type(key) is not str and not _composite_key(key):
        raise DecodeError(f"entry has a bad key {key!r}")
    if type(t_us) is not int:
        raise DecodeError(f"entry has a bad timestamp {t_us!r}")
    if op == OP_DELETE:
        tomb_id = obj.get("i")
        if type(tomb_id) is not str:
            raise DecodeError("delete entry without a tombstone id")
        return table, op, key, {}, t_us, tomb_id
    if op == OP_RESYNC:
        return table, op, key, {}, t_us, None
    fields = obj.get("f")
    if type(fields) is not dict or not fields:
        raise DecodeError("write entry without fields")
    write_id = obj.get("i")
    if write_id is not None and type(write_id) is not str:
        raise DecodeError(f"write entry has a bad write id {write_id!r}")
    return table, op, key, fields, t_us, write_id
