"""Redis memory: which eviction policies kvfast can live with, and how to tell.

Until its writes have drained, Redis is the only copy of an object, its queue
entries, its in-flight batch and its dead letters.  An eviction policy that may
drop a key without a TTL (``allkeys-lru``, ``allkeys-lfu``, ``allkeys-random``)
would drop acknowledged writes silently: kvfast refuses to start on it.  The
``volatile-*`` policies only evict keys with a TTL, and kvfast gives a key a TTL
only once everything written to it has drained (ack.lua), so they are safe;
``noeviction`` refuses writes when Redis is full, which kvfast reports as
``RedisFull`` while the drain (whose scripts carry ``allow-oom``) frees memory.

The policy is read with ``CONFIG GET`` and, where an ACL or a managed service
forbids CONFIG, from ``INFO memory`` (which every Redis ≥ 4 reports); a user
allowed neither is refused too (``kvfast.meta.check_plan``, the start-up check
of the Repository, the AsyncRepository, the supervisor and the dead-letter tool).

``full_message`` is the text of ``RedisFull``: what waits for the drain.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "SAFE_POLICIES", "UNSAFE_POLICIES", "Backlog", "full_message", "policy_from_info",
    "policy_problem", "usage_from_info",
]

#: policies that never evict a key without a TTL
SAFE_POLICIES = frozenset(
    ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")
)
#: policies that may evict any key, including undrained writes
UNSAFE_POLICIES = frozenset(("allkeys-lru", "allkeys-lfu", "allkeys-random"))


def _info_field(info: str | bytes, field: str) -> str | None:
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else info
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return None


def policy_from_info(info: str | bytes) -> str | None:
    """``maxmemory_policy`` from the text of an ``INFO memory`` reply (None if absent)."""
    return _info_field(info, "maxmemory_policy")


def usage_from_info(info: str | bytes) -> tuple[int | None, int | None]:
    """(used_memory, maxmemory) in bytes from an ``INFO memory`` reply (None if absent)."""
    values = (_info_field(info, "used_memory"), _info_field(info, "maxmemory"))
    return tuple(int(v) if v and v.isdigit() else None for v in values)  # type: ignore[return-value]


class Backlog(NamedTuple):
    """What waits for the drain when Redis is full (None: could not be read)."""

    queued: int | None
    inflight: int | None
    dead: int | None
    used_memory: int | None
    maxmemory: int | None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def full_message(base: str, backlog: Backlog | None) -> str:
    """``RedisFull``'s message: ``base`` (the refused reply), the backlog, the remedy."""
    parts = [base]
    if backlog is not None:
        if backlog.used_memory is not None and backlog.maxmemory:
            parts.append(f"used_memory {_mb(backlog.used_memory)} of maxmemory "
                         f"{_mb(backlog.maxmemory)}")
        counts = [f"{n:,} {what}" for n, what in (
            (backlog.queued, "entries queued"), (backlog.inflight, "in flight"),
            (backlog.dead, "dead letters")) if n is not None]
        if counts:
            parts.append("waiting for the drain: " + ", ".join(counts))
    parts.append("the drain frees memory as it moves entries to PostgreSQL (is a supervisor "
                 "running?); retry the call then, or raise maxmemory; dead letters hold "
                 "memory until requeued or purged")
    return "; ".join(parts)


def policy_problem(policy: Any, where: str) -> str | None:
    """The error message for an unsafe ``policy`` of the Redis at ``where``, else None.

    An unknown policy (a future Redis) is refused too: kvfast cannot tell
    whether it keeps keys without a TTL.
    """
    if isinstance(policy, bytes):
        policy = policy.decode("utf-8", "replace")
    if policy in SAFE_POLICIES:
        return None
    why = ("may evict keys without a TTL" if policy in UNSAFE_POLICIES
           else "is not a policy kvfast knows to keep keys without a TTL")
    return (
        f"Redis at {where} has maxmemory-policy {policy}, which {why}: queued and "
        "in-flight writes, objects not yet in PostgreSQL and dead letters would be lost "
        "silently. Set maxmemory-policy to noeviction (writes then fail with RedisFull "
        "while the drain frees memory) or a volatile-* policy (only drained objects of "
        "models with a TTL are evicted): `CONFIG SET maxmemory-policy noeviction` and "
        "the same line in redis.conf"
    )
