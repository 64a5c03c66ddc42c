"""The Lua scripts in ``kvfast/lua/``: read once, called by SHA, one typed wrapper each.

Scripts are files with a header documenting KEYS and ARGV, never strings built
from user data.  Each script has one wrapper class below, next to a copy of its
calling convention: ``call(...)`` builds the (KEYS, ARGV) of one call from typed
arguments and ``decode(reply)`` reads its reply, so changing a script's
signature is an edit of the ``.lua`` file and its wrapper.  Calls are packed
here as EVALSHA (one buffer for many calls) and sent by the sync or asyncio
client; ``EvalBatch`` loads the script and resends the calls a NOSCRIPT reply
refused (a restarted Redis forgets scripts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from kvfast.cluster import Unit
from kvfast.holds import FIELD_PREFIX, Hold, parse_holds
from kvfast.keys import WRITE_FIELD, Keys
from kvfast.replicas import check_wait
from kvfast.resp import REPLY_ERRORS, pack, reply_exception
from kvfast.settings import Settings

__all__ = [
    "SCRIPT_NAMES",
    "Ack",
    "Call",
    "Claim",
    "EvalBatch",
    "HoldAction",
    "Hydrate",
    "LoadEverywhere",
    "Part",
    "Prune",
    "Rebase",
    "Renew",
    "Requeue",
    "SendUnits",
    "Update",
    "pack_eval",
    "routed_eval_plan",
    "source",
]

SCRIPT_NAMES = ("update", "hydrate", "claim", "ack", "renew", "rebase", "requeue", "prune")

#: one script call: (KEYS, ARGV)
Call = tuple[list[Any], list[Any]]


@cache
def source(name: str) -> bytes:
    return resources.files("kvfast").joinpath("lua", f"{name}.lua").read_bytes()


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name)).hexdigest()


def pack_eval(name: str, keys: list[Any], args: list[Any]) -> bytes:
    """One EVALSHA in RESP form, for a hand-built pipeline."""
    return pack(("EVALSHA", sha(name), len(keys), *keys, *args))


class EvalBatch:
    """Pipelined EVALSHA calls of one script, with the NOSCRIPT retry, for any transport.

    ``payload()`` packs the calls still pending; ``take(replies)`` keeps the
    results and returns True when a NOSCRIPT asks for SCRIPT LOAD and a resend
    (a Redis restart empties its script cache; the failed calls did nothing).
    An error reply raises ``RedisUnavailable`` (LOADING, READONLY …) or
    ``RedisCommandError``.
    """

    def __init__(self, name: str, calls: Sequence[Call]) -> None:
        self.name = name
        self.calls = calls
        self.results: list[Any] = [None] * len(calls)
        self.pending = list(range(len(calls)))
        self._retried = False

    def payload(self) -> bytes:
        return b"".join(pack_eval(self.name, *self.calls[i]) for i in self.pending)

    def take(self, replies: list[Any]) -> bool:
        retry = []
        for i, reply in zip(self.pending, replies, strict=True):
            if isinstance(reply, REPLY_ERRORS):
                if str(reply).startswith("NOSCRIPT") and not self._retried:
                    retry.append(i)
                    continue
                raise reply_exception(reply, f"{self.name}.lua") from reply
            self.results[i] = reply
        self.pending = retry
        self._retried = True
        return bool(retry)

    @property
    def load_command(self) -> bytes:
        return pack(("SCRIPT", "LOAD", source(self.name)))


@dataclass(frozen=True, slots=True)
class SendUnits:
    """Send each unit to the node of its slot, all nodes at once (``execute_units``);
    send back each unit's replies (WAIT's reply last when ``wait``)."""

    units: list[Unit]
    wait: bool


@dataclass(frozen=True, slots=True)
class LoadEverywhere:
    """Run ``command`` (SCRIPT LOAD) on every master; send back None."""

    command: bytes


def routed_eval_plan(batch: EvalBatch, slot_of_key: Callable[[Any], int], settings: Settings,
                     wait_keys: Sequence[Any] | None) -> Generator[
                         SendUnits | LoadEverywhere, Any, None]:
    """``batch`` on a Redis Cluster, for ``Client`` and ``AsyncClient`` alike: each call
    to the node of its first key's slot (every kvfast script keeps its keys in one
    partition, or on one node); results in ``batch.results``.  ``wait_keys`` (the
    application's key of each call): the calls are writes, ``wait_replicas``
    applies (``NotReplicated`` names the keys concerned)."""
    wait = bool(settings.wait_replicas) and wait_keys is not None
    short: list[tuple[int, Any]] = []
    while True:
        pending = batch.pending
        units = [Unit(slot_of_key(batch.calls[i][0][0]), pack_eval(batch.name, *batch.calls[i]),
                      1) for i in pending]
        results = yield SendUnits(units, wait)
        if wait:
            for i, replies in zip(pending, results, strict=True):
                if not isinstance(replies[-1], int) or replies[-1] < settings.wait_replicas:
                    short.append((i, replies[-1]))
        if not batch.take([replies[0] for replies in results]):
            break
        # A node without the script (restarted, or a replica just promoted):
        # load it on every master, it is one small command each.
        yield LoadEverywhere(batch.load_command)
    done = [(i, n) for i, n in short if i not in batch.pending]
    if done:
        keys = wait_keys or []
        check_wait(settings, min(n for _, n in done) if all(isinstance(n, int) for _, n in done)
                   else next(n for _, n in done if not isinstance(n, int)),
                   lambda: [keys[i] for i, _ in done], f"{batch.name}.lua")


# -- claim.lua ---------------------------------------------------------------------


@dataclass(slots=True)
class Part:
    """One partition's share of a claim: its entries in queue order, under one epoch,
    and the partition's held tables (kvfast.holds), if any."""

    partition: int
    epoch: int
    retaken: bool
    entries: list[bytes]
    holds: dict[str, Hold] = field(default_factory=dict)
    #: Redis time (ms) the holds are due for a retry (None: no holds)
    holds_next: int | None = None


@dataclass(slots=True)
class Claim:
    """What one claim.lua call handed out: one or more partitions, one batch.

    KEYS, one group of five per candidate partition, in the order tried: queue
    ``{ns:p}:q``, in-flight list ``:f``, in-flight meta ``:fm``, epoch ``:e``,
    holds ``:h``.  ARGV: owner, lease (ms), batch size, "1" to take back the
    caller's own in-flight partitions first (its last claim's reply was lost),
    then, on a Redis Cluster, the groups after the first.
    Reply: nil, or ``{n, g1, epoch1, retaken1, count1, nhold1, …, entries of g1 …,
    entries of g2 …, hold fields of g1 (2·nhold1 values) …}``, g the 0-based group.
    """

    name = "claim"
    parts: list[Part]

    @staticmethod
    def call(keys: Keys, order: Sequence[int], owner: str, lease_ms: int,
             batch_size: int, *, recover: bool = False, one_slot: bool = False) -> Call:
        """``one_slot``: declare only the first group as KEYS and pass the others in
        ARGV (a Redis Cluster refuses declared KEYS of several slots)."""
        key_list: list[Any] = []
        for p in order:
            key_list += (keys.queues[p], keys.inflight[p], keys.inflight_meta[p], keys.epochs[p],
                         keys.holds[p])
        args: list[Any] = [owner, lease_ms, batch_size, "1" if recover else "0"]
        if one_slot:
            return key_list[:5], args + key_list[5:]
        return key_list, args

    @classmethod
    def from_reply(cls, reply: Any, order: Sequence[int]) -> Claim | None:
        """The claim in ``reply`` (``order`` is the partitions passed to ``call``)."""
        if not reply:
            return None
        nparts = int(reply[0])
        heads = [[int(x) for x in reply[1 + 5 * i : 6 + 5 * i]] for i in range(nparts)]
        parts: list[Part] = []
        at = 1 + 5 * nparts
        for group, epoch, retaken, count, _ in heads:
            parts.append(Part(order[group], epoch, bool(retaken), reply[at : at + count]))
            at += count
        for part, (*_, nhold) in zip(parts, heads, strict=True):
            if nhold:
                part.holds, part.holds_next = parse_holds(reply[at : at + 2 * nhold])
                at += 2 * nhold
        return cls(parts)

    @property
    def entries(self) -> list[bytes]:
        return [e for part in self.parts for e in part.entries]

    def slices(self) -> list[tuple[int, list[bytes]]]:
        return [(part.partition, part.entries) for part in self.parts]


# -- ack.lua, renew.lua, rebase.lua: the rest of a claim's life ---------------------


@dataclass(slots=True)
class HoldAction:
    """What an ack does to one held list: trim its applied head, append what waits,
    and keep (``doc``) or end (``doc`` empty, once the list is empty) the hold."""

    table: str
    trim: int
    push: list[bytes]
    doc: bytes


class Ack:
    """ack.lua (see its header): KEYS in-flight ``:f``, meta ``:fm``, dead ``:d``,
    counters ``:s``, holds ``:h``, the object hashes whose tombstones to clear, the
    held lists touched, the objects to give their TTL.  Reply 1 = acked, 0 = the
    batch is no longer the caller's."""

    name = "ack"

    @staticmethod
    def call(keys: Keys, partition: int, owner: str, epoch: int, tombstone_field: str,
             applied: int, dead_docs: Sequence[bytes], tomb_keys: Sequence[str],
             tomb_ids: Sequence[str], holds: Sequence[HoldAction] = (),
             holds_retry_ms: int = 0,
             expires: Sequence[tuple[str, int, str]] = ()) -> Call:
        """``expires``: (object hash, ttl in s, the write id it must still carry)."""
        p = partition
        hold_args: list[Any] = []
        for h in holds:
            hold_args += (FIELD_PREFIX + h.table, h.trim, h.doc, len(h.push), *h.push)
        expire_args: list[Any] = []
        for _, ttl, write_id in expires:
            expire_args += (ttl, write_id)
        return (
            [keys.inflight[p], keys.inflight_meta[p], keys.dead[p], keys.counters[p],
             keys.holds[p], *tomb_keys, *(keys.held(p, h.table) for h in holds),
             *(key for key, _, _ in expires)],
            [owner, epoch, tombstone_field, applied, len(dead_docs), len(tomb_keys), len(holds),
             WRITE_FIELD, holds_retry_ms, *dead_docs, *tomb_ids, *hold_args, *expire_args],
        )

    @staticmethod
    def decode(reply: Any) -> bool:
        return int(reply) == 1


class Renew:
    """renew.lua: KEYS meta ``:fm``; ARGV owner, epoch, lease (ms).  Reply 1 = renewed."""

    name = "renew"

    @staticmethod
    def call(keys: Keys, partition: int, owner: str, epoch: int, lease_ms: int) -> Call:
        return [keys.inflight_meta[partition]], [owner, epoch, lease_ms]

    @staticmethod
    def decode(reply: Any) -> bool:
        return int(reply) == 1


class Rebase:
    """rebase.lua: KEYS meta ``:fm``, epoch counter ``:e``; ARGV owner, the batch's epoch,
    PostgreSQL's newest epoch.  Reply: the new epoch, 0 when no longer the caller's."""

    name = "rebase"

    @staticmethod
    def call(keys: Keys, partition: int, owner: str, epoch: int, newest: int) -> Call:
        return ([keys.inflight_meta[partition], keys.epochs[partition]], [owner, epoch, newest])

    @staticmethod
    def decode(reply: Any) -> int:
        return int(reply)


class Requeue:
    """requeue.lua: KEYS dead ``:d``, queue ``:q``, counters ``:s``; ARGV pairs (dead-letter
    document, the entry pushed in its place: ``kvfast.deadletter`` pushes a resync of its
    key).  Reply: the number of documents removed, i.e. entries pushed."""

    name = "requeue"

    @staticmethod
    def call(keys: Keys, partition: int, pairs: Sequence[tuple[bytes, bytes]]) -> Call:
        p = partition
        return ([keys.dead[p], keys.queues[p], keys.counters[p]],
                [x for pair in pairs for x in pair])

    @staticmethod
    def decode(reply: Any) -> int:
        return int(reply)


# -- update.lua, hydrate.lua: the producer's partial writes --------------------------


class Update:
    """update.lua: KEYS object hash, queue ``:q``, the index sets to add the key to;
    ARGV tombstone field, write-id field ("" for a model without a TTL), this write's
    id, the queue entry, n, the key (the index sets' member), n field/value pairs to
    set, the fields set to NULL.
    Reply 1 = applied, 0 = not in Redis (hydrate and retry), -1 = deleted."""

    name = "update"

    @staticmethod
    def call(obj_key: str, queue: str, tombstone_field: str, write_id: str | None,
             entry: bytes, sets: Sequence[tuple[str, Any]], nulls: Sequence[str],
             index_sets: Sequence[bytes] = (), member: str = "") -> Call:
        flat = [x for pair in sets for x in pair]
        return [obj_key, queue, *index_sets], [tombstone_field, WRITE_FIELD if write_id else "",
                                               write_id or "", entry, len(sets), member,
                                               *flat, *nulls]

    @staticmethod
    def decode(reply: Any) -> int:
        return int(reply)


class Hydrate:
    """hydrate.lua: KEYS object hash, the index sets to add the key to; ARGV ttl, the
    key (the sets' member), field/value pairs (the row's non-NULL columns).
    Reply 1 = written, 0 = Redis already had the key."""

    name = "hydrate"

    @staticmethod
    def call(obj_key: str, ttl: int, pairs: Sequence[tuple[str, Any]],
             index_sets: Sequence[bytes] = (), member: str = "") -> Call:
        return [obj_key, *index_sets], [str(ttl), member, *(x for pair in pairs for x in pair)]

    @staticmethod
    def decode(reply: Any) -> int:
        return int(reply)


# -- prune.lua: find's clean-up of stale index members (kvfast.find) ------------------


class Prune:
    """prune.lua: KEYS one index set per condition; ARGV the object hash prefix, the
    tombstone field, the conditions' field names, their values, the stale members.
    Reply: the number of members removed."""

    name = "prune"

    @staticmethod
    def call(obj_prefix: bytes, tombstone_field: str, conditions: Sequence[tuple[str, bytes]],
             sets: Sequence[bytes], members: Sequence[bytes]) -> Call:
        """``conditions``: (field, value); ``sets``: their index sets in the partition."""
        return ([*sets], [obj_prefix, tombstone_field, *(name for name, _ in conditions),
                          *(value for _, value in conditions), *members])

    @staticmethod
    def decode(reply: Any) -> int:
        return int(reply)
