"""A claimed batch, decoded and collapsed: at most one operation per key.

``INSERT … ON CONFLICT`` cannot touch a row twice in one statement, so the
entries of a batch are folded per key, in queue order, into one final op:

    create            → upsert (every column)
    update            → update (the changed columns), or merged into a prior upsert/update
    delete            → delete (discarding what came before it)
    create after delete → upsert (an upsert writes every column: same result)

Entries that do not decode, name an unknown model or field, or update a key the
same batch deleted, become dead letters with the reason; they never block the
rest of the batch.

A batch may hold several partitions' entries (one claim can gather many); every
op, dead entry and tombstone remembers its partition so that each partition is
acked, and its dead letters kept, on its own.  A key lives in one partition, so
folding per key never mixes partitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvfast import codec
from kvfast.decoders import build_row_decoder, decode_value
from kvfast.errors import DecodeError
from kvfast.fieldtypes import Reject
from kvfast.model import ModelInfo, get_model

__all__ = ["DELETE", "UPDATE", "UPSERT", "Batch", "KeyOp", "ModelOps", "build_batch"]

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


@dataclass(slots=True)
class ModelOps:
    info: ModelInfo
    ops: dict[Any, KeyOp] = field(default_factory=dict)

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


def _decode_changes(info: ModelInfo, wire: dict[str, Any]) -> dict[str, Any]:
    by_name = info.by_name
    out: dict[str, Any] = {}
    for name, raw in wire.items():
        f = by_name.get(name)
        if f is None:
            raise DecodeError(f"{info.name} has no field {name!r}")
        if name == info.key:
            raise DecodeError(f"{info.name}: an update cannot change the key")
        out[name] = decode_value(info, f, raw)
    return out


def _decode_key(info: ModelInfo, raw: Any) -> Any:
    try:
        value = raw if type(raw) is info.key_field.ftype.python_type else (
            info.key_field.ftype.from_wire(raw)
        )
        return info.key_field.ftype.check(value)
    except (Reject, ValueError, TypeError) as exc:
        raise DecodeError(f"{info.name} key {raw!r}: {exc}") from None


_row_decoders: dict[int, tuple[ModelInfo, Callable[[dict[str, Any]], list[Any]]]] = {}


def _row_decoder(info: ModelInfo) -> Callable[[dict[str, Any]], list[Any]]:
    cached = _row_decoders.get(id(info))
    if cached is None or cached[0] is not info:
        cached = _row_decoders[id(info)] = (info, build_row_decoder(info))
    return cached[1]


def build_batch(parts: Iterable[tuple[int, Sequence[bytes]]]) -> Batch:
    """Decode and fold ``(partition, entries)`` pairs, each in queue order."""
    batch = Batch()
    for partition, raw_entries in parts:
        batch.size += len(raw_entries)
        _fold(batch, partition, raw_entries)
    return batch


def _fold(batch: Batch, p: int, raw_entries: Sequence[bytes]) -> None:
    models = batch.models
    dead = batch.dead
    write_times = batch.write_times
    for raw in raw_entries:
        try:
            table, op_kind, entry_key, fields, t_us, tomb_id = codec.check(codec.parse(raw))
            mops = models.get(table)
            if mops is None:
                info = get_model(table)
                if info is None:
                    raise DecodeError(f"no model registered for table {table!r}")
                mops = ModelOps(info)
            info = mops.info
            if op_kind == codec.OP_CREATE:
                row: Any = _row_decoder(info)(fields)
                key = row[info.key_field.index]
                if key != entry_key and str(key) != entry_key:
                    raise DecodeError(f"{info.name} create: key {entry_key!r} != key field")
            elif op_kind == codec.OP_UPDATE:
                key = _decode_key(info, entry_key)
                row = _decode_changes(info, fields)
            else:
                key = _decode_key(info, entry_key)
                row = None
        except DecodeError as exc:
            dead.append((raw, f"undecodable entry: {exc}", p))
            continue
        if table not in models:
            models[table] = mops
        write_times.append(t_us)
        op = mops.ops.get(key)
        if op_kind == codec.OP_CREATE:
            if op is None:
                mops.ops[key] = KeyOp(UPSERT, key, row, p, [raw])
            else:
                op.kind, op.row = UPSERT, row
                op.entries.append(raw)
        elif op_kind == codec.OP_UPDATE:
            if op is None:
                mops.ops[key] = KeyOp(UPDATE, key, row, p, [raw])
            elif op.kind == DELETE:
                dead.append((raw, "update of a key deleted earlier in the same batch", p))
            elif op.kind == UPSERT:
                index = info.by_name
                for name, value in row.items():
                    op.row[index[name].index] = value
                op.entries.append(raw)
            else:
                op.row.update(row)
                op.entries.append(raw)
        else:
            assert tomb_id is not None
            batch.tombstones.append((p, info, str(key), tomb_id))
            if op is None:
                mops.ops[key] = KeyOp(DELETE, key, None, p, [raw])
            else:
                op.kind, op.row = DELETE, None
                op.entries.append(raw)
