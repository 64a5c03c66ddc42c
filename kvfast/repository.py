"""``Repository[Model]``: typed create / update / delete / get over one model.

Writes go to Redis only (the drainers move them to PostgreSQL).  Reads come from
Redis; a miss falls back to PostgreSQL when a DSN is configured, except for a
key deleted in Redis whose delete has not drained yet (its tombstone answers
"missing", so the old row is never resurrected).

``create`` of a key that already exists *replaces* the whole object, in Redis
(DEL + HSET) and in PostgreSQL (INSERT … ON CONFLICT DO UPDATE of every column):
the two stores never diverge.  ``update`` of a key that exists in neither store
(or is deleted) raises ``NotFound``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

import redis

from kvfast.client import Client, pg_errors, redis_errors
from kvfast.errors import DecodeError, NotFound
from kvfast.model import TOMBSTONE_FIELD, model_info
from kvfast.producer import Producer
from kvfast.schema import select_rows
from kvfast.settings import Settings

__all__ = ["Repository"]

M = TypeVar("M")
_TOMB = TOMBSTONE_FIELD.encode()


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
        items = list(changes.items() if isinstance(changes, Mapping) else changes)
        status = self.producer.update(items)
        missing = [i for i, s in enumerate(status) if s == 0]
        if missing and self.client.has_pg:
            loaded = self._hydrate([items[i][0] for i in missing])
            retry = [i for i in missing if self.info.check_key(items[i][0]) in loaded]
            for i, s in zip(retry, self.producer.update([items[i] for i in retry]), strict=True):
                status[i] = s
        not_found = [items[i][0] for i, s in enumerate(status) if s != 1]
        if not_found:
            raise NotFound(self.info.name, not_found)
        return len(items)

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
        info = self.info
        normalized = [info.check_key(k) for k in keys]
        if not normalized:
            return []
        self.client.check_partitions()
        with redis_errors(self.client.settings):
            pipe = self.client.redis.pipeline(transaction=False)
            for key in normalized:
                pipe.hgetall(self.producer.locate(key)[2])
            hashes = pipe.execute()
        out: list[M | None] = []
        misses: list[int] = []
        for i, raw in enumerate(hashes):
            if not raw:
                out.append(None)
                misses.append(i)
            elif _TOMB in raw:
                out.append(None)
            else:
                out.append(self._decode(normalized[i], raw))
        if misses and self.client.has_pg:
            rows = self._select([normalized[i] for i in misses])
            for i in misses:
                row = rows.get(normalized[i])
                if row is not None:
                    out[i] = info.from_pg_row(row)
        return out

    def _decode(self, key: Any, raw: Mapping[bytes, bytes]) -> M:
        try:
            return self.info.from_hash(raw)  # type: ignore[no-any-return]
        except (ValueError, TypeError, KeyError) as exc:
            raise DecodeError(
                f"{self.info.name} {key!r}: Redis hash does not decode: {exc}"
            ) from exc

    def _select(self, keys: list[Any]) -> dict[Any, tuple[Any, ...]]:
        with pg_errors(self.client.settings):
            return select_rows(self.client.pg(), self.info, keys)

    def _hydrate(self, keys: list[Any]) -> set[Any]:
        """Load the PostgreSQL rows of ``keys`` into Redis (where Redis has nothing)."""
        normalized = [self.info.check_key(k) for k in keys]
        rows = self._select(normalized)
        if not rows:
            return set()
        decoded = [(key, self.info.values_from_pg(row)) for key, row in rows.items()]
        try:
            self.producer.hydrate(decoded)
        except redis.ResponseError as exc:  # pragma: no cover - surfaced as KvfastError
            raise DecodeError(str(exc)) from exc
        return set(rows)
