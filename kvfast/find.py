"""``find``: objects by indexed fields, from Redis merged with PostgreSQL, exact while
the drain lags.

``Repository.find(rider_id=r)`` answers what ``get_by_id`` would answer for every
key whose current value of the field is ``r``: the plan below, shared by the sync
and asyncio shells like ``kvfast.core``'s, in three steps (a fourth, rarely):

1. find.lua in every partition, pipelined (one round trip): the live members of
   the value's index set with their hashes (stale members are dropped there),
   and each partition's ``drained`` counter;
2. one ``SELECT … WHERE col = $1 [AND …]`` (PostgreSQL's index on the column);
3. for the rows whose key step 1 did not return: their Redis hashes, with the
   counters of their partitions again (one round trip).  A Redis copy is newer
   than the row: a tombstone or another value drops the row, a matching copy
   (hydrated from PostgreSQL, so in no index set) replaces it;
4. a row whose key Redis did not have in step 3 is the answer, unless its
   partition acked a batch between steps 1 and 3: that drain may have removed a
   Redis copy (a tombstone, or an object whose TTL then ran out) written after
   the SELECT's snapshot, so such rows are read again by key, as ``get_many``
   falls back (after step 3, so no newer copy can have vanished unseen).
   Expiry needs no check of its own: a copy gets its TTL only at the ack of its
   last write, so one that expired before step 3 with a write newer than the
   snapshot was acked after step 1, and its counter moved (a copy hydrated from
   PostgreSQL expires too, but it holds what the row holds).

Steps 1 and 2 are not overlapped: the counters must be read before the
snapshot is taken, or an ack in between would go unseen.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import sql

from kvfast.core import Eval, ReadHashes, Select, Step, hash_of
from kvfast.errors import ValidationError
from kvfast.model import TOMBSTONE_FIELD
from kvfast.schema import select_list, table_sql, type_sql
from kvfast.scripts import Find

if TYPE_CHECKING:
    from kvfast.core import RepositoryCore
    from kvfast.model import ModelInfo

__all__ = ["SelectWhere", "find_conditions", "find_plan", "find_sql"]

M = TypeVar("M")
_TOMB = TOMBSTONE_FIELD.encode()


@dataclass(frozen=True, slots=True)
class SelectWhere:
    """Run ``query`` with ``params`` on PostgreSQL; send back the rows."""

    query: sql.Composed
    params: tuple[Any, ...]


FindPlan = Generator[Step | SelectWhere, Any, list[M]]


def find_conditions(info: ModelInfo, conditions: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(field, value in hash encoding) per condition; ValidationError for a field that is
    not indexed (find never scans) or a value the field cannot hold."""
    if not conditions:
        raise ValidationError(info.name, "<fields>", {}, "find needs at least one indexed field")
    out: list[tuple[str, bytes]] = []
    for name, value in conditions.items():
        f = info.by_name.get(name)
        if f is None or name not in info.indexes:
            what = "no such field" if f is None else "not indexed"
            raise ValidationError(info.name, name, value, (
                f"find by {name!r}: {what}; indexed fields of {info.name}: "
                f"{list(info.indexes)} (declare @kvfast.model(indexes=(...)))"))
        if value is None:
            raise ValidationError(info.name, name, value, "find by NULL is not supported")
        checked = info.check_value(f, value)
        out.append((name, f.ftype.hash_bytes(checked)))
    return out


def find_sql(info: ModelInfo, names: list[str]) -> sql.Composed:
    """``SELECT <every column> FROM t WHERE c1 = %s::type1 AND …``: each value is passed
    as its hash text and cast to the column's type, so the column's index serves."""
    where = sql.SQL(" AND ").join(
        sql.SQL("{} = %s::{}").format(sql.Identifier(info.by_name[n].column),
                                      type_sql(info.by_name[n].ftype))
        for n in names)
    return sql.SQL("SELECT {} FROM {} WHERE {}").format(select_list(info), table_sql(info), where)


def row_key(info: ModelInfo, row: tuple[Any, ...]) -> Any:
    """The key of a row read with ``select_list`` (the one place a find reads key columns)."""
    return row[info.key_field.index]


def find_plan(core: RepositoryCore[M], conditions: Mapping[str, Any]) -> FindPlan[M]:
    """The objects whose indexed fields equal ``conditions`` (ANDed), ordered by key."""
    info, builder = core.info, core.builder
    checked = find_conditions(info, conditions)
    keys = builder.keys
    prefixes = builder.index_prefixes
    assert prefixes is not None  # find_conditions refused a model without indexes
    slots = [info.indexes.index(name) for name, _ in checked]
    obj_prefixes = [keys.obj(p, info.table, "") for p in range(keys.partitions)]
    replies = yield Eval(Find.name, [
        Find.call(keys, p, obj_prefixes[p], TOMBSTONE_FIELD,
                  [(name, prefixes[p][slot], value)
                   for (name, value), slot in zip(checked, slots, strict=True)])
        for p in range(keys.partitions)])
    found: dict[str, M] = {}
    drained: list[bytes] = []
    for p, reply in enumerate(replies):
        counter, members = Find.decode(reply)
        drained.append(counter)
        for member, flat in members:
            name = obj_prefixes[p] + member.decode()
            found[name] = core.decode(member.decode(), hash_of(flat))
    if core.has_pg:
        rows: list[tuple[Any, ...]] = yield SelectWhere(
            find_sql(info, [name for name, _ in checked]),
            tuple(value.decode() for _, value in checked))
        yield from _merge_rows(core, rows, checked, found, drained)
    return sorted(found.values(), key=info.key_of)


def _merge_rows(core: RepositoryCore[M], rows: list[tuple[Any, ...]],
                checked: list[tuple[str, bytes]], found: dict[str, M],
                drained: list[bytes]) -> Generator[Step, Any, None]:
    """Steps 3 and 4 of the module docstring: add to ``found`` the rows Redis has no newer
    copy of (or that copy, where it matches)."""
    info, builder, keys = core.info, core.builder, core.builder.keys
    candidates: list[tuple[str, int, Any, tuple[Any, ...]]] = []
    for row in rows:
        key = info.check_key(row_key(info, row))
        _, p, name = builder.locate(key)
        if name not in found:
            candidates.append((name, p, key, row))
    if not candidates:
        return
    parts = sorted({p for _, p, _, _ in candidates})
    hashes = yield ReadHashes([name for name, _, _, _ in candidates]
                              + [keys.counters[p] for p in parts])
    now_drained = dict(zip(parts, hashes[len(candidates):], strict=True))
    again: list[tuple[str, Any]] = []
    wanted = dict(checked)
    for (name, p, key, row), raw in zip(candidates, hashes, strict=False):
        if not raw:
            if now_drained[p].get(b"drained", b"") != drained[p]:
                again.append((name, key))
            else:
                found[name] = info.from_pg_row(row)
        elif _TOMB not in raw and all(raw.get(f.encode()) == v for f, v in wanted.items()):
            found[name] = core.decode(key, raw)
    if again:
        fresh: dict[Any, tuple[Any, ...]] = yield Select([key for _, key in again])
        for name, key in again:
            now = fresh.get(key)
            if now is not None and _row_matches(info, now, checked):
                found[name] = info.from_pg_row(now)


def _row_matches(info: ModelInfo, row: tuple[Any, ...], checked: list[tuple[str, bytes]]) -> bool:
    """Whether a row read by key still holds every value of the conditions."""
    values = info.values_from_pg(row)
    for name, want in checked:
        f = info.by_name[name]
        value = values[f.index]
        if value is None or f.ftype.hash_bytes(value) != want:
            return False
    return True
