"""One drainer: claim a batch in Redis, apply it to PostgreSQL, ack it. Repeat.

    claim.lua ──▶ decode + collapse ──▶ fence ──▶ COPY + upsert/update/delete ──▶ COMMIT ──▶ ack.lua

One claim gathers up to ``batch_size`` entries from as many free partitions as it
takes (one PostgreSQL transaction, one fence statement, one pipelined ack for
all of them).  A drainer holds at most two claims: the one being applied on its
applier thread and the next, being decoded meanwhile.  A keeper thread renews
the lease of every partition in hand; if a lease is lost anyway (the process was
stopped longer than the lease), the fence row in PostgreSQL rejects the commit
and the ack is refused, so a stale drainer can neither commit nor remove a batch
another drainer now owns.

Connection errors (Redis or PostgreSQL) are retried with capped exponential
backoff; the batch stays in flight and nothing is lost.  Rows PostgreSQL
rejects, and entries that do not decode, go to the partition's dead-letter list
with the reason; the rest of the batch commits.

Over 400 lines on purpose: the loop, its retry points (claim, apply, rebase,
ack) and the stale-partition handling share the claim in hand and the lease
keeper; held tables (``holding``), ack marks (``acks``) and leases (``claims``)
are already out.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from kvfast import deadletters
from kvfast.acks import ack_marks
from kvfast.claims import LeaseKeeper, claim_routed
from kvfast.client import Client, connect_pg
from kvfast.drivers import pg_errors
from kvfast.errors import ConnectionFailed, PostgresQueryError, SchemaMismatch
from kvfast.holding import Prepared, holds_after, prepare
from kvfast.holds import Hold
from kvfast.model import TOMBSTONE_FIELD, registered_models
from kvfast.pgcopy import Applied, Applier, StaleEpoch, StatementTimeout
from kvfast.retry import Backoff, retry
from kvfast.scripts import Ack, Claim, HoldAction, Part, Rebase
from kvfast.settings import Settings

# Backoff lives in kvfast.retry; it stays importable from here.
__all__ = ["Backoff", "BatchReport", "Drainer"]

log = logging.getLogger("kvfast.drainer")

#: what a drainer waits out rather than dies of: every server error is translated
#: (kvfast.drivers) before it reaches these lists
_REDIS_RETRY = (ConnectionFailed,)
#: a refused query that is neither a row's fault (dead-lettered) nor a table's
#: (held): the batch is kept and retried, loudly.  A statement timeout: retried
#: in smaller transactions.
_PG_RETRY = (ConnectionFailed, PostgresQueryError, SchemaMismatch, StatementTimeout)


class _GiveUp(Exception):
    """Raised by a retry's on_retry hook to stop retrying (stop asked, leases all lost)."""
# Lag samples sent per batch: enough for p99 over a few seconds of batches.
_LAG_SAMPLES = 64


