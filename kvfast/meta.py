"""The start-up check of a namespace: Redis's eviction policy, then the meta hash.

Objects are found by ``crc32(table NUL key) % partitions`` in a layout of key
names (``kvfast.keys``): reading with another count or layout would silently
miss every object, so a process that disagrees with what Redis recorded
refuses to start.  And an eviction policy that may drop keys without a TTL
would drop undrained writes (``kvfast.memory``): refused too.

``check_plan`` is the check without I/O (a generator of packed round trips,
sent back their replies), driven by the sync and the asyncio client alike:

1. ``CONFIG GET maxmemory-policy`` + ``HMGET meta partitions layout``, pipelined;
   where CONFIG is refused (an ACL without it, a renamed command), ``INFO memory``;
2. only when the meta hash is absent, one MULTI block records it
   (``HSETNX`` both fields, read back).  Reading first is what lets a
   supervisor start on a Redis at ``maxmemory``, where ``HSETNX`` is refused:
   the drain it runs is what frees the memory.

``backlog_payload`` / ``backlog_from`` read what waits for the drain, for the
message of ``RedisFull``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from kvfast import memory
from kvfast.errors import ConfigError, LayoutMismatch, PartitionMismatch
from kvfast.keys import LAYOUT_VERSION, Keys
from kvfast.resp import EXEC, MULTI, REPLY_ERRORS, pack
from kvfast.resp import check_replies as raise_error_replies
from kvfast.settings import Settings, redact

__all__ = [
    "NREPLIES", "Round", "backlog_from", "backlog_payload", "check", "check_plan",
    "check_replies", "payload",
]

#: replies to ``payload()``: +OK, three QUEUED, the EXEC array
NREPLIES = 5
#: one round trip of a plan: (packed commands, replies expected)
Round = tuple[bytes, int]

_READ = 2  # replies to the first round trip


def check_plan(settings: Settings, keys: Keys) -> Generator[Round, list[Any], None]:
    """The whole start-up check (see the module docstring); raises ConfigError and kin."""
    replies = yield (
        pack(("CONFIG", "GET", "maxmemory-policy"))
        + pack(("HMGET", keys.meta, "partitions", "layout")),
        _READ,
    )
    config, fields = replies
    raise_error_replies([fields], "the partition check")
    where = redact(settings.redis_url)
    if isinstance(config, REPLY_ERRORS) or not config:
        (info,) = yield pack(("INFO", "memory")), 1
        if isinstance(info, REPLY_ERRORS):
            raise ConfigError(
                f"cannot read the maxmemory-policy of Redis at {where}: CONFIG GET was "
                f"refused ({config}) and INFO too ({info}); kvfast refuses to run on an "
                "eviction policy it cannot see: allow this user `+info` (or `+config|get`)"
            ) from info
        policy = memory.policy_from_info(info)
    else:  # a map on a RESP3 connection, [name, value] on RESP2
        policy = config.get(b"maxmemory-policy") if isinstance(config, dict) else config[1]
    problem = memory.policy_problem(policy, where)
    if problem is not None:
        raise ConfigError(problem)
    have, layout = fields
    if have is None or layout is None:
        replies = yield payload(keys, settings.partitions), NREPLIES
        check_replies(settings, replies)
        return
    check(settings, have, layout)


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


def backlog_payload(keys: Keys) -> Round:
    """LLEN queue, LLEN in-flight, LLEN dead letters of every partition, INFO memory."""
    commands = [
        pack((cmd, name))
        for p in range(keys.partitions)
        for cmd, name in (("LLEN", keys.queues[p]), ("LLEN", keys.inflight[p]),
                          ("LLEN", keys.dead[p]))
    ]
    commands.append(pack(("INFO", "memory")))
    return b"".join(commands), len(commands)


def backlog_from(replies: list[Any]) -> memory.Backlog:
    """The replies to ``backlog_payload`` (an error reply counts as unknown)."""
    def total(values: list[Any]) -> int | None:
        if any(isinstance(v, REPLY_ERRORS) for v in values):
            return None
        return sum(int(v) for v in values)

    lengths, info = replies[:-1], replies[-1]
    used, limit = (None, None) if isinstance(info, REPLY_ERRORS) else memory.usage_from_info(info)
    return memory.Backlog(total(lengths[0::3]), total(lengths[1::3]), total(lengths[2::3]),
                          used, limit)
