"""The index sets of models with a TTL: members whose objects expired, pruned in the
background by the supervisor.

An object of a TTL'd model leaves Redis when its TTL runs out (once its writes
have drained) but stays a member of its index sets.  ``find`` drops such members
as it reads them (prune.lua), so the set of a value nobody looks up again would
keep them forever: a rider's set would hold every request the rider ever made.
The supervisor walks these models' index sets, a few sets per tick of its loop,
and hands each set's members to the same prune.lua, which re-checks every member
against its object in one atomic step (a write that brought the key back keeps
it) and removes the stale ones (moved, deleted, expired).  Redis deletes a set
whose last member is removed.  A set then holds its live members and those that
expired since the last pass (``SWEEP_INTERVAL_S``).

Why not a TTL on the sets (a set outliving its newest member): an object has no
TTL until its writes drain (Redis holds the only copy until then), so a set's
expiry would have to be held off while any of its members is pending and pushed
back at every ack: a count of pending members per set, kept in step with every
write, ack, retry and requeue.  A pass over the sets needs no such bookkeeping,
and one pruned by mistake costs nothing: ``find`` reads a key that is no member
from PostgreSQL and checks it in Redis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from kvfast.drivers import redis_errors
from kvfast.model import TOMBSTONE_FIELD
from kvfast.scripts import Prune

if TYPE_CHECKING:
    from kvfast.client import Client
    from kvfast.model import ModelInfo

__all__ = ["SWEEP_INTERVAL_S", "IndexSweeper"]

#: seconds between the starts of two passes over the sets
SWEEP_INTERVAL_S = 60.0
#: sets looked at per step (one step per supervisor tick, 0.1 s)
SETS_PER_STEP = 50
#: members checked per prune.lua call (SSCAN's COUNT)
MEMBERS_PER_CALL = 500


class IndexSweeper:
    """Passes over the index sets of ``models`` that have a TTL (module docstring)."""

    def __init__(self, client: Client, models: Sequence[ModelInfo]) -> None:
        self.client = client
        self.models = [m for m in models if m.ttl and m.indexes]
        self._pass: Iterator[int] | None = None
        #: members removed by the passes so far
        self.removed = 0

    def step(self, sets: int = SETS_PER_STEP) -> bool:
        """Sweep up to ``sets`` sets; True when that finished a pass (the next
        ``step`` starts another).  A Redis error ends the pass (and is raised)."""
        if self._pass is None:
            self._pass = self._walk()
        for _ in range(sets):
            try:
                removed = next(self._pass, None)
            except BaseException:
                self._pass = None
                raise
            if removed is None:
                self._pass = None
                return True
            self.removed += removed
        return False

    def sweep(self) -> int:
        """One whole pass now; the members it removed."""
        before = self.removed
        self._pass = None
        while not self.step():
            pass
        return self.removed - before

    def _walk(self) -> Iterator[int]:
        """Each set of the pass in turn: the members pruned from it."""
        client = self.client
        keys = client.keys
        for info in self.models:
            with redis_errors(client.settings):
                client.check_partitions()
                names = client.redis.scan_iter(match=keys.table_pattern("x", info.table),
                                               count=1000)
            while True:
                with redis_errors(client.settings):
                    name = next(names, None)
                if name is None:
                    break
                yield self._prune_set(info, bytes(name))

    def _prune_set(self, info: ModelInfo, name: bytes) -> int:
        keys = self.client.keys
        p = keys.partition_in(name)
        for field in info.indexes:
            prefix = keys.index_prefix(p, info.table, field)
            if name.startswith(prefix):
                break
        else:
            return 0  # a field no longer indexed: reindex deletes its sets
        condition = [(field, name[len(prefix):])]
        obj_prefix = keys.obj(p, info.table, "").encode()
        removed = 0
        with redis_errors(self.client.settings):
            cursor = 0
            while True:
                cursor, members = self.client.redis.sscan(name, cursor, count=MEMBERS_PER_CALL)
                if members:
                    (reply,) = self.client.eval_many(Prune.name, [Prune.call(
                        obj_prefix, TOMBSTONE_FIELD, condition, [name],
                        [bytes(m) for m in members])])  # type: ignore[arg-type]
                    removed += Prune.decode(reply)
                if not cursor:
                    return removed
