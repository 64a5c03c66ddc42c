"""What ``Repository`` and ``AsyncRepository`` share: the plan of each call, without I/O.

psycopg's ``BaseCopy`` / ``Copy`` / ``AsyncCopy`` is the model.  A read or an
update is a generator (a *plan*) that validates its input, then yields the
I/O it needs as small records (``Eval``, ``ReadHashes``, ``Select``) and is
sent back their results; it decides everything else (hydration of keys found
only in PostgreSQL, tombstones, decoding, ``NotFound``).  The two repositories
are thin shells that perform those records, one with blocking calls, the other
awaited, so the two cannot drift apart again.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from kvfast.errors import DecodeError, NotFound
from kvfast.model import TOMBSTONE_FIELD, ModelInfo
from kvfast.producer import WriteBuilder
from kvfast.scripts import Call, Hydrate, Update

__all__ = ["Eval", "Plan", "ReadHashes", "RepositoryCore", "Select", "Step", "hash_of"]

M = TypeVar("M")
T = TypeVar("T")
_TOMB = TOMBSTONE_FIELD.encode()

Changes: TypeAlias = "Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]]"


@dataclass(frozen=True, slots=True)
class Eval:
    """Run pipelined calls of one script; send back its replies in order."""

    script: str
    calls: Sequence[Call]
    #: the calls are writes of these keys (one per call): ``wait_replicas`` applies
    wait_keys: Sequence[Any] | None = None


@dataclass(frozen=True, slots=True)
class ReadHashes:
    """HGETALL each object hash (after the partition check); send back one mapping each."""

    obj_keys: list[str]


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT the PostgreSQL rows of ``keys``; send back {key: row}."""

    keys: list[Any]


Step = Eval | ReadHashes | Select
Plan: TypeAlias = Generator[Step, Any, T]


def hash_of(flat: list[bytes]) -> dict[bytes, bytes]:
    """HGETALL's flat [field, value, …] reply (the raw RESP path) as a mapping."""
    return dict(zip(flat[0::2], flat[1::2], strict=True))


class RepositoryCore(Generic[M]):
    """The plans of one model's repository (``has_pg``: a DSN is configured)."""

    def __init__(self, info: ModelInfo, builder: WriteBuilder, has_pg: bool) -> None:
        self.info = info
        self.builder = builder
        self.has_pg = has_pg

    def update_plan(self, changes: Changes) -> Plan[int]:
        """Partial updates, validated first; keys found only in PostgreSQL are hydrated
        into Redis and updated again; keys in neither store raise ``NotFound``."""
        info = self.info
        items = list(changes.items() if isinstance(changes, Mapping) else changes)
        replies = yield Eval(Update.name, self.builder.build_update(items),
                             [key for key, _ in items])
        status = [Update.decode(r) for r in replies]
        missing = [i for i, s in enumerate(status) if s == 0]
        if missing and self.has_pg:
            loaded = yield from self._hydrate_plan([items[i][0] for i in missing])
            retry = [i for i in missing if info.check_key(items[i][0]) in loaded]
            if retry:
                again = yield Eval(Update.name,
                                   self.builder.build_update([items[i] for i in retry]),
                                   [items[i][0] for i in retry])
                for i, reply in zip(retry, again, strict=True):
                    status[i] = Update.decode(reply)
        not_found = [items[i][0] for i, s in enumerate(status) if s != 1]
        if not_found:
            raise NotFound(info.name, not_found)
        return len(items)

    def _hydrate_plan(self, keys: list[Any]) -> Plan[set[Any]]:
        """Load the PostgreSQL rows of ``keys`` into Redis (where Redis has nothing)."""
        rows: dict[Any, tuple[Any, ...]] = yield Select([self.info.check_key(k) for k in keys])
        if rows:
            decoded = [(key, self.info.values_from_pg(row)) for key, row in rows.items()]
            yield Eval(Hydrate.name, self.builder.build_hydrate(decoded))
        return set(rows)

    def get_plan(self, keys: Iterable[Any]) -> Plan[list[M | None]]:
        """Objects for ``keys`` in order: Redis first, PostgreSQL for misses; a
        tombstone (a delete not drained yet) answers None without a fallback."""
        info = self.info
        normalized = [info.check_key(k) for k in keys]
        if not normalized:
            return []
        hashes: list[Mapping[bytes, bytes]] = yield ReadHashes(
            [self.builder.locate(k)[2] for k in normalized]
        )
        out: list[M | None] = []
        misses: list[int] = []
        for i, raw in enumerate(hashes):
            if not raw:
                out.append(None)
                misses.append(i)
            elif _TOMB in raw:
                out.append(None)
            else:
                out.append(self.decode(normalized[i], raw))
        if misses and self.has_pg:
            rows: dict[Any, tuple[Any, ...]] = yield Select([normalized[i] for i in misses])
            for i in misses:
                row = rows.get(normalized[i])
                if row is not None:
                    out[i] = info.from_pg_row(row)
        return out

    def decode(self, key: Any, raw: Mapping[bytes, bytes]) -> M:
        """The object in a Redis hash; ``DecodeError`` (naming model and key) if it is damaged."""
        try:
            return self.info.from_hash(raw)  # type: ignore[no-any-return]
        except (ValueError, TypeError, KeyError) as exc:
            raise DecodeError(
                f"{self.info.name} {key!r}: Redis hash does not decode: {exc}"
            ) from exc
