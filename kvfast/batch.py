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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvfast import codec
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
    row: dict[str, Any]
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
    #: (raw entry, reason) for entries that cannot be applied
    dead: list[tuple[bytes, str]] = field(default_factory=list)
    #: (model, key string, tombstone id) of every delete, for ack.lua
    tombstones: list[tuple[ModelInfo, str, str]] = field(default_factory=list)
    #: write times (µs) of the entries, for the drain-lag measurement
    write_times: list[int] = field(default_factory=list)
    size: int = 0


def _decode_fields(info: ModelInfo, wire: dict[str, Any], full: bool) -> dict[str, Any]:
    by_name = info.by_name
    out: dict[str, Any] = {}
    for name, raw in wire.items():
        f = by_name.get(name)
        if f is None:
            raise DecodeError(f"{info.name} has no field {name!r}")
        if raw is None:
            if not f.nullable:
                raise DecodeError(f"{info.name}.{name} is NULL but not Optional")
            out[name] = None
        else:
            try:
                value = raw if f.ftype.wire_is_value else f.ftype.from_wire(raw)
                # The producer checked this value already; re-checking catches
                # foreign or hand-edited entries before PostgreSQL sees them.
                out[name] = f.ftype.check(value)
            except (Reject, ValueError, TypeError, KeyError) as exc:
                raise DecodeError(f"{info.name}.{name} = {raw!r}: {exc}") from None
    if full and len(out) != len(by_name):
        missing = sorted(set(by_name) - set(out))
        raise DecodeError(f"{info.name} create without fields {missing}")
    return out


def _decode_key(info: ModelInfo, raw: Any) -> Any:
    try:
        value = raw if type(raw) is info.key_field.ftype.python_type else (
            info.key_field.ftype.from_wire(raw)
        )
        return info.key_field.ftype.check(value)
    except (Reject, ValueError, TypeError) as exc:
        raise DecodeError(f"{info.name} key {raw!r}: {exc}") from None


def build_batch(raw_entries: list[bytes]) -> Batch:
    batch = Batch(size=len(raw_entries))
    for raw in raw_entries:
        try:
            entry = codec.decode(raw)
            info = get_model(entry.table)
            if info is None:
                raise DecodeError(f"no model registered for table {entry.table!r}")
            key = _decode_key(info, entry.key)
            if entry.op == codec.OP_DELETE:
                row: dict[str, Any] = {}
            else:
                row = _decode_fields(info, entry.fields, entry.op == codec.OP_CREATE)
                if entry.op == codec.OP_CREATE and row[info.key] != key:
                    raise DecodeError(f"{info.name} create: key {entry.key!r} != key field")
        except DecodeError as exc:
            batch.dead.append((raw, f"undecodable entry: {exc}"))
            continue
        batch.write_times.append(entry.t_us)
        mops = batch.models.get(info.table)
        if mops is None:
            mops = batch.models[info.table] = ModelOps(info)
        op = mops.ops.get(key)
        if entry.op == codec.OP_CREATE:
            if op is None:
                mops.ops[key] = KeyOp(UPSERT, key, row, [raw])
            else:
                op.kind, op.row = UPSERT, row
                op.entries.append(raw)
        elif entry.op == codec.OP_UPDATE:
            if op is None:
                mops.ops[key] = KeyOp(UPDATE, key, row, [raw])
            elif op.kind == DELETE:
                batch.dead.append((raw, "update of a key deleted earlier in the same batch"))
            else:
                op.row.update(row)
                op.entries.append(raw)
        else:
            assert entry.tomb_id is not None
            batch.tombstones.append((info, str(key), entry.tomb_id))
            if op is None:
                mops.ops[key] = KeyOp(DELETE, key, {}, [raw])
            else:
                op.kind, op.row = DELETE, {}
                op.entries.append(raw)
    return batch
