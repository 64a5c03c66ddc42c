"""The namespace's meta hash: partition count and key layout, recorded once, checked always.

Objects are found by ``crc32(table NUL key) % partitions`` in a layout of key
names (``kvfast.keys``): reading with another count or layout would silently
miss every object, so a process that disagrees with what Redis recorded
refuses to start.  The check is one MULTI block (record if absent, read back),
sent by the sync and the asyncio client alike; ``check`` judges the reply.
"""

from __future__ import annotations

from typing import Any

from kvfast.errors import LayoutMismatch, PartitionMismatch
from kvfast.keys import LAYOUT_VERSION, Keys
from kvfast.resp import EXEC, MULTI, pack
from kvfast.resp import check_replies as raise_error_replies
from kvfast.settings import Settings

__all__ = ["NREPLIES", "check", "check_replies", "payload"]

#: replies to ``payload()``: +OK, three QUEUED, the EXEC array
NREPLIES = 5


def payload(keys: Keys, partitions: int) -> bytes:
    """HSETNX partitions, HSETNX layout, HMGET both: in one MULTI/EXEC."""
    return (
        MULTI
        + pack(("HSETNX", keys.meta, "partitions", partitions))
        + pack(("HSETNX", keys.meta, "layout", LAYOUT_VERSION))
        + pack(("HMGET", keys.meta, "partitions", "layout"))
        + EXEC
    )


def check_replies(settings: Settings, replies: list[Any]) -> None:
    """``check`` on the replies to ``payload()`` (error replies raise first)."""
    raise_error_replies(replies, "the partition check")
    _, _, (have, layout) = replies[-1]
    check(settings, have, layout)


def check(settings: Settings, have: Any, layout: Any) -> None:
    """Refuse a partition count, then a layout, other than this process's (with the remedy)."""
    want = settings.partitions
    if int(have) != want:
        raise PartitionMismatch(
            f"namespace {settings.namespace!r} in Redis was written with "
            f"partitions={int(have)}, but this process uses partitions={want}; "
            "set KVFAST_PARTITIONS to the recorded value"
        )
    if int(layout) != LAYOUT_VERSION:
        raise LayoutMismatch(
            f"namespace {settings.namespace!r} in Redis uses key layout "
            f"{int(layout)}, this kvfast uses layout {LAYOUT_VERSION}: drain it with the "
            "kvfast version that wrote it first"
        )
