"""``Repository[Model]``: typed create / update / delete / get over one model.

Writes go to Redis only (the drainers move them to PostgreSQL).  Reads come from
Redis; a miss falls back to PostgreSQL when a DSN is configured, except for a
key deleted in Redis whose delete has not drained yet (its tombstone answers
"missing", so the old row is never resurrected).

``create`` of a key that already exists *replaces* the whole object, in Redis
(DEL + HSET) and in PostgreSQL (INSERT … ON CONFLICT DO UPDATE of every column):
the two stores never diverge.  ``update`` of a key that exists in neither store
(or is deleted) raises ``NotFound``.

The plans (validation, hydration, decoding) are ``kvfast.core``'s, shared with
``kvfast.aio.AsyncRepository``; this class performs their I/O with blocking calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

from kvfast.client import Client
from kvfast.cluster import Unit
from kvfast.core import Eval, Plan, ReadHashes, RepositoryCore
from kvfast.drivers import pg_errors, redis_errors
from kvfast.find import Commands, FindPlan, FindStep, Overlapped, SelectWhere, find_plan
from kvfast.model import model_info
from kvfast.pgpending import PendingQuery
from kvfast.producer import Producer
from kvfast.resp import pack
from kvfast.schema import select_rows
from kvfast.settings import Settings

__all__ = ["Repository"]

M = TypeVar("M")
T = TypeVar("T")


class Repository(Generic[M]):
    """Typed access to the objects of one model.

    ``Repository(Booking)`` reads its settings from the environment;
    pass ``settings=`` or share one ``client=`` between repositories.
    """

    def __init__(
        self,
        model: type[M],
        settings: Settings | None = None,
        *,
        client: Client | None = None,
    ) -> None:
        self.info = model_info(model)
        self.model = model
        self._own_client = client is None
        self.client = client if client is not None else Client(settings)
        self.producer = Producer(self.client, self.info)
        self.core: RepositoryCore[M] = RepositoryCore(self.info, self.producer,
                                                      self.client.has_pg)

    def __repr__(self) -> str:
        return f"<Repository {self.info.name} {self.client.settings!r}>"

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Repository[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------

    def create(self, obj: M) -> None:
        """Store ``obj`` (replacing any object with its key) and queue it for PostgreSQL."""
        self.producer.create((obj,))

    def create_many(self, objs: Iterable[M]) -> int:
        """Store many objects in one round trip; all or nothing. Returns the count."""
        return self.producer.create(objs)

    def update(self, key: Any, **fields: Any) -> None:
        """Set some fields of an existing object (``None`` sets NULL)."""
        self.update_many([(key, fields)])

    def update_many(
        self, changes: Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]]
    ) -> int:
        """Partial updates in one round trip: ``{key: {field: value}}`` or (key, fields) pairs.

        Every change is validated before any is sent.  Objects missing from Redis
        are loaded from PostgreSQL first.  Keys found in neither store raise
        ``NotFound`` (the other updates of the batch are applied: each update is
        atomic on its own, the batch is not).
        """
        return self._run(self.core.update_plan(changes))

    def delete(self, key: Any) -> None:
        """Delete the object (a no-op in PostgreSQL if it was never there)."""
        self.producer.delete((key,))

    def delete_many(self, keys: Iterable[Any]) -> int:
        """Delete many objects in one round trip; all or nothing. Returns the count."""
        return self.producer.delete(keys)

    # -- reads -----------------------------------------------------------------

    def get_by_id(self, key: Any) -> M | None:
        """The object, from Redis, else PostgreSQL; None when absent or deleted."""
        return self.get_many([key])[0]

    def get_many(self, keys: Iterable[Any]) -> list[M | None]:
        """Objects for ``keys`` in order (None where absent), one Redis round trip."""
        return self._run(self.core.get_plan(keys))

    def find(self, **conditions: Any) -> list[M]:
        """The objects whose indexed fields equal ``conditions`` (ANDed), ordered by key:
        exactly what ``get_by_id`` returns for those keys, while the drain lags
        (Redis merged with PostgreSQL, see ``kvfast.find``)."""
        return self._run(find_plan(self.core, conditions))

    # -- the I/O of the plans ----------------------------------------------------

    def _run(self, plan: Plan[T] | FindPlan[Any]) -> T:
        try:
            step = next(plan)
            while True:
                step = plan.send(self._perform(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _perform(self, step: FindStep) -> Any:
        if isinstance(step, Eval):
            if step.wait_keys is not None:  # writes (update.lua): see Producer.record_indexes
                self.producer.record_indexes()
            return self.client.eval_many(step.script, step.calls, step.wait_keys)
        if isinstance(step, ReadHashes):
            self.client.check_partitions()
            with redis_errors(self.client.settings):
                pipe = self.client.redis.pipeline(transaction=False)
                for obj_key in step.obj_keys:
                    pipe.hgetall(obj_key)
                return pipe.execute()
        if isinstance(step, SelectWhere):
            return self._select_where(step)
        if isinstance(step, Commands):
            return self._commands(step)
        if isinstance(step, Overlapped):
            return self._overlapped(step)
        return self._select(step.keys)

    def _overlapped(self, step: Overlapped) -> tuple[list[Any], list[Any] | None,
                                                     list[tuple[Any, ...]] | None]:
        """The SELECT sent first; both Redis round trips while PostgreSQL runs it
        (``kvfast.pgpending``); then its rows."""
        select = step.select
        pending = None
        if select is not None:
            with pg_errors(self.client.settings):
                pending = PendingQuery(self.client.pg(), select.numbered, select.params)
        try:
            replies = self._commands(step.redis)
            then = step.then(replies)
            more = self._commands(then) if then is not None else None
        except BaseException:
            if pending is not None:
                pending.abandon()
            raise
        if pending is None:
            return replies, more, None
        with pg_errors(self.client.settings):
            return replies, more, pending.rows()

    def _commands(self, step: Commands) -> list[Any]:
        """The replies of ``step``: one payload on one Redis; on a cluster each command
        to its slot's node (nodes at once)."""
        client = self.client
        topology = client.topology
        if topology is None:
            return client.execute(step.payload, step.nreplies)
        client.check_partitions()
        assert step.routed is not None, "find's commands name their keys on a cluster"
        units = [Unit(topology.slot_of_key(args[1]), pack(args), 1) for args in step.routed()]
        return [r[0] for r in client.execute_units(units)]

    def _select_where(self, step: SelectWhere) -> list[tuple[Any, ...]]:
        with pg_errors(self.client.settings):
            return self.client.pg().execute(step.query, step.params).fetchall()

    def _select(self, keys: list[Any]) -> dict[Any, tuple[Any, ...]]:
        with pg_errors(self.client.settings):
            return select_rows(self.client.pg(), self.info, keys)
