"""``find``: objects by indexed fields, from Redis merged with PostgreSQL, exact while
the drain lags.

``Repository.find(rider_id=r)`` answers what ``get_by_id`` would answer for every
key whose current value of the field is ``r``.  The plan below is shared by the
sync and asyncio shells, like ``kvfast.core``'s:

1. at the same time: ``SINTER`` of the value's index sets in every partition,
   pipelined (one Redis round trip), and one ``SELECT … WHERE col = $1 [AND …]``
   (PostgreSQL's index on the column) that also returns, from the same
   snapshot, the drain's fence epoch of every partition;
2. one Redis round trip: ``HGETALL`` of every member and of every row's key, and
   the epoch counter ``{ns:p}:e`` of the rows' partitions.  A member whose hash
   holds the values is found; a Redis copy of a row's key is newer than the row:
   a tombstone or another value drops the row, a matching copy (hydrated from
   PostgreSQL, so in no index set) replaces it; a row whose key Redis does not
   have is the answer, if its partition's epoch counter still equals the fence
   epoch the snapshot saw (below);
3. rarely: prune.lua where members were stale (moved, deleted, expired), and a
   read by key of the rows whose partition's epochs differed.

Why the epochs: between the SELECT's snapshot and step 2, a drain may commit a
write newer than the row and then remove the key's Redis copy (its ack clears a
tombstone; the copy's TTL, given at that ack, may run out), and the old row
would come back.  Every drain commit sets its partition's fence row to the
batch's epoch, and every claim takes a new epoch from ``{ns:p}:e``: a counter
equal to the snapshot's fence epoch means no batch of that partition was claimed
since the last commit the snapshot holds, so nothing newer than the row can
have been committed, let alone acked.  Otherwise (a batch in flight, or one
committed since) the row is read again by key after step 2, as ``get_many``
falls back after its Redis miss.  Reading a counter in Redis before the SELECT
would do too, but costs a round trip before the query; the fence comes with it.

Measured (bench/test_7_find.py): a find.lua call per partition that read and
pruned the sets atomically cost ~10x the plain SELECT with 64 partitions (Lua's
per-call cost); plain SINTERs overlapped with the SELECT, then one round trip of
HGETALLs, is what is left.
"""

from __future__ import annotations

import weakref
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from psycopg import sql

from kvfast.core import Eval, Select, Step, hash_of
from kvfast.errors import ValidationError
from kvfast.model import TOMBSTONE_FIELD
from kvfast.resp import check_replies, pack
from kvfast.schema import FENCE_TABLE, select_list, table_sql, type_sql
from kvfast.scripts import Prune

if TYPE_CHECKING:
    from kvfast.core import RepositoryCore
    from kvfast.model import ModelInfo
    from kvfast.producer import WriteBuilder

__all__ = ["Commands", "FindStep", "Overlapped", "SelectWhere", "find_conditions", "find_plan",
           "find_sql"]

M = TypeVar("M")
_TOMB = TOMBSTONE_FIELD.encode()


@dataclass(frozen=True, slots=True)
class SelectWhere:
    """Run ``query`` with ``params`` on PostgreSQL; send back the rows."""

    query: bytes | sql.Composed
    params: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Commands:
    """Send packed read-only Redis commands; send back their raw replies."""

    payload: bytes
    nreplies: int
    #: on a Redis Cluster: the same commands one by one, and the key each one routes by
    commands: tuple[bytes, ...] = ()
    route: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Overlapped:
    """``Commands`` and ``SelectWhere`` at the same time; send back (replies, rows)."""

    redis: Commands
    select: SelectWhere


FindStep = Step | SelectWhere | Commands | Overlapped
FindPlan = Generator[FindStep, Any, list[M]]


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
    """The rows whose columns equal the values, and the fence epochs, in one snapshot.

    ``SELECT <every column>, <fence epochs as JSON text> FROM (fence) LEFT JOIN t ON
    c1 = %s::type1 AND …``; parameters: the namespace, then each value as its hash
    text, cast to the column's type (so the column's index serves).  The fence's
    one row makes the first row carry it even when no row matches (all columns
    NULL then)."""
    on = sql.SQL(" AND ").join(
        sql.SQL("{} = %s::{}").format(sql.Identifier("t", info.by_name[n].column),
                                      type_sql(info.by_name[n].ftype))
        for n in names)
    return sql.SQL(
        "SELECT {}, f.epochs FROM (SELECT coalesce(json_object_agg(partition, epoch), '{{}}')"
        "::text AS epochs FROM {} WHERE namespace = %s) AS f LEFT JOIN {} AS t ON {}"
    ).format(select_list(info, "t"), sql.Identifier(FENCE_TABLE), table_sql(info), on)


def row_key(info: ModelInfo, row: tuple[Any, ...]) -> Any:
    """The key of a row read with ``select_list`` (the one place a find reads key columns);
    None for the all-NULL row of the LEFT JOIN when nothing matched."""
    if row[info.key_fields[0].index] is None:
        return None
    return info.key_from_values(row)


