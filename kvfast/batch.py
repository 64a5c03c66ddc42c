"""A claimed batch, decoded and collapsed: at most one operation per key.

``INSERT … ON CONFLICT`` cannot touch a row twice in one statement, so the
entries of a batch are folded per key, in queue order, into one final op:

    create            → upsert (every column)
    update            → update (the changed columns), or merged into a prior upsert/update
    delete            → delete (discarding what came before it)
    create after delete → upsert (an upsert writes every column: same result)
    resync            → see ``_resync_op``: the key's current Redis hash, as an upsert

Entries that do not decode, name an unknown field of a model they were written
by, or update a key the same batch deleted, become dead letters with the reason;
they never block the rest of the batch.  Entries this drainer cannot apply
without losing something -- a model it was not given, an entry of a newer model
version with fields it does not know -- are *held* (``kvfast.holds``): that
entry and every later entry of its table in its partition wait, in order, for a
drainer that can.  An entry of an older model version drains with the model's
defaults for the fields it lacks.

A batch may hold several partitions' entries (one claim can gather many); every
op, dead entry and tombstone remembers its partition so that each partition is
acked, and its dead letters kept, on its own.  A key lives in one partition, so
folding per key never mixes partitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvfast import codec, crows, impl
from kvfast.decoders import build_row_decoder, decode_value
from kvfast.errors import DecodeError
from kvfast.fieldtypes import Reject
from kvfast.holds import MODEL, VERSION, Hold
from kvfast.keys import key_string, key_wire
from kvfast.model import TOMBSTONE_FIELD, ModelInfo, get_model, model_version

__all__ = ["DELETE", "UPDATE", "UPSERT", "Batch", "Hashes", "KeyOp", "ModelOps", "build_batch",
           "python_row", "values_of"]

#: (table, key string) → the key's object hash read after the claim ({} when absent)
Hashes = Mapping[tuple[str, str], Mapping[bytes, bytes]]
_TOMB = TOMBSTONE_FIELD.encode()

UPSERT = "upsert"
UPDATE = "update"
DELETE = "delete"


@dataclass(slots=True)
class KeyOp:
    kind: str
    key: Any
    #: upsert: every value in field order; update: {field: value}; delete: empty
    row: Any
    partition: int
    #: the raw queue entries folded into this op, in order (dead-lettered together)
    entries: list[bytes] = field(default_factory=list)
    #: models with a TTL: the write id the key's last write here left in its hash
    mark: str | None = None
    #: an upsert decoded by C (kvfast.crows): ``row`` is its binary COPY row (bytes)
    #: and this the create entry it came from (``python_row`` makes values of it)
    origin: bytes | None = None


@dataclass(slots=True)
class ModelOps:
    info: ModelInfo
    ops: dict[Any, KeyOp] = field(default_factory=dict)
    version: str = ""

    def __post_init__(self) -> None:
        self.version = model_version(self.info)

    def of_kind(self, kind: str) -> list[KeyOp]:
        return [op for op in self.ops.values() if op.kind == kind]


@dataclass(slots=True)
class Batch:
    #: per model, in order of first appearance (parents usually before children)
    models: dict[str, ModelOps] = field(default_factory=dict)
    #: (raw entry, reason, partition) for entries that cannot be applied
    dead: list[tuple[bytes, str, int]] = field(default_factory=list)
    #: (partition, model, key string, tombstone id) of every delete, for ack.lua
    tombstones: list[tuple[int, ModelInfo, str, str]] = field(default_factory=list)
    #: write times (µs) of the entries, for the drain-lag measurement
    write_times: list[int] = field(default_factory=list)
    size: int = 0
    #: (partition, table) → (why, the entries held from the first that cannot be
    #: applied on, in queue order)
    held: dict[tuple[int, str], tuple[Hold, list[bytes]]] = field(default_factory=dict)
    #: (partition, table) → every entry of the table in the partition, in order
    #: (a table PostgreSQL refuses at apply time is held whole)
    entries_of: dict[tuple[int, str], list[bytes]] = field(default_factory=dict)

    def hold(self, p: int, table: str, why: Hold, raw: bytes) -> None:
        held = self.held.get((p, table))
        if held is None:
            self.held[(p, table)] = (why, [raw])
        else:
            held[1].append(raw)


def _decode_changes(info: ModelInfo, wire: dict[str, Any]) -> dict[str, Any]:
    by_name = info.by_name
    out: dict[str, Any] = {}
    for name, raw in wire.items():
        f = by_name.get(name)
        if f is None:
            raise DecodeError(f"{info.name} has no field {name!r}")
        if name in info.key_names:
            raise DecodeError(f"{info.name}: an update cannot change the key")
        out[name] = decode_value(info, f, raw)
    return out


_row_decoders: dict[int, tuple[ModelInfo, Callable[[dict[str, Any]], list[Any]]]] = {}


def _row_decoder(info: ModelInfo) -> Callable[[dict[str, Any]], list[Any]]:
    cached = _row_decoders.get(id(info))
    if cached is None or cached[0] is not info:
        cached = _row_decoders[id(info)] = (info, build_row_decoder(info))
    return cached[1]


def python_row(info: ModelInfo, raw: bytes) -> list[Any]:
    """The row (values in field order) the Python decoder makes of a create entry C
    took (C takes only entries of this model version that decode: this cannot fail)."""
    return _row_decoder(info)(codec.check(codec.parse(raw))[3])


def values_of(info: ModelInfo, op: KeyOp) -> Any:
    """An op's row as values: a C upsert's COPY bytes decoded the Python way."""
    if type(op.row) is bytes:
        assert op.origin is not None
        op.row = python_row(info, op.origin)
    return op.row


#: kvfast._speedups.create_row when the C implementation is in use (kvfast.crows)
_create_row = impl.speedups.create_row if impl.speedups is not None else None
#: table name (bytes) → the C RowCodec of its registered model, for create_row
_codecs: dict[bytes, Any] = {}
_codec_of: dict[int, tuple[ModelInfo, Any]] = {}


def _add_codec(info: ModelInfo) -> None:
    """Let C decode ``info``'s creates from now on (when it can: ``crows.row_codec``)."""
    cached = _codec_of.get(id(info))
    if cached is None or cached[0] is not info:
        cached = _codec_of[id(info)] = (info, crows.row_codec(info))
    rc = cached[1]
    table = info.table.encode("utf-8")
    if rc is None:
        _codecs.pop(table, None)
    else:
        _codecs[table] = rc


