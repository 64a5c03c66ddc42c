"""Held tables in a drainer: read them with a claim, fold them first, decide their fate.

``prepare`` turns a claim into a batch: a partition's held tables (kvfast.holds)
get their due entries in front of the claim's new ones; ``holds_after`` reads
what the fold and PostgreSQL made of them into ack.lua's hold actions.  A
partition without holds costs one check here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvfast import codec
from kvfast.batch import Batch, Hashes, build_batch
from kvfast.client import Client
from kvfast.drivers import redis_errors
from kvfast.errors import DecodeError
from kvfast.holds import MODEL, TABLE, HeldTable, Hold, retry_delay_ms, table_of
from kvfast.keys import key_string
from kvfast.model import get_model, model_version
from kvfast.pgcopy import Applied
from kvfast.scripts import HoldAction, Part

__all__ = ["After", "Prepared", "holds_after", "prepare"]

log = logging.getLogger("kvfast.drainer")

#: a hold that waits for a drainer with another model is looked at again after this
#: long even without one (a drainer that has the model takes it at once)
_MODEL_HOLD_RETRY_MS = 1000
#: held entries tried when a failing hold is due: enough to see that it applies again
_PROBE = 50


@dataclass(slots=True)
class Prepared:
    """A claim decoded for applying: the batch, and its partitions' held tables."""

    batch: Batch
    #: partition → entries fed to the batch (the claim's, with the held ones tried)
    fed: dict[int, int]
    #: (partition, table) → the held table, for every table with a hold before the claim
    tables: dict[tuple[int, str], HeldTable] = field(default_factory=dict)


@dataclass(slots=True)
class After:
    """What a batch leaves held (see ``holds_after``)."""

    #: partition → (what ack.lua does to each held list, with the hold that remains;
    #: ms until the remaining holds are retried)
    actions: dict[int, tuple[list[tuple[Hold | None, HoldAction]], int]]
    #: every entry that waits in a held list after this batch
    waiting: set[bytes]
    #: partition → entries fed to the batch but not applied because they wait
    unapplied: dict[int, int]


def prepare(client: Client, parts: list[Part]) -> Prepared:
    """Decode a claim's parts into a batch, with their held tables (kvfast.holds).

    A held table's new entries go behind its held list.  When the hold is
    due (or this drainer has the model or version it waits for), the head of
    the held list is read and put in front of them, so they are tried, in
    order; the claim's new entries join them only when that head was the
    whole list.  Partitions without holds cost nothing here.
    """
    tables: dict[tuple[int, str], HeldTable] = {}
    if not any(part.holds for part in parts):
        plain = [(part.partition, part.entries) for part in parts]
        return Prepared(build_batch(plain, resync_hashes(client, plain)),
                        {part.partition: len(part.entries) for part in parts})
    now_ms = time.time() * 1000
    retried: list[tuple[HeldTable, int]] = []
    slices: list[tuple[int, list[bytes]]] = []
    for part in parts:
        if not part.holds:
            slices.append((part.partition, part.entries))
            continue
        due = part.holds_next is None or part.holds_next <= now_ms
        mine = {table: HeldTable(part.partition, table, hold)
                for table, hold in part.holds.items()}
        other: list[bytes] = []
        for raw in part.entries:
            table = table_of(raw)
            held = mine.get(table) if table is not None else None
            if held is None:
                other.append(raw)
            else:
                held.waiting.append(raw)
        for held in mine.values():
            tables[(part.partition, held.table)] = held
            limit = _retry_limit(held.hold, due, client.settings.batch_size)
            if limit:
                retried.append((held, limit))
        slices.append((part.partition, other))
    if retried:
        _read_held(client, retried)
    extra: dict[int, list[bytes]] = {}
    for held in tables.values():
        extra.setdefault(held.partition, []).extend(held.folded)
    slices = [(p, entries + extra.get(p, [])) for p, entries in slices]
    return Prepared(build_batch(slices, resync_hashes(client, slices)),
                    {p: len(entries) for p, entries in slices}, tables)

def _can_release(hold: Hold | None) -> bool:
    """Whether this drainer has what ``hold`` waits for (then it tries at once)."""
    if hold is None or hold.kind == TABLE:
        return False
    info = get_model(hold.table)
    if info is None:
        return False
    return hold.kind == MODEL or hold.version == model_version(info)

