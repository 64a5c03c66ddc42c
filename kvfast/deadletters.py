"""The dead-letter document: written by the drainer, read by ``python -m kvfast.deadletter``.

One JSON document per entry in its partition's list ``{ns:p}:d``::

    {"entry": "<the queue entry>", "error": "<why>", "partition": p, "time": …, "drainer": …}

(``entry_b64`` instead of ``entry`` when the bytes were not UTF-8).  The writer
and the reader live here together so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["DeadLetter", "document", "parse"]


def document(raw: bytes, reason: str, partition: int, drainer: str,
             now: float | None = None) -> bytes:
    """The dead letter of queue entry ``raw``, refused for ``reason`` by ``drainer``."""
    doc: dict[str, Any] = {"error": reason, "partition": partition,
                           "time": time.time() if now is None else now, "drainer": drainer}
    try:
        doc["entry"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        doc["entry_b64"] = base64.b64encode(raw).decode("ascii")
    return orjson.dumps(doc)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter as read back: where it is, its bytes and its document."""

    partition: int
    index: int
    raw: bytes
    doc: dict[str, Any]

    @property
    def entry(self) -> bytes | None:
        """The queue entry, when it can be requeued (UTF-8; garbage would only die again)."""
        text = self.doc.get("entry")
        return text.encode("utf-8") if isinstance(text, str) else None

    @property
    def entry_bytes(self) -> bytes | None:
        """The queue entry's bytes as the drainer met them, UTF-8 or not."""
        entry = self.entry
        if entry is not None:
            return entry
        b64 = self.doc.get("entry_b64")
        if not isinstance(b64, str):
            return None
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return None

    @property
    def error(self) -> str:
        return str(self.doc.get("error", ""))

    @property
    def model(self) -> str | None:
        value = self._entry_field("m")
        return value if isinstance(value, str) else None

    @property
    def key(self) -> Any:
        """The entry's key as the application names it: a composite key (a JSON
        array in the entry) as a tuple; None when the entry is unreadable."""
        value = self._entry_field("k")
        return tuple(value) if isinstance(value, list) else value

    def _entry_field(self, name: str) -> Any:
        entry = self.entry
        if entry is None:
            return None
        try:
            return orjson.loads(entry).get(name)
        except (orjson.JSONDecodeError, AttributeError):
            return None

    @property
    def ident(self) -> str:
        return f"{self.partition}:{self.index}"


def parse(partition: int, index: int, raw: bytes) -> DeadLetter:
    """The dead letter at ``index`` of ``partition``'s list (unreadable bytes still list)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = {"error": "unreadable dead letter"}
    return DeadLetter(partition, index, raw, doc if isinstance(doc, dict) else {})
