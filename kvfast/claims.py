"""What a drainer holds: claims (one or more partitions' shares) and their leases.

A claim is what one ``claim.lua`` call handed out.  Each partition in it has its
own epoch and lease; the ``LeaseKeeper`` thread of a drainer renews every lease
in hand every lease/3 (while the batch is decoded, applied, or waiting for
PostgreSQL to come back) and reports the partitions another drainer took over.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from kvfast.cluster import redirected
from kvfast.errors import RedisCommandError, WriteOutcomeUnknown
from kvfast.keys import Keys
from kvfast.resp import REPLY_ERRORS, pack
from kvfast.retry import Backoff
from kvfast.scripts import Claim, Part, Renew, pack_eval, source

if TYPE_CHECKING:
    from redis import ConnectionPool

    from kvfast.client import Client

# Claim and Part (claim.lua's reply) live in kvfast.scripts; they stay importable here.
__all__ = ["Claim", "LeaseKeeper", "Part", "claim_routed"]

log = logging.getLogger("kvfast.drainer")


#: script errors of a slot that moved while a claim was routed to its old node
_SCRIPT_MOVED = ("non local key", "cluster is down")


def claim_routed(client: Client, keys: Keys, order: list[int], owner: str, lease_ms: int,
                 batch_size: int, *, recover: bool = False) -> tuple[Claim | None, bool]:
    """A claim on a Redis Cluster: one claim.lua call per node, over the partitions
    that node serves (in ``order``), all nodes in one round trip; the parts of
    every node's reply make one claim.  Returns (the claim, whether a node may
    have run its call without its reply arriving: the caller recovers then).

    Each node's call fills up to its share of ``batch_size``, so a claim stays
    within it however many nodes answer.  A node whose reply is a redirection
    (its slots moved) or that cannot be reached gives nothing this time; the
    slot map is refreshed for the next claim.
    """
    topology = client.topology
    assert topology is not None
    groups: dict[int, tuple[ConnectionPool, list[int]]] = {}
    for p in order:
        pool = topology.pool_of_slot(topology.partition_slots[p])
        groups.setdefault(id(pool), (pool, []))[1].append(p)
    share = -(-batch_size // max(1, len(groups)))
    calls = [(pool, part_order, Claim.call(keys, part_order, owner, lease_ms, share,
                                           recover=recover, one_slot=True))
             for pool, part_order in groups.values()]
    parts: list[Part] = []
    maybe_ran = refresh = False
    for attempt in range(2):  # the second round only loads the script where it was missing
        jobs = [(pool, pack_eval(Claim.name, *call), 1) for pool, _, call in calls]
        results = client.send_many(jobs)
        missing = []
        for (pool, part_order, call), result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                maybe_ran = maybe_ran or isinstance(result, WriteOutcomeUnknown)
                refresh = True
                log.warning("claim on a cluster node failed (%s); its partitions wait", result)
                continue
            reply = result[0]
            if isinstance(reply, REPLY_ERRORS):
                if str(reply).startswith("NOSCRIPT") and attempt == 0:
                    missing.append((pool, part_order, call))
                elif redirected([reply]):
                    refresh = True
                elif any(m in str(reply) for m in _SCRIPT_MOVED):
                    # a slot moved under the call after Redis let it start: the
                    # groups before it may be leased, so take them back next time
                    refresh = maybe_ran = True
                else:
                    raise RedisCommandError(f"Redis refused claim.lua: {reply}") from reply
                continue
            claim = Claim.from_reply(reply, part_order)
            if claim is not None:
                parts += claim.parts
        if not missing:
            break
        load = pack(("SCRIPT", "LOAD", source(Claim.name)))
        client.send_many([(pool, load, 1) for pool, _, _ in missing])
        calls = missing
    if refresh:
        topology.refresh()
    return (Claim(parts) if parts else None), maybe_ran


class LeaseKeeper(threading.Thread):
    """One per drainer: renews the lease of every partition in hand every lease/3.

    A drainer holds up to two claims (one applying, the next being decoded), so
    the keeper tracks partitions, not a batch.  A renewal refused because the
    partition was taken over (the process was stopped past its lease) marks it
    lost; the drainer drops it from its batch (``take_lost``).  A renewal refused
    because the batch was acked meanwhile is no loss (``renew_once``).
    """

    def __init__(self, client: Client, owner: str, lease_ms: int) -> None:
        super().__init__(name="kvfast-lease", daemon=True)
        self.client = client
        self.owner = owner
        self.lease_ms = lease_ms
        self._lock = threading.Lock()
        self._held: dict[int, Part] = {}
        self._lost: set[int] = set()
        #: refused at the last renewal, not yet known to be lost (see renew_once)
        self._refused: dict[int, Part] = {}
        self._closed = threading.Event()

    def track(self, parts: list[Part]) -> None:
        with self._lock:
            for part in parts:
                self._held[part.partition] = part
                self._lost.discard(part.partition)
                self._refused.pop(part.partition, None)

    def untrack(self, parts: list[Part]) -> None:
        with self._lock:
            for part in parts:
                if self._held.get(part.partition) is part:
                    del self._held[part.partition]
                if self._refused.get(part.partition) is part:
                    del self._refused[part.partition]  # acked: the refusal lost nothing

    def take_lost(self, parts: list[Part]) -> set[int]:
        """The partitions of ``parts`` whose lease was lost (forgotten once told).

        The drainer asks before it applies or re-acks a batch, i.e. while the
        batch is not acked: a refused renewal of one of its partitions is a loss.
        """
        with self._lock:
            for part in parts:
                if self._refused.get(part.partition) is part:
                    self._declare_lost(part)
            lost = {part.partition for part in parts} & self._lost
            self._lost -= lost
            return lost

    def _declare_lost(self, part: Part) -> None:
        # Under self._lock.
        del self._refused[part.partition]
        if self._held.get(part.partition) is part:
            del self._held[part.partition]
        self._lost.add(part.partition)
        log.warning("lost the lease of partition %d", part.partition)

    def run(self) -> None:
        interval = self.lease_ms / 3000
        # After a failed renewal, try again sooner than the interval (capped by it):
        # the lease has at most two intervals left.
        backoff = Backoff(cap=interval)
        wait = interval
        while not self._closed.wait(wait):
            wait = interval
            try:
                self.renew_once()
            except Exception as exc:
                # This thread must outlive any error (translated or not): a dead
                # keeper would let every later lease of this drainer expire under it.
                wait = backoff.next_delay()
                log.warning("lease renewal failed (will retry): %s", exc)
                continue
            backoff.reset()

    def renew_once(self) -> None:
        """Renew every lease in hand, in one round trip.

        A renewal refused because the batch was just acked (the ack ran between
        this round's snapshot and the drainer's ``untrack``) is not a loss, and the
        keeper cannot tell it from a takeover by itself: a refused partition is
        only *suspect* until the drainer untracks it (acked: nothing lost), asks
        ``take_lost`` (not acked: lost), or it is still held at the next round.
        """
        keys = self.client.keys
        with self._lock:
            # Refused last round and still neither acked nor asked about: lost.
            for part in list(self._refused.values()):
                self._declare_lost(part)
            held = list(self._held.values())
        if not held:
            return
        calls = [Renew.call(keys, part.partition, self.owner, part.epoch, self.lease_ms)
                 for part in held]
        replies = self.client.eval_many(Renew.name, calls)
        for part, reply in zip(held, replies, strict=True):
            if Renew.decode(reply):
                continue
            with self._lock:
                if self._held.get(part.partition) is part:
                    self._refused[part.partition] = part

    def close(self) -> None:
        self._closed.set()
        if self.is_alive():
            self.join()