def build_batch(parts: Iterable[tuple[int, Sequence[bytes]]],
                hashes: Hashes | None = None) -> Batch:
    """Decode and fold ``(partition, entries)`` pairs, each in queue order.

    ``hashes``: the current object hash of every key a resync entry names, read
    after the claim (``Drainer._resync_hashes``); needed only when there are any.
    """
    batch = Batch()
    for partition, raw_entries in parts:
        batch.size += len(raw_entries)
        _fold(batch, partition, raw_entries, hashes)
    return batch


class _Held(Exception):
    """This entry cannot be applied by this drainer without losing something."""

    def __init__(self, hold: Hold) -> None:
        super().__init__(hold.reason)
        self.hold = hold


def _adapt(info: ModelInfo, op_kind: str, fields: dict[str, Any], version: Any) -> dict[str, Any]:
    """The wire fields of an entry written by another version of ``info``'s model.

    Fields this model lacks mean a newer model wrote it: applying it would drop
    them, so it is held for a drainer that runs that model.  A create missing
    fields this model has (an older model wrote it) takes their defaults; a
    missing field without a default is held too (an older drainer can apply it).
    """
    unknown = sorted(set(fields) - set(info.by_name))
    if unknown:
        raise _Held(Hold.new(info.table, VERSION, (
            f"entries of {info.name} written by model version {version} have fields "
            f"{unknown} this drainer's model ({model_version(info)}) does not know"),
            version=str(version)))
    if op_kind != codec.OP_CREATE or len(fields) == len(info.fields):
        return fields
    out = dict(fields)
    for f in info.fields:
        if f.name in out:
            continue
        default = _defaults(info).get(f.name, _NO_DEFAULT)
        if default is _NO_DEFAULT:
            raise _Held(Hold.new(info.table, VERSION, (
                f"entries of {info.name} written by model version {version} lack field "
                f"{f.name!r}, which has no default in this drainer's model"),
                version=str(version)))
        factory, value = default
        if factory is not None:
            value = factory()
        out[f.name] = value if value is None or f.ftype.wire_is_value else f.ftype.to_wire(value)
    return out


