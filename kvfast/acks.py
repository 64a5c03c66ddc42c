"""What an ack carries besides its partition's fate: the marks the batch leaves in Redis.

A delete leaves a tombstone in its object's hash; ack.lua removes it once the
delete is in PostgreSQL, if it is still that delete's.  A write of a model with
a TTL leaves its write id; ack.lua gives the object its TTL once the write is in
PostgreSQL, if no newer write has replaced the id.  Neither is sent for a table
whose ops were held or refused (nothing of it is in PostgreSQL), nor a TTL for a
write that was dead-lettered (a requeue re-syncs from that hash).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvfast.batch import Batch
from kvfast.keys import Keys, key_string
from kvfast.pgcopy import Applied

__all__ = ["ack_marks"]

#: partition → (object hashes, tombstone ids)
Tombs = dict[int, tuple[list[str], list[str]]]
#: partition → [(object hash, ttl in s, write id)]
Expires = dict[int, list[tuple[str, int, str]]]


def ack_marks(keys: Keys, batch: Batch, applied: Applied,
              partitions: Sequence[int]) -> tuple[Tombs, Expires]:
    """The tombstones to clear and the TTLs to give, per acked partition."""
    failed = applied.failed
    tombs: Tombs = {p: ([], []) for p in partitions}
    for p, info, key_str, tomb_id in batch.tombstones:
        if p in tombs and info.table not in failed:
            tombs[p][0].append(keys.obj(p, info.table, key_str))
            tombs[p][1].append(tomb_id)
    rejected = {id(op) for op, _ in applied.dead}
    expires: Expires = {p: [] for p in partitions}
    for mops in batch.models.values():
        info = mops.info
        if not info.ttl or info.table in failed:
            continue
        for op in mops.ops.values():
            if op.mark is not None and id(op) not in rejected and op.partition in expires:
                expires[op.partition].append(
                    (keys.obj(op.partition, info.table, key_string(op.key)), info.ttl, op.mark))
    return tombs, expires
