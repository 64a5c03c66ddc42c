"""One drainer: claim a batch in Redis, apply it to PostgreSQL, ack it. Repeat.

    claim.lua ──▶ decode + collapse ──▶ COPY + upsert/update/delete ──▶ fence ──▶ COMMIT ──▶ ack.lua

A drainer owns at most one batch at a time.  While it works on it (or waits for
PostgreSQL to come back) a keeper thread renews the batch's lease; if the lease
is lost anyway (the process was stopped longer than the lease), the fence row
in PostgreSQL rejects the commit and the ack is refused, so a stale drainer can
neither commit nor remove the batch another drainer now owns.

Connection errors (Redis or PostgreSQL) are retried with capped exponential
backoff; the batch stays in flight and nothing is lost.  Rows PostgreSQL
rejects, and entries that do not decode, go to the partition's dead-letter list
with the reason; the rest of the batch commits.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import redis

from kvfast.batch import Batch, build_batch
from kvfast.client import Client, connect_pg
from kvfast.errors import ConnectionFailed, KvfastError
from kvfast.model import TOMBSTONE_FIELD
from kvfast.pgcopy import Applier, StaleEpoch
from kvfast.settings import Settings

__all__ = ["Backoff", "BatchReport", "Claim", "Drainer"]

log = logging.getLogger("kvfast.drainer")

_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionFailed, OSError)
_PG_RETRY_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, ConnectionFailed)
# Lag samples sent per batch: enough for p99 over a few seconds of batches.
_LAG_SAMPLES = 64


@dataclass(slots=True)
class Claim:
    partition: int
    epoch: int
    retaken: bool
    entries: list[bytes]


@dataclass(slots=True)
class BatchReport:
    partition: int
    entries: int
    applied: int
    dead: int
    acked: bool
    stale: bool
    retaken: bool
    lag_ms: list[float] = field(default_factory=list)


class Backoff:
    """Capped exponential backoff with jitter: 50 ms, 100 ms, … up to ``cap`` s."""

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * float(2**self.attempt))
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class _LeaseKeeper(threading.Thread):
    """One per drainer: renews the lease of the batch in hand every lease/3.

    ``track`` returns an Event set when renewal finds the batch is no longer
    ours (the process was stopped past its lease and another drainer took it).
    """

    def __init__(self, drainer: Drainer) -> None:
        super().__init__(name="kvfast-lease", daemon=True)
        self.drainer = drainer
        self._lock = threading.Lock()
        self._claim: Claim | None = None
        self._lost = threading.Event()
        self._closed = threading.Event()

    def track(self, claim: Claim) -> threading.Event:
        with self._lock:
            self._claim = claim
            self._lost = threading.Event()
            return self._lost

    def untrack(self) -> None:
        with self._lock:
            self._claim = None

    def run(self) -> None:
        d = self.drainer
        interval = d.settings.lease_ms / 3000
        while not self._closed.wait(interval):
            with self._lock:
                claim, lost = self._claim, self._lost
            if claim is None:
                continue
            meta = d.keys.inflight_meta[claim.partition]
            try:
                ok = d.client.evalsha("renew", [meta], [d.owner, claim.epoch, d.settings.lease_ms])
            except (*_REDIS_ERRORS, KvfastError) as exc:
                # This thread must outlive any error: a dead keeper would let every
                # later lease of this drainer expire under it.
                log.warning("lease renewal failed (will retry): %s", exc)
                continue
            if not ok:
                with self._lock:
                    if self._claim is not claim:
                        continue  # acked meanwhile: nothing was lost
                    self._claim = None
                log.warning("lost the lease of partition %d", claim.partition)
                lost.set()

    def close(self) -> None:
        self._closed.set()
        if self.is_alive():
            self.join()


class Drainer:
    """Drains batches from every partition of one namespace into PostgreSQL."""

    def __init__(
        self,
        settings: Settings,
        *,
        owner: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.owner = owner or new_owner_id()
        self.should_stop = should_stop
        self.client = Client(settings)
        self.keys = self.client.keys
        self._pg: psycopg.Connection[Any] | None = None
        self._applier: Applier | None = None
        # Start each drainer at a different partition so they do not all queue
        # up behind the same LMPOP key order.
        self._offset = random.randrange(settings.partitions)
        self._keeper = _LeaseKeeper(self)
        self._keeper.start()

    def close(self) -> None:
        self._keeper.close()
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        self.client.close()

    # -- connections -----------------------------------------------------------

    def _applier_conn(self) -> Applier:
        if self._pg is None or self._pg.closed or self._pg.broken or self._applier is None:
            if self._pg is not None:
                self._pg.close()
            self._pg = connect_pg(self.settings, autocommit=False)
            # A drainer stopped mid-transaction must not hold the partition's
            # fence row forever: the server ends such a session after a while.
            idle_ms = max(self.settings.lease_ms * 2, 10_000)
            self._pg.execute(f"SET idle_in_transaction_session_timeout = {int(idle_ms)}")
            # The staging tables have no statistics and prepared statements keep
            # plans made when the tables were small: without these, UPDATE … FROM
            # and DELETE … USING chose hash joins over sequential scans of the
            # whole target table (auto_explain, bench/test_3_drain.py).  A batch
            # is at most a few thousand keys: primary-key lookups are the plan.
            self._pg.execute("SET enable_hashjoin = off")
            self._pg.execute("SET enable_mergejoin = off")
            self._pg.commit()
            self._applier = Applier(self._pg, self.settings.namespace, self.owner)
        return self._applier

    def _drop_pg(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()
            finally:
                self._pg = None
                self._applier = None

    # -- claim -----------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Claim one batch (or an expired one) from any partition; None when idle."""
        keys = self.keys
        n = keys.partitions
        order = [(self._offset + i) % n for i in range(n)]
        self._offset = (self._offset + 1) % n
        key_list: list[str] = []
        for p in order:
            key_list += (keys.queues[p], keys.inflight[p], keys.inflight_meta[p], keys.epochs[p])
        args = [self.owner, self.settings.lease_ms, self.settings.batch_size]
        reply = self.client.evalsha("claim", key_list, args)
        if not reply:
            return None
        group, epoch, retaken = int(reply[0]), int(reply[1]), bool(reply[2])
        return Claim(order[group], epoch, retaken, list(reply[3:]))

    # -- process ---------------------------------------------------------------

    def process(self, claim: Claim) -> BatchReport:
        """Apply and ack one claimed batch, retrying connection errors until done."""
        batch = build_batch(claim.entries)
        lost = self._keeper.track(claim)
        try:
            dead, stale = self._apply_with_retry(batch, claim, lost)
            if stale:
                return BatchReport(claim.partition, len(claim.entries), 0, 0, False, True,
                                   claim.retaken)
            dead_docs = [self._dead_doc(raw, reason, claim.partition) for raw, reason in batch.dead]
            for op, reason in dead:
                dead_docs += [self._dead_doc(raw, reason, claim.partition) for raw in op.entries]
            now_us = time.time_ns() // 1000
            acked = self._ack_with_retry(batch, claim, dead_docs, lost)
        finally:
            self._keeper.untrack()
        lags = batch.write_times
        if len(lags) > _LAG_SAMPLES:
            lags = random.sample(lags, _LAG_SAMPLES)
        return BatchReport(
            claim.partition,
            len(claim.entries),
            len(claim.entries) - len(dead_docs),
            len(dead_docs),
            acked,
            False,
            claim.retaken,
            [(now_us - t) / 1000 for t in lags],
        )

    def _apply_with_retry(
        self, batch: Batch, claim: Claim, lost: threading.Event
    ) -> tuple[list[Any], bool]:
        backoff = Backoff()
        while True:
            if lost.is_set():
                return [], True
            try:
                applier = self._applier_conn()
                return applier.apply(batch, claim.partition, claim.epoch), False
            except StaleEpoch as exc:
                # Still the owner in Redis? Then Redis lost its epoch counter (see
                # rebase.lua): move past PostgreSQL's epoch and retry.  Otherwise
                # another drainer owns the batch now: leave it to that one.
                new_epoch = self._rebase(claim, exc.newest)
                if not new_epoch:
                    log.warning("partition %d epoch %d is stale: batch left to its new owner",
                                claim.partition, claim.epoch)
                    return [], True
                log.warning("partition %d: epoch %d behind PostgreSQL's %d (Redis was reset?); "
                            "continuing with epoch %d", claim.partition, claim.epoch, exc.newest,
                            new_epoch)
                claim.epoch = new_epoch
            except _PG_RETRY_ERRORS as exc:
                self._drop_pg()
                delay = backoff.next_delay()
                log.warning("PostgreSQL unavailable (%s); retrying in %.2fs", _first_line(exc),
                            delay)
                time.sleep(delay)
            except psycopg.Error as exc:
                # Not a row's fault (those are dead-lettered) nor the connection's:
                # a schema problem, say.  Keep the batch, say so loudly, retry.
                self._drop_pg()
                delay = backoff.next_delay()
                log.error("batch of partition %d failed (%s); retrying in %.2fs",
                          claim.partition, _first_line(exc), delay)
                time.sleep(delay)

    def _rebase(self, claim: Claim, newest: int) -> int:
        keys = self.keys
        backoff = Backoff()
        while True:
            try:
                return int(self.client.evalsha(
                    "rebase",
                    [keys.inflight_meta[claim.partition], keys.epochs[claim.partition]],
                    [self.owner, claim.epoch, newest],
                ))
            except _REDIS_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("Redis unavailable (%s); retrying in %.2fs", _first_line(exc), delay)
                time.sleep(delay)

    def _ack_with_retry(
        self, batch: Batch, claim: Claim, dead_docs: list[bytes], lost: threading.Event
    ) -> bool:
        keys = self.keys
        p = claim.partition
        tomb_keys: list[str] = []
        tomb_ids: list[str] = []
        for info, key_str, tomb_id in batch.tombstones:
            if info.partition_of(key_str, keys.partitions) == p:
                tomb_keys.append(keys.obj(p, info.table, key_str))
                tomb_ids.append(tomb_id)
        applied = len(claim.entries) - len(dead_docs)
        key_list = [keys.inflight[p], keys.inflight_meta[p], keys.dead[p], keys.counters[p],
                    *tomb_keys]
        args: list[Any] = [self.owner, claim.epoch, TOMBSTONE_FIELD, applied, len(dead_docs),
                           *dead_docs, *tomb_ids]
        backoff = Backoff()
        while True:
            try:
                return bool(self.client.evalsha("ack", key_list, args))
            except _REDIS_ERRORS as exc:
                # Committed but not acked: if the lease runs out meanwhile, the next
                # owner re-applies the batch, which is harmless (upserts, fenced).
                delay = backoff.next_delay()
                log.warning("ack failed (%s); retrying in %.2fs", _first_line(exc), delay)
                time.sleep(delay)
                if lost.is_set():
                    return False

    def _dead_doc(self, raw: bytes, reason: str, partition: int) -> bytes:
        doc: dict[str, Any] = {"error": reason, "partition": partition,
                               "time": time.time(), "drainer": self.owner}
        try:
            doc["entry"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            doc["entry_b64"] = base64.b64encode(raw).decode("ascii")
        return orjson.dumps(doc)

    # -- loop ------------------------------------------------------------------

    def run(self, on_batch: Callable[[BatchReport], None] | None = None) -> None:
        """Drain until ``should_stop()``; the batch in hand is always finished first."""
        interval = self.settings.drain_interval_ms / 1000
        backoff = Backoff()
        while not self.should_stop():
            try:
                claim = self.claim()
            except _REDIS_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("Redis unavailable (%s); retrying in %.2fs", _first_line(exc), delay)
                time.sleep(delay)
                continue
            backoff.reset()
            if claim is None:
                time.sleep(interval)
                continue
            report = self.process(claim)
            if on_batch is not None:
                on_batch(report)
            # No sleep after a batch, full or not: other partitions may have work,
            # and the next claim says so (it returns None when all are idle).

    def drain_until_empty(self, max_idle_polls: int = 2) -> int:
        """Drain in this process until nothing is queued or in flight (tests, tools)."""
        total = 0
        idle = 0
        while idle < max_idle_polls:
            claim = self.claim()
            if claim is None:
                queued, inflight, _ = self.client.backlog()
                if queued == 0 and inflight == 0:
                    idle += 1
                time.sleep(self.settings.drain_interval_ms / 1000)
                continue
            idle = 0
            total += self.process(claim).entries
        return total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