_NO_DEFAULT = object()
_default_cache: dict[int, tuple[ModelInfo, dict[str, Any]]] = {}


def _defaults(info: ModelInfo) -> dict[str, Any]:
    """Field name → (default_factory or None, default value)."""
    cached = _default_cache.get(id(info))
    if cached is None or cached[0] is not info:
        found: dict[str, Any] = {}
        for f in dataclasses.fields(info.cls):
            if f.default is not dataclasses.MISSING:
                found[f.name] = (None, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                found[f.name] = (f.default_factory, None)
        cached = _default_cache[id(info)] = (info, found)
    return cached[1]


def _fold(batch: Batch, p: int, raw_entries: Sequence[bytes], hashes: Hashes | None) -> None:
    models = batch.models
    dead = batch.dead
    write_times = batch.write_times
    held = batch.held
    entries_of = batch.entries_of
    #: keys set from their current hash by a resync: later entries are already in it
    settled: set[tuple[str, Any]] = set()
    create_row = _create_row
    for raw in raw_entries:
        # The C path: a create entry of a model C decodes, straight to its COPY row.
        # Anything it does not take (None) goes the Python way below.
        got = None if create_row is None else create_row(raw, _codecs)
        if got is not None:
            rc, key, crow, t_us, mark_id = got
            cinfo: ModelInfo = rc.info
            ctable = cinfo.table
            mops = models.get(ctable)
            if mops is None or mops.info is cinfo:
                if mops is None and get_model(ctable) is not cinfo:
                    # another model registered for the table since: Python decides
                    _codecs.pop(ctable.encode("utf-8"), None)
                else:
                    seen = entries_of.get((p, ctable))
                    if seen is None:
                        entries_of[(p, ctable)] = [raw]
                    else:
                        seen.append(raw)
                    if held and (p, ctable) in held:
                        held[(p, ctable)][1].append(raw)  # behind an entry that waits
                        continue
                    if mops is None:
                        mops = models[ctable] = ModelOps(cinfo)
                    write_times.append(t_us)
                    op = mops.ops.get(key)
                    if op is None:
                        mops.ops[key] = KeyOp(UPSERT, key, crow, p, [raw], mark_id, raw)
                    elif settled and (ctable, key) in settled:
                        op.entries.append(raw)
                    else:
                        op.kind, op.row, op.mark, op.origin = UPSERT, crow, mark_id, raw
                        op.entries.append(raw)
                    continue
        table = None
        try:
            obj = codec.parse(raw)
            table, op_kind, entry_key, fields, t_us, mark_id = codec.check(obj)
            seen = entries_of.get((p, table))
            if seen is None:
                entries_of[(p, table)] = [raw]
            else:
                seen.append(raw)
            if held and (p, table) in held:
                held[(p, table)][1].append(raw)  # behind an entry that waits: waits too
                continue
            mops = models.get(table)
            if mops is None:
                info = get_model(table)
                if info is None:
                    raise _Held(Hold.new(table, MODEL, (
                        f"no model registered for table {table!r} in this drainer")))
                mops = ModelOps(info)
                if create_row is not None:
                    _add_codec(info)
            info = mops.info
            version = obj.get("mv")
            if (version is not None and op_kind != codec.OP_DELETE
                    and version != mops.version):
                fields = _adapt(info, op_kind, fields, version)
            if op_kind == codec.OP_CREATE:
                row: Any = _row_decoder(info)(fields)
                key = info.key_from_values(row)
                if key != entry_key and key_wire(key) != entry_key:
                    raise DecodeError(f"{info.name} create: key {entry_key!r} != key field")
            elif op_kind == codec.OP_UPDATE:
                key = info.key_from_wire(entry_key)
                row = _decode_changes(info, fields)
            else:
                key = info.key_from_wire(entry_key)
                row = None
                if op_kind == codec.OP_RESYNC:
                    row = _resync_row(info, raw, hashes, key_string(entry_key))
        except _Held as exc:
            assert table is not None
            batch.hold(p, table, exc.hold, raw)
            continue
        except DecodeError as exc:
            dead.append((raw, f"undecodable entry: {exc}", p))
            continue
        if table not in models:
            models[table] = mops
        write_times.append(t_us)
        op = mops.ops.get(key)
        if settled and (table, key) in settled:
            assert op is not None
            op.entries.append(raw)
            if op_kind == codec.OP_DELETE and mark_id is not None:
                batch.tombstones.append((p, info, key_string(key), mark_id))
        elif op_kind == codec.OP_RESYNC:
            if _resync_op(mops, key, row, p, raw, op):
                settled.add((table, key))
        elif op_kind == codec.OP_CREATE:
            if op is None:
                mops.ops[key] = KeyOp(UPSERT, key, row, p, [raw], mark_id)
            else:
                op.kind, op.row, op.mark = UPSERT, row, mark_id
                op.entries.append(raw)
        elif op_kind == codec.OP_UPDATE:
            if op is None:
                mops.ops[key] = KeyOp(UPDATE, key, row, p, [raw], mark_id)
            elif op.kind == DELETE:
                dead.append((raw, "update of a key deleted earlier in the same batch", p))
            elif op.kind == UPSERT:
                index = info.by_name
                values = values_of(info, op)
                for name, value in row.items():
                    values[index[name].index] = value
                op.entries.append(raw)
                op.mark = mark_id
            else:
                op.row.update(row)
                op.entries.append(raw)
                op.mark = mark_id
        else:
            assert mark_id is not None
            batch.tombstones.append((p, info, key_string(key), mark_id))
            if op is None:
                mops.ops[key] = KeyOp(DELETE, key, None, p, [raw])
            else:
                op.kind, op.row, op.mark = DELETE, None, None
                op.entries.append(raw)


def _resync_row(info: ModelInfo, raw: bytes, hashes: Hashes | None, key_str: str) -> Any:
    """What a resync entry applies: the key's current hash as a full row (values in
    field order), ``DELETE`` (absent, and the entry it replaced was a delete), or
    None (nothing to apply)."""
    current = None if hashes is None else hashes.get((info.table, key_str))
    if current is None:
        raise DecodeError(f"{info.name} resync {key_str!r}: its Redis hash was not read")
    if _TOMB in current:
        return None
    if not current:
        gone = codec.parse(raw).get("g") is True
        return DELETE if gone else None
    out: list[Any] = []
    for f in info.fields:
        value = current.get(f.name.encode("utf-8"))
        if value is None:
            if not f.nullable:
                raise DecodeError(f"{info.name} {key_str!r}: Redis hash has no {f.name!r}")
            out.append(None)
            continue
        try:
            out.append(f.ftype.to_copy(f.ftype.check(f.ftype.from_hash(value))))
        except (Reject, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DecodeError(f"{info.name}.{f.name} in the Redis hash of {key_str!r}: "
                              f"{exc}") from None
    return out


def _resync_op(mops: ModelOps, key: Any, row: Any, p: int, raw: bytes, op: KeyOp | None) -> bool:
    """Fold one resync entry; True when it set the key from its current hash.

    Why this never takes PostgreSQL back in time: the hash was read *after* the
    claim, so it already holds every write to the key queued before the resync
    entry and every write queued after it up to the read (the ones in this claim
    and any behind it).  Applying it makes the row equal to a state Redis really
    had, at least as new as anything the batch holds; the later entries of this
    batch are therefore folded into it without changing it (``settled``), and the
    entries behind the claim re-apply what the hash already holds.

    A tombstone applies nothing: its delete entry is still queued or in flight and
    drains in order.  An absent hash applies nothing either (deleted and drained,
    or a TTL'd copy that expired after its drain: PostgreSQL holds the drained
    state), except for the resync of a dead-lettered delete, whose tombstone the
    ack cleared: there absence is the delete, and the row is deleted.
    """
    if row is None:  # nothing to apply: the entry counts as drained
        if op is not None:
            op.entries.append(raw)  # dead-lettered with the op if PostgreSQL rejects it
        return False
    kind = DELETE if row is DELETE else UPSERT
    value = None if row is DELETE else row
    if op is None:
        mops.ops[key] = KeyOp(kind, key, value, p, [raw])
    else:
        op.kind, op.row = kind, value
        op.entries.append(raw)
    return kind == UPSERT
