"""``find``: objects by indexed fields, from Redis merged with PostgreSQL, exact while
the drain lags.

``Repository.find(rider_id=r)`` answers what ``get_by_id`` would answer for every
key whose current value of the field is ``r``.  The plan below is shared by the
sync and asyncio shells, like ``kvfast.core``'s:

1. at the same time: one ``SELECT … WHERE col = $1 [AND …]`` (PostgreSQL's
   index on the column), which also returns, from the same snapshot, the
   drain's fence epoch of every partition; and, while PostgreSQL runs it, two
   Redis round trips: the members of the value's index sets in every partition
   (one ``SUNION`` on one Redis; several fields, or a cluster: a ``SINTER`` per
   partition), then ``HGETALL`` of every member.  A member whose hash holds the
   values is found (Redis's copy is the newest version of an object, read
   before or after the snapshot alike);
2. when the SELECT returned rows whose key is no member: one Redis round trip,
   ``HGETALL`` of those keys and the epoch counter ``{ns:p}:e`` of their
   partitions.  A Redis copy of a row's key is newer than the row: a tombstone
   or another value drops the row, a matching copy (hydrated before
   hydrate.lua indexed) replaces it; a row whose key Redis does not have is the
   answer, if its partition's epoch counter still equals the fence epoch the
   snapshot saw (below);
3. rarely: prune.lua where members were stale (moved, deleted, expired), and a
   read by key of the rows whose partition's epochs differed, or whose member's
   hash was gone (expired: PostgreSQL answers, as for ``get_by_id``'s miss).

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

Measured (bench/test_7_find.py, README "The cost"): the members' hashes cannot
come in the first round trip cheaply (members are bare keys, their partition is
known only by crc32): a read-only Lua script doing it cost 1.7x the SELECT on
its own, 64 ``SORT_RO … GET`` 5x, a find.lua call per partition ~10x; one
``SUNION`` instead of 64 ``SINTER`` replies saves their parsing.  The sync
shell sends the SELECT first through libpq (``kvfast.pgpending``) so that both
Redis round trips run while PostgreSQL does (the asyncio shell gathers them):
3.8-4.0x -> 3.1-3.3x the plain SELECT, alternated runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from psycopg import sql

from kvfast.core import Eval, Select, Step, hash_of
from kvfast.errors import ValidationError
from kvfast.keys import key_string
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
    """Run ``query`` with ``params`` on PostgreSQL; send back the rows.

    ``numbered`` is the same query with libpq's ``$1``… placeholders (for a shell
    that sends it through libpq directly: ``kvfast.pgpending``); ``params`` are
    text."""

    query: bytes | sql.Composed
    params: tuple[Any, ...]
    numbered: bytes = b""


@dataclass(frozen=True, slots=True)
class Commands:
    """Send packed read-only Redis commands; send back their raw replies."""

    payload: bytes
    nreplies: int
    #: on a Redis Cluster: each command's arguments, its first key routes it (a call:
    #: built only there)
    routed: Callable[[], list[tuple[bytes, ...]]] | None = None


@dataclass(frozen=True, slots=True)
class Overlapped:
    """``redis``, then ``then(its replies)`` (the next commands, or None), while
    ``select`` runs; send back (replies, then's replies or None, rows or None)."""

    redis: Commands
    select: SelectWhere | None
    then: Callable[[list[Any]], Commands | None]


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


def find_sql(info: ModelInfo, names: list[str], *, numbered: bool = False) -> sql.Composed:
    """The rows whose columns equal the values, and the fence epochs, in one snapshot.

    ``SELECT <every column>, <fence epochs as JSON text> FROM (fence) LEFT JOIN t ON
    c1 = %s::type1 AND …``; parameters: the namespace, then each value as its hash
    text, cast to the column's type (so the column's index serves).  The fence's
    one row makes the first row carry it even when no row matches (all columns
    NULL then).  ``numbered``: libpq's ``$1``… placeholders instead of ``%s``."""
    def mark(i: int) -> sql.SQL:
        return sql.SQL(f"${i}" if numbered else "%s")

    on = sql.SQL(" AND ").join(
        sql.SQL("{} = {}::{}").format(sql.Identifier("t", info.by_name[n].column), mark(i),
                                      type_sql(info.by_name[n].ftype))
        for i, n in enumerate(names, start=2))
    return sql.SQL(
        "SELECT {}, f.epochs FROM (SELECT coalesce(json_object_agg(partition, epoch), '{{}}')"
        "::text AS epochs FROM {} WHERE namespace = {}) AS f LEFT JOIN {} AS t ON {}"
    ).format(select_list(info, "t"), sql.Identifier(FENCE_TABLE), mark(1), table_sql(info), on)


class _Layout:
    """What every find of one model reuses: names per partition, the SQL per field set."""

    def __init__(self, builder: WriteBuilder) -> None:
        keys, info = builder.keys, builder.info
        self.partitions = keys.partitions
        self.obj_prefixes = [keys.obj(p, info.table, "").encode()
                             for p in range(keys.partitions)]
        self.epochs = [name.encode() for name in keys.epochs]
        assert builder.index_prefixes is not None
        #: per indexed field, its set name prefix in every partition
        self.set_prefixes = [[builder.index_prefixes[p][slot] for p in range(keys.partitions)]
                             for slot in range(len(info.indexes))]
        self.queries: dict[tuple[str, ...], tuple[bytes, bytes]] = {}

    def query(self, info: ModelInfo, names: tuple[str, ...]) -> tuple[bytes, bytes]:
        """The find SQL for ``names``: (with ``%s``, with ``$1``…)."""
        query = self.queries.get(names)
        if query is None:  # composed once: as_bytes costs more than the query itself
            query = self.queries[names] = (
                find_sql(info, list(names)).as_bytes(None),
                find_sql(info, list(names), numbered=True).as_bytes(None))
        return query


_LAYOUTS: weakref.WeakKeyDictionary[WriteBuilder, _Layout] = weakref.WeakKeyDictionary()

_HGETALL = b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%b\r\n"
_GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"


def _sets_plan(layout: _Layout, columns: list[list[bytes]], values: list[bytes]) -> Commands:
    """The first Redis step: every member of the values' index sets, all partitions.

    One field: one ``SUNION`` of its set in every partition (one command: measured
    below 64 pipelined ``SINTER``s, whose replies Python parses one by one); a key
    is in the sets of its own partition only, so the union is the answer.  Several
    fields: a ``SINTER`` per partition (their intersection is per partition).  On a
    Redis Cluster (``routed``) each partition's command goes to its slot's node."""
    nparts = layout.partitions
    if len(values) == 1:
        value = values[0]
        sets = [prefix + value for prefix in columns[0]]
        return Commands(pack(("SUNION", *sets)), 1,
                        lambda: [(b"SINTER", name) for name in sets])
    per = [tuple(col[p] + v for col, v in zip(columns, values, strict=True))
           for p in range(nparts)]
    return Commands(b"".join(pack(("SINTER", *names)) for names in per), nparts,
                    lambda: [(b"SINTER", *names) for names in per])


def find_plan(core: RepositoryCore[M], conditions: Mapping[str, Any]) -> FindPlan[M]:
    """The objects whose indexed fields equal ``conditions`` (ANDed), ordered by key."""
    info, builder = core.info, core.builder
    checked = find_conditions(info, conditions)
    layout = _LAYOUTS.get(builder)
    if layout is None:
        layout = _LAYOUTS[builder] = _Layout(builder)
    names = tuple(name for name, _ in checked)
    values = [value for _, value in checked]
    columns = [layout.set_prefixes[info.indexes.index(name)] for name in names]
    first = _sets_plan(layout, columns, values)
    nparts = layout.partitions
    obj_prefixes = layout.obj_prefixes
    partition_of = info.partition_of_bytes
    # name -> (partition, member); a RESP3 connection replies sets, RESP2 lists
    members: dict[bytes, tuple[int, bytes]] = {}

    def members_hashes(member_lists: list[Any]) -> Commands | None:
        """The members' hashes, asked for as soon as the sets answer (the SELECT may
        still run): a member's Redis copy is the newest version of its object."""
        check_replies(member_lists, "SINTER")
        for reply in member_lists:
            for member in reply:
                p = partition_of(member, nparts)
                members[obj_prefixes[p] + member] = (p, member)
        if not members:
            return None
        read = list(members)
        return Commands(b"".join([_HGETALL % (len(n), n) for n in read]), len(read),
                        lambda: [(b"HGETALL", n) for n in read])

    select = None
    if core.has_pg:
        query, numbered = layout.query(info, names)
        select = SelectWhere(query, (builder.keys.namespace,
                                     *(value.decode() for value in values)), numbered)
    _, member_replies, rows = yield Overlapped(first, select, members_hashes)
    if rows:
        fence: dict[str, int] = orjson.loads(rows[0][-1])
        if rows[0][info.key_fields[0].index] is None:
            rows = []  # the LEFT JOIN's one row without a match: nothing matched
    else:
        fence, rows = {}, []
    member_replies = member_replies or []
    check_replies(member_replies, "HGETALL")

    by_name: dict[bytes, tuple[int, Any, tuple[Any, ...]]] = {}
    for row in rows:
        row = row[:-1]
        key = info.check_key(info.key_from_values(row))
        key_b = key_string(key).encode()
        p = partition_of(key_b, nparts)
        by_name[obj_prefixes[p] + key_b] = (p, key, row)
    # The rows whose key is no member: Redis may hold a newer copy (a tombstone, a
    # create over the row), or nothing (then the epochs below decide).
    extra = [name for name in by_name if name not in members]
    if not members and not extra:
        return []
    parts = sorted({by_name[name][0] for name in extra})
    epoch_names = layout.epochs
    replies: list[Any] = []
    if extra:
        payload = b"".join([*(_HGETALL % (len(n), n) for n in extra),
                            *(_GET % (len(epoch_names[p]), epoch_names[p]) for p in parts)])
        replies = yield Commands(payload, len(extra) + len(parts), lambda: [
            *((b"HGETALL", n) for n in extra), *((b"GET", epoch_names[p]) for p in parts)])
        check_replies(replies, "HGETALL")

    found: dict[bytes, M] = {}
    stale: dict[int, list[bytes]] = {}
    again: list[tuple[bytes, Any]] = []
    if len(checked) == 1:
        field0, value0 = checked[0][0].encode(), values[0]

        def matches(raw: Mapping[bytes, bytes]) -> bool:
            return raw.get(field0) == value0 and _TOMB not in raw
    else:
        wanted = [(f.encode(), v) for f, v in checked]

        def matches(raw: Mapping[bytes, bytes]) -> bool:
            return _TOMB not in raw and all(raw.get(f) == v for f, v in wanted)
    for (name, (p, member)), raw in zip(members.items(), member_replies, strict=True):
        if raw and type(raw) is not dict:
            raw = hash_of(raw)  # RESP2 (the raw path) replies flat lists, RESP3 maps
        if raw and matches(raw):
            found[name] = core.decode(member.decode(), raw)
            continue
        stale.setdefault(p, []).append(member)
        if not raw and name in by_name:  # expired (or its delete acked): PostgreSQL,
            again.append((name, by_name[name][1]))  # read by key like get_by_id's miss
    epochs = dict(zip(parts, replies[len(extra):], strict=True))
    for name, raw in zip(extra, replies, strict=False):
        p, key, row = by_name[name]
        if raw:  # Redis's copy is newer than the row
            if type(raw) is not dict:
                raw = hash_of(raw)
            if matches(raw):  # hydrated before hydrate.lua indexed: in no set
                found[name] = core.decode(key, raw)
            continue
        epoch = epochs[p]
        if (None if epoch is None else int(epoch)) == fence.get(str(p)):
            found[name] = info.from_pg_row(row)
        else:
            again.append((name, key))

    if stale:
        yield Eval(Prune.name, [
            Prune.call(obj_prefixes[p], TOMBSTONE_FIELD, checked,
                       [col[p] + v for col, v in zip(columns, values, strict=True)], stale[p])
            for p in stale])
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