class _Layout:
    """What every find of one model reuses: names per partition, the SQL per field set."""

    def __init__(self, builder: WriteBuilder) -> None:
        keys, info = builder.keys, builder.info
        self.obj_prefixes = [keys.obj(p, info.table, "").encode()
                             for p in range(keys.partitions)]
        assert builder.index_prefixes is not None
        #: per indexed field, its set name prefix in every partition
        self.set_prefixes = [[builder.index_prefixes[p][slot] for p in range(keys.partitions)]
                             for slot in range(len(info.indexes))]
        self.queries: dict[tuple[str, ...], bytes] = {}

    def query(self, info: ModelInfo, names: tuple[str, ...]) -> bytes:
        query = self.queries.get(names)
        if query is None:  # composed once: as_bytes costs more than the query itself
            query = self.queries[names] = find_sql(info, list(names)).as_bytes(None)
        return query


_LAYOUTS: weakref.WeakKeyDictionary[WriteBuilder, _Layout] = weakref.WeakKeyDictionary()

#: SINTER of one set, in RESP (the common find of one field)
_SINTER1 = b"*2\r\n$6\r\nSINTER\r\n$%d\r\n%b%b\r\n"


def find_plan(core: RepositoryCore[M], conditions: Mapping[str, Any]) -> FindPlan[M]:
    """The objects whose indexed fields equal ``conditions`` (ANDed), ordered by key."""
    info, builder = core.info, core.builder
    checked = find_conditions(info, conditions)
    keys = builder.keys
    layout = _LAYOUTS.get(builder)
    if layout is None:
        layout = _LAYOUTS[builder] = _Layout(builder)
    columns = [layout.set_prefixes[info.indexes.index(name)] for name, _ in checked]
    nparts = keys.partitions
    if len(checked) == 1:
        value = checked[0][1]
        sets = [[prefix + value] for prefix in columns[0]]
        commands = [_SINTER1 % (len(prefix) + len(value), prefix, value)
                    for prefix in columns[0]]
    else:
        sets = [[col[p] + value for col, (_, value) in zip(columns, checked, strict=True)]
                for p in range(nparts)]
        commands = [pack(("SINTER", *sets[p])) for p in range(nparts)]
    inter = Commands(b"".join(commands), nparts, tuple(commands),
                     tuple(s[0] for s in sets))
    if core.has_pg:
        select = SelectWhere(layout.query(info, tuple(name for name, _ in checked)),
                             (keys.namespace, *(value.decode() for _, value in checked)))
        member_lists, rows = yield Overlapped(inter, select)
        fence: dict[str, int] = orjson.loads(rows[0][-1])
        rows = [row[:-1] for row in rows if row_key(info, row) is not None]
    else:
        member_lists = yield inter
        fence, rows = {}, []
    check_replies(member_lists, "SINTER")

    obj_prefixes = layout.obj_prefixes
    members = [(p, m, obj_prefixes[p] + m) for p in range(nparts) for m in member_lists[p]]
    by_name: dict[bytes, tuple[int, Any, tuple[Any, ...]]] = {}
    for row in rows:
        key = info.check_key(row_key(info, row))
        _, p, obj_name = builder.locate(key)
        by_name[obj_name.encode()] = (p, key, row)
    names = list(dict.fromkeys([name for _, _, name in members] + list(by_name)))
    parts = sorted({p for p, _, _ in by_name.values()})
    if not names:
        return []
    reads = [*(pack(("HGETALL", n)) for n in names),
             *(pack(("GET", keys.epochs[p])) for p in parts)]
    replies = yield Commands(b"".join(reads), len(reads), tuple(reads),
                             (*names, *(keys.epochs[p].encode() for p in parts)))
    check_replies(replies, "HGETALL")
    # a RESP3 connection replies maps (and sets, to SINTER), RESP2 flat lists
    hashes = {n: raw if isinstance(raw, dict) else hash_of(raw)
              for n, raw in zip(names, replies, strict=False)}
    epochs = dict(zip(parts, replies[len(names):], strict=True))

    wanted = [(f.encode(), v) for f, v in checked]
    found: dict[bytes, M] = {}
    stale: dict[int, list[bytes]] = {}
    for p, member, name in members:
        raw = hashes[name]
        if raw and _TOMB not in raw and all(raw.get(f) == v for f, v in wanted):
            found[name] = core.decode(member.decode(), raw)
        else:
            stale.setdefault(p, []).append(member)
    again: list[tuple[bytes, Any]] = []
    for name, (p, key, row) in by_name.items():
        raw = hashes[name]
        if name in found:
            continue
        if raw:  # Redis's copy is newer than the row
            if _TOMB not in raw and all(raw.get(f) == v for f, v in wanted):
                found[name] = core.decode(key, raw)  # hydrated: in PostgreSQL, in no set
            continue
        epoch = epochs[p]
        if (None if epoch is None else int(epoch)) == fence.get(str(p)):
            found[name] = info.from_pg_row(row)
        else:
            again.append((name, key))

    if stale:
        yield Eval(Prune.name, [Prune.call(obj_prefixes[p], TOMBSTONE_FIELD, checked, sets[p],
                                           stale[p]) for p in stale])
    if again:
        fresh: dict[Any, tuple[Any, ...]] = yield Select([key for _, key in again])
        for name, key in again:
            now = fresh.get(key)
            if now is not None and _row_matches(info, now, checked):
                found[name] = info.from_pg_row(now)
    return sorted(found.values(), key=info.key_of)


def _row_matches(info: ModelInfo, row: tuple[Any, ...], checked: list[tuple[str, bytes]]) -> bool:
    """Whether a row read by key still holds every value of the conditions."""
    values = info.values_from_pg(row)
    for name, want in checked:
        f = info.by_name[name]
        value = values[f.index]
        if value is None or f.ftype.hash_bytes(value) != want:
            return False
    return True