def _retry_limit(hold: Hold | None, due: bool, batch_size: int) -> int:
    """How many held entries to try now (0: none).

    A hold this drainer can release (it has the model or version waited for),
    or one whose last try applied (``tries < 0``), is drained a batch at a time.
    Otherwise a due hold is *probed* with a few entries: a table broken for an
    hour in every partition must not cost every claim a full failed batch per
    partition (measured: 64 partitions x 2,000 held entries retried per claim
    stopped the healthy tables, bench/test_6_events.py).  A model this drainer
    does not have is not tried at all: only a drainer that has it can.
    """
    if hold is None:
        return 0
    if _can_release(hold) or hold.tries < 0:
        return batch_size
    if not due or (hold.kind != TABLE and get_model(hold.table) is None):
        return 0
    return min(batch_size, _PROBE)


def _read_held(client: Client, tables: list[tuple[HeldTable, int]]) -> None:
    """The head of each held list (one pipelined round trip) and its length."""
    with redis_errors(client.settings):
        pipe = client.redis.pipeline(transaction=False)
        for held, limit in tables:
            key = client.keys.held(held.partition, held.table)
            pipe.lrange(key, 0, limit - 1)
            pipe.llen(key)
        replies = pipe.execute()
    for (held, limit), chunk, length in zip(tables, replies[0::2], replies[1::2], strict=True):
        held.chunk = list(chunk)
        held.list_len = int(length)
        probing = limit < client.settings.batch_size
        if held.list_len <= len(held.chunk) and not probing:
            held.folded = held.chunk + held.waiting
            held.waiting = []
        else:
            held.folded = list(held.chunk)


def holds_after(prepared: Prepared, applied: Applied, parts: list[Part]) -> After:
    """What the batch leaves held: per partition the hold actions for ack.lua and
    the retry delay, the entries that wait, and how many fed entries did not apply.

    A table PostgreSQL refused waits whole; a table the fold could not apply
    waits from the first entry it could not; a held table whose entries all
    applied, with nothing left in its list, is released.
    """
    batch = prepared.batch
    ours = {part.partition for part in parts}
    keys = set(prepared.tables) | set(batch.held)
    keys |= {k for k in batch.entries_of if k[1] in applied.failed}
    out: dict[int, tuple[list[tuple[Hold | None, HoldAction]], int]] = {}
    waiting: set[bytes] = set()
    unapplied: dict[int, int] = {}
    for p, table in sorted(keys):
        if p not in ours:
            continue
        held = prepared.tables.get((p, table)) or HeldTable(p, table, None)
        held.folded = batch.entries_of.get((p, table), [])
        newly = batch.held.get((p, table))
        why: Hold | None = None
        if table in applied.failed:
            held.applied = 0
            why = Hold.new(table, *applied.failed[table])
        elif newly is not None:
            held.applied = len(held.folded) - len(newly[1])
            why = newly[0]
        else:
            held.applied = len(held.folded)
        trim, push, hold = held.outcome(why)
        waiting.update(held.folded[held.applied:])
        waiting.update(held.waiting)
        unapplied[p] = unapplied.get(p, 0) + len(held.folded) - held.applied
        if not trim and not push and hold is held.hold:
            continue  # nothing changed for this table
        if hold is not None and held.hold is None:
            log.warning("partition %d: %d entries of table %s wait: %s", p, len(push),
                        table, hold.reason)
        elif hold is None:
            log.info("partition %d: table %s drains again (%d held entries applied)", p,
                     table, trim)
        if hold is None:
            delay = 0
        elif hold.tries < 0:
            delay = 0  # it applies again: the rest at once
        elif hold.kind == TABLE:
            delay = retry_delay_ms(hold.tries)
        elif held.applied:
            delay = 0
        else:
            delay = _MODEL_HOLD_RETRY_MS
        actions, old = out.get(p, ([], delay))
        actions.append((hold, HoldAction(table, trim, push, hold.doc() if hold else b"")))
        out[p] = (actions, min(old, delay))
    return After(out, waiting, unapplied)


def resync_hashes(client: Client, slices: Sequence[tuple[int, Sequence[bytes]]]) -> Hashes | None:
    """The current hash of every key a resync entry names (``python -m kvfast.deadletter
    requeue`` pushes them; see ``kvfast.batch``), read after the claim in one pipelined
    round trip, and only when a cheap byte test finds a resync entry at all."""
    wanted: dict[tuple[str, str], str] = {}
    for p, entries in slices:
        for raw in entries:
            if codec.RESYNC_MARK not in raw:
                continue
            try:
                table, op, key, _, _, _ = codec.check(codec.parse(raw))
            except DecodeError:
                continue  # build_batch dead-letters it
            if op == codec.OP_RESYNC:
                key_str = key_string(key)
                wanted[(table, key_str)] = client.keys.obj(p, table, key_str)
    if not wanted:
        return None
    with redis_errors(client.settings):
        pipe = client.redis.pipeline(transaction=False)
        for obj_key in wanted.values():
            pipe.hgetall(obj_key)
        replies = pipe.execute()
    return dict(zip(wanted, replies, strict=True))
