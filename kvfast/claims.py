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

from kvfast.retry import Backoff
from kvfast.scripts import Claim, Part, Renew

if TYPE_CHECKING:
    from kvfast.client import Client

# Claim and Part (claim.lua's reply) live in kvfast.scripts; they stay importable here.
__all__ = ["Claim", "LeaseKeeper", "Part"]

log = logging.getLogger("kvfast.drainer")


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
        keys = self.client.keys
        # After a failed renewal, try again sooner than the interval (capped by it):
        # the lease has at most two intervals left.
        backoff = Backoff(cap=interval)
        wait = interval
        while not self._closed.wait(wait):
            wait = interval
            with self._lock:
                held = list(self._held.values())
            if not held:
                continue
            calls = [Renew.call(keys, part.partition, self.owner, part.epoch, self.lease_ms)
                     for part in held]
            try:
                replies = self.client.eval_many(Renew.name, calls)
            except Exception as exc:
                # This thread must outlive any error (translated or not): a dead
                # keeper would let every later lease of this drainer expire under it.
                wait = backoff.next_delay()
                log.warning("lease renewal failed (will retry): %s", exc)
                continue
            backoff.reset()
            for part, reply in zip(held, replies, strict=True):
                if Renew.decode(reply):
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