@dataclass(slots=True)
class BatchReport:
    partitions: list[int]
    entries: int
    applied: int
    dead: int
    #: every partition still owned at the end was acked
    acked: bool
    #: partitions given up because another drainer took them over (lease lost)
    stale: int
    retaken: bool
    lag_ms: list[float] = field(default_factory=list)
    #: entries that wait in held lists after this batch (kvfast.holds)
    held: int = 0
    #: tables held in this batch's partitions: table → why
    holds: dict[str, str] = field(default_factory=dict)


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


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
        # Start each drainer at a different partition so they do not all fill
        # their batches from the same partitions first (claim() moves it on).
        self._offset = random.randrange(settings.partitions)
        # Set when a claim's reply was lost: the next claim takes this drainer's own
        # in-flight partitions back at once instead of waiting out their lease.
        self._recover = False
        self._keeper = LeaseKeeper(self.client, self.owner, settings.lease_ms)
        self._keeper.start()

    def __enter__(self) -> Drainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            # Before anything is applied: an older drainer must know this one's
            # model versions before any of their values can be in PostgreSQL.
            self._applier.register(registered_models())
        return self._applier

    def _drop_pg(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()
            finally:
                self._pg = None
                self._applier = None

    # -- claim -----------------------------------------------------------------

    def claim(self, *, recover: bool = False) -> Claim | None:
        """Claim a batch (one expired partition, or up to batch_size entries gathered
        from the free partitions); None when every partition is idle or busy.

        ``recover``: first take back any partition this drainer holds in flight
        (call it only with nothing in hand, after a claim whose reply was lost).
        """
        n = self.keys.partitions
        order = [(self._offset + i) % n for i in range(n)]
        if self.client.topology is not None:  # one call per node (kvfast.claims)
            claim, maybe_ran = claim_routed(
                self.client, self.keys, order, self.owner, self.settings.lease_ms,
                self.settings.batch_size, recover=recover)
        else:
            maybe_ran = False
            call = Claim.call(self.keys, order, self.owner, self.settings.lease_ms,
                              self.settings.batch_size, recover=recover)
            try:
                claim = Claim.from_reply(self.client.evalsha(Claim.name, *call), order)
            except ConnectionFailed:
                self._recover = True  # the claim may have run: its partitions are ours
                raise
        if recover and (claim is None or not any(part.retaken for part in claim.parts)):
            self._recover = False
        if maybe_ran:  # a node took the call and its reply was lost
            self._recover = True
        if claim is None:
            return None
        parts = claim.parts
        # Round robin: the next claim starts after the last partition this one
        # took.  Starting one further each time instead let a full batch from the
        # first partitions of the order starve the last ones (drain-lag tail).
        self._offset = (parts[-1].partition + 1) % n
        return claim

    def prepare(self, parts: list[Part]) -> Prepared:
        """The claim's parts decoded into a batch, held tables first (kvfast.holding)."""
        return prepare(self.client, parts)

    # -- process ---------------------------------------------------------------

    def process(self, claim: Claim, prepared: Prepared | None = None) -> BatchReport:
        """Apply and ack one claimed batch, retrying connection errors until done.

        ``prepared`` is the claim already decoded (the pipelined loop decodes the
        next claim while the previous one is being applied).
        """
        self._keeper.track(claim.parts)
        try:
            return self._process(claim, prepared or self.prepare(claim.parts))
        finally:
            self._keeper.untrack(claim.parts)

    def _process(self, claim: Claim, prepared: Prepared) -> BatchReport:
        parts = list(claim.parts)
        total = sum(len(part.entries) for part in claim.parts)
        applied, parts, prepared = self._apply_with_retry(prepared, parts)
        batch = prepared.batch
        retaken = any(part.retaken for part in claim.parts)
        if not parts:
            return BatchReport([p.partition for p in claim.parts], total, 0, 0, False,
                               len(claim.parts), retaken)
        after = holds_after(prepared, applied, parts)
        holds, waiting, unapplied = after.actions, after.waiting, after.unapplied
        docs: dict[int, list[bytes]] = {part.partition: [] for part in parts}
        for raw, reason, p in batch.dead:
            if raw not in waiting:
                docs[p].append(deadletters.document(raw, reason, p, self.owner))
        for op, reason in applied.dead:
            docs[op.partition] += [deadletters.document(raw, reason, op.partition, self.owner)
                                   for raw in op.entries]
        now_us = time.time_ns() // 1000
        drained = {p: prepared.fed.get(p, 0) - len(docs[p]) - unapplied.get(p, 0) for p in docs}
        acked = self._ack_with_retry(prepared, applied, parts, docs, holds, drained)
        ndead = sum(len(d) for d in docs.values())
        lags = batch.write_times
        if len(lags) > _LAG_SAMPLES:
            lags = random.sample(lags, _LAG_SAMPLES)
        reasons = {h.table: h.reason for actions, _ in holds.values() for h, _ in actions
                   if h is not None}
        return BatchReport(
            [p.partition for p in claim.parts],
            total,
            sum(drained.values()),
            ndead,
            acked,
            len(claim.parts) - len(parts),
            retaken,
            [(now_us - t) / 1000 for t in lags],
            held=len(waiting),
            holds=reasons,
        )

    def _drop(self, prepared: Prepared, parts: list[Part],
              gone: set[int]) -> tuple[Prepared, list[Part]]:
        """The batch without the partitions in ``gone`` (taken over by another drainer)."""
        for part in parts:
            if part.partition in gone:
                log.warning("partition %d epoch %d is stale: its share of the batch is left "
                            "to its new owner", part.partition, part.epoch)
        parts = [part for part in parts if part.partition not in gone]
        return self.prepare(parts), parts

    def _apply_with_retry(
        self, prepared: Prepared, parts: list[Part]
    ) -> tuple[Applied, list[Part], Prepared]:
        """Commit the batch; returns (what it did, the partitions still ours, the batch)."""
        split = 1
        # After a statement timeout, what committed stays committed: the next
        # attempt goes on with the ops left, in smaller transactions.
        total = Applied()
        remaining = prepared.batch

        def attempt() -> Applied:
            nonlocal prepared, parts, total, remaining
            while True:
                lost = self._keeper.take_lost(parts)
                if lost:
                    prepared, parts = self._drop(prepared, parts, lost)
                    total, remaining = Applied(), prepared.batch
                if not parts:
                    return Applied()
                epochs = {part.partition: part.epoch for part in parts}
                try:
                    with pg_errors(self.settings):
                        total.add(self._applier_conn().apply(remaining, epochs, split))
                    return total
                except StaleEpoch as exc:
                    gone = self._after_stale(exc, parts)
                    if gone:
                        prepared, parts = self._drop(prepared, parts, gone)
                        total, remaining = Applied(), prepared.batch
                except StatementTimeout as exc:
                    total.add(exc.done)
                    remaining = exc.rest
                    raise

        def describe(exc: BaseException) -> tuple[int, str]:
            if isinstance(exc, ConnectionFailed):
                return logging.WARNING, "PostgreSQL unavailable"
            if isinstance(exc, StatementTimeout):
                return (logging.WARNING,
                        f"statement timeout; applying the rest in {split} transactions")
            return (logging.ERROR,
                    f"batch of partitions {sorted(part.partition for part in parts)} failed")

        def on_retry(exc: BaseException) -> None:
            nonlocal split
            if isinstance(exc, StatementTimeout):
                # Not the data's fault: smaller transactions, after a backoff.
                split = min(split * 4, max(1, prepared.batch.size))
            else:
                self._drop_pg()

        applied = retry(attempt, retry_on=_PG_RETRY, what=describe, log=log, on_retry=on_retry,
                        sleep=self._pause)
        return applied, parts, prepared

    def _after_stale(self, exc: StaleEpoch, parts: list[Part]) -> set[int]:
        """Still the owner in Redis? Then Redis lost its epoch counter (see rebase.lua):
        move past PostgreSQL's epoch and retry.  Otherwise another drainer owns that
        partition now: returned, to be left to that one."""
        gone: set[int] = set()
        for part in parts:
            if part.partition not in exc.stale:
                continue
            newest = exc.stale[part.partition][1]
            new_epoch = self._rebase(part, newest)
            if not new_epoch:
                gone.add(part.partition)
                continue
            log.warning("partition %d: epoch %d behind PostgreSQL's %d (Redis was "
                        "reset?); continuing with epoch %d", part.partition, part.epoch,
                        newest, new_epoch)
            part.epoch = new_epoch
        return gone

    def _rebase(self, part: Part, newest: int) -> int:
        call = Rebase.call(self.keys, part.partition, self.owner, part.epoch, newest)
        return retry(lambda: Rebase.decode(self.client.evalsha(Rebase.name, *call)),
                     sleep=self._pause,
                     retry_on=_REDIS_RETRY, what="Redis unavailable", log=log)

    def _ack_with_retry(self, prepared: Prepared, applied: Applied, parts: list[Part],
                        docs: dict[int, list[bytes]],
                        holds: dict[int, tuple[list[tuple[Hold | None, HoldAction]], int]],
                        drained: dict[int, int]) -> bool:
        """Ack every partition of the batch, one ack.lua call each, in one round trip."""
        keys = self.keys
        tombs, expires = ack_marks(keys, prepared.batch, applied, [p.partition for p in parts])

        def attempt() -> bool:
            calls = []
            for part in parts:
                p = part.partition
                actions, delay = holds.get(p, ([], 0))
                calls.append(Ack.call(keys, p, self.owner, part.epoch, TOMBSTONE_FIELD,
                                      drained[p], docs[p], *tombs[p],
                                      [a for _, a in actions], delay, expires[p]))
            return all(Ack.decode(r) for r in self.client.eval_many(Ack.name, calls))

        def forget_lost(exc: BaseException) -> None:
            # Committed but not acked: if the lease runs out meanwhile, the next
            # owner re-applies the batch, which is harmless (upserts, fenced).
            nonlocal parts
            lost = self._keeper.take_lost(parts)
            if lost:
                parts = [part for part in parts if part.partition not in lost]
                if not parts:
                    raise _GiveUp from exc

        try:
            return retry(attempt, retry_on=_REDIS_RETRY, what="ack failed", log=log,
                         sleep=self._pause,
                         on_retry=forget_lost)
        except _GiveUp:
            return False

    # -- loop ------------------------------------------------------------------

    def run(self, on_batch: Callable[[BatchReport], None] | None = None) -> None:
        """Drain until ``should_stop()``; the batches in hand are always finished first.

        Two batches overlap: while one is applied and acked on the applier
        thread (mostly waiting for PostgreSQL, GIL released), this thread claims
        and decodes the next.  Their partitions are disjoint (a partition stays
        claimed until its ack), so the order of writes to a key is unchanged.
        """
        interval = self.settings.drain_interval_ms / 1000
        pending: Future[BatchReport] | None = None

        def finish() -> None:
            nonlocal pending
            if pending is not None:
                report = pending.result()
                pending = None
                if on_batch is not None:
                    on_batch(report)

        def claim_next() -> Claim | None:
            # Taking back our own partitions is only safe with none in hand.
            return self.claim(recover=self._recover and pending is None)

        def claim_failed(exc: BaseException) -> None:
            finish()  # the batch in hand is acked (retrying) before a recovering claim
            self._stop_if_asked(exc)

        with ThreadPoolExecutor(1, thread_name_prefix="kvfast-apply") as pool:
            try:
                while not self.should_stop():
                    try:
                        claim = retry(claim_next, retry_on=_REDIS_RETRY, sleep=self._pause,
                                      what="Redis unavailable", log=log, on_retry=claim_failed)
                    except _GiveUp:
                        break
                    if claim is None:
                        if pending is not None:
                            finish()  # its partitions may have more: claim again at once
                        else:
                            time.sleep(interval)
                        continue
                    # Tracked from here: the lease must not run out while queued.
                    self._keeper.track(claim.parts)
                    prepared = retry(functools.partial(self.prepare, claim.parts),
                                     sleep=self._pause,
                                     retry_on=_REDIS_RETRY, what="Redis unavailable", log=log)
                    finish()
                    pending = pool.submit(self.process, claim, prepared)
            finally:
                finish()

    def _pause(self, delay: float) -> None:
        """A backoff wait that ends early when a stop is asked: a drainer waiting
        for a server with nothing in hand exits at once on SIGTERM, one with a
        batch tries to finish it sooner (the supervisor kills it a lease later)."""
        end = time.monotonic() + delay
        while not self.should_stop():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.05, left))

    def _stop_if_asked(self, exc: BaseException) -> None:
        if self.should_stop():
            raise _GiveUp from exc

    def drain_until_empty(self, max_idle_polls: int = 2) -> int:
        """Drain in this process until nothing is queued or in flight (tests, tools)."""
        total = 0
        idle = 0
        while idle < max_idle_polls:
            claim = self.claim(recover=self._recover)
            if claim is None:
                queued, inflight, _ = self.client.backlog()
                if queued == 0 and inflight == 0:
                    idle += 1
                time.sleep(self.settings.drain_interval_ms / 1000)
                continue
            idle = 0
            total += self.process(claim).entries
        return total
