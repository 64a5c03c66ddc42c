"""What a drainer holds: claims (one or more partitions' shares) and their leases.

A claim is what one ``claim.lua`` call handed out.  Each partition in it has its
own epoch and lease; the ``LeaseKeeper`` thread of a drainer renews every lease
in hand every lease/3 (while the batch is decoded, applied, or waiting for
PostgreSQL to come back) and reports the partitions another drainer took over.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from kvfast.errors import ConnectionFailed, KvfastError

if TYPE_CHECKING:
    from kvfast.client import Client

__all__ = ["REDIS_ERRORS", "Claim", "LeaseKeeper", "Part"]

log = logging.getLogger("kvfast.drainer")

#: Redis errors a drainer retries (with backoff) rather than dies of
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionFailed, OSError)


@dataclass(slots=True)
class Part:
    """One partition's share of a claim: its entries in queue order, under one epoch."""

    partition: int
    epoch: int
    retaken: bool
    entries: list[bytes]


@dataclass(slots=True)
class Claim:
    """What one claim.lua call handed out: one or more partitions, one batch."""

    parts: list[Part]

    @property
    def entries(self) -> list[bytes]:
        return [e for part in self.parts for e in part.entries]

    def slices(self) -> list[tuple[int, list[bytes]]]:
        return [(part.partition, part.entries) for part in self.parts]


class LeaseKeeper(threading.Thread):
    """One per drainer: renews the lease of every partition in hand every lease/3.

    A drainer holds up to two claims (one applying, the next being decoded), so
    the keeper tracks partitions, not a batch.  A renewal refused because the
    partition was taken over (the process was stopped past its lease) marks it
    lost; the drainer drops it from its batch (``take_lost``).
    """

    def __init__(self, client: Client, owner: str, lease_ms: int) -> None:
        super().__init__(name="kvfast-lease", daemon=True)
        self.client = client
        self.owner = owner
        self.lease_ms = lease_ms
        self._lock = threading.Lock()
        self._held: dict[int, Part] = {}
        self._lost: set[int] = set()
        self._closed = threading.Event()

    def track(self, parts: list[Part]) -> None:
        with self._lock:
            for part in parts:
                self._held[part.partition] = part
                self._lost.discard(part.partition)

    def untrack(self, parts: list[Part]) -> None:
        with self._lock:
            for part in parts:
                if self._held.get(part.partition) is part:
                    del self._held[part.partition]

    def take_lost(self, parts: list[Part]) -> set[int]:
        """The partitions of ``parts`` whose lease was lost (forgotten once told)."""
        with self._lock:
            lost = {part.partition for part in parts} & self._lost
            self._lost -= lost
            return lost

    def run(self) -> None:
        interval = self.lease_ms / 3000
        meta = self.client.keys.inflight_meta
        while not self._closed.wait(interval):
            with self._lock:
                held = list(self._held.values())
            if not held:
                continue
            calls = [([meta[part.partition]], [self.owner, part.epoch, self.lease_ms])
                     for part in held]
            try:
                replies = self.client.eval_many("renew", calls)
            except (*REDIS_ERRORS, KvfastError) as exc:
                # This thread must outlive any error: a dead keeper would let every
                # later lease of this drainer expire under it.
                log.warning("lease renewal failed (will retry): %s", exc)
                continue
            for part, ok in zip(held, replies, strict=True):
                if ok == 1:
                    continue
                with self._lock:
                    if self._held.get(part.partition) is not part:
                        continue  # acked meanwhile: nothing was lost
                    del self._held[part.partition]
                    self._lost.add(part.partition)
                log.warning("lost the lease of partition %d", part.partition)

    def close(self) -> None:
        self._closed.set()
        if self.is_alive():
            self.join()
