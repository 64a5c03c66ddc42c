"""The create encoder in C (kvfast._speedups.Encoder), and the choice of encoder.

``create_encoder(info)`` returns the C encoder when kvfast.impl chose C, else
the generated Python one (kvfast.encoders, the reference).  The C encoder is
given a plan built here from the model, one tuple per field::

    (attribute, wire name, RESP bulk string of the name, kind, nullable, lo, hi, extra,
     the name in JSON followed by ":")

``kind`` mirrors the branches of ``encoders._field_code`` exactly (same
``isinstance`` / ``type() is`` tests), so the C fast path accepts only what the
Python fast path accepts unchanged.  Everything else the C code meets is
handed to the Python encoder for the whole object (``fallback``), which either
normalizes the value the Python way or raises its ValidationError.  Types
that have no C fast path get a small per-field Python function returning
(hash bytes, wire value).  The key is returned from ``key_indexes``: one index
gives the value itself, several a tuple of them in that order.  A model with
indexes also passes ``index_fields`` (the indexed fields' indexes, in
``info.indexes`` order): the Encoded tuple then has the Python encoder's fifth
item, each indexed field's hash bytes or None, and the framer writes the
records' SADDs to the index sets itself.
"""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from kvfast import impl
from kvfast.containertypes import JsonType
from kvfast.encoders import Encoded, build_create_encoder
from kvfast.fieldtypes import (
    BoolType,
    BytesType,
    DateTimeType,
    DateType,
    DecimalType,
    EnumType,
    FieldType,
    FloatType,
    IntType,
    StrType,
    UUIDType,
)
from kvfast.pgtypes import TimestampType, TimeType

if TYPE_CHECKING:
    from kvfast.model import FieldInfo, ModelInfo

__all__ = ["build_c_create_encoder", "create_encoder", "field_plan", "framer_for"]

# Field kinds: the values of kvfast/_speedups.c's enum (checked at import of the plan).
K_INT, K_STR, K_BOOL, K_FLOAT, K_DATETIME_UTC, K_TIMESTAMP = range(6)
K_DATE, K_TIME, K_DECIMAL, K_UUID, K_BYTES, K_ENUM, K_PY = range(6, 13)


def create_encoder(info: ModelInfo) -> Callable[[Any], Encoded]:
    """The create encoder of ``info`` in the implementation kvfast.impl chose."""
    if impl.speedups is not None:
        return build_c_create_encoder(info)
    return build_create_encoder(info)


def build_c_create_encoder(info: ModelInfo) -> Callable[[Any], Encoded]:
    """The C encoder of ``info``; ImportError when the extension is not built."""
    speedups = impl.require_speedups()
    fallback = build_create_encoder(info)
    plan = tuple(field_plan(info, f) for f in info.fields)
    # the key fields in key order: one gives the value, several a tuple (a composite key)
    key_indexes = tuple(f.index for f in info.key_fields)
    # a model with indexes: the indexed fields' hash values come out as a fifth
    # item, as from the Python encoder (kvfast.index)
    index_fields = tuple(info.by_name[name].index for name in info.indexes)
    encode: Callable[[Any], Encoded] = speedups.Encoder(info.cls, plan, key_indexes, fallback,
                                                        index_fields)
    return encode


def framer_for(encode: Callable[[Any], Encoded], info: ModelInfo, partitions: int,
               prefixes: list[bytes], head: bytes, sep: bytes, tail: bytes,
               max_key: int, write_field: bytes,
               index_prefixes: list[list[bytes]] | None = None
               ) -> Callable[..., tuple[Any, ...]] | None:
    """The C framing of whole records for a C encoder (None for a Python one).

    ``frame(obj[, write_id])`` returns (partition, object key, HSET command,
    queue entry) -- the bytes ``WriteBuilder.create_pieces`` makes in Python --
    plus, for a model with indexes (``index_prefixes``: per partition, the
    index set prefixes), a tuple of the record's SADD commands; or
    ``(encoded,)`` for a record whose key the Python framing handles (tuple
    keys; a key too long to index, whose error Python words).
    """
    if type(encode).__module__ != "kvfast._speedups":  # a Python encoder: Python frames
        return None
    speedups = impl.require_speedups()
    # The partition of a key: crc32(table NUL key) (ModelInfo.partition_of_bytes).
    frame: Callable[..., tuple[Any, ...]] = speedups.Framer(
        encode, info.table_bytes + b"\x00", partitions, tuple(prefixes), head, sep, tail,
        orjson.dumps, max_key, write_field,
        None if index_prefixes is None else tuple(tuple(p) for p in index_prefixes))
    return frame


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def field_plan(info: ModelInfo, f: FieldInfo) -> tuple[Any, ...]:
    """The C plan of one field (see the module docstring)."""
    ftype = f.ftype
    kind, lo, hi, extra = _kind(info, f, ftype)
    return (f.name, f.name, _bulk(f.name.encode()), kind, f.nullable, lo, hi, extra,
            orjson.dumps(f.name) + b":")


def _kind(info: ModelInfo, f: FieldInfo, ftype: FieldType) -> tuple[int, int, int, Any]:
    # The same tests, in the same order, as encoders._field_code.
    if isinstance(ftype, IntType):
        return K_INT, ftype.lo, ftype.hi, None
    if isinstance(ftype, StrType):
        return K_STR, -1 if ftype.length is None else ftype.length, int(ftype.pad), None
    if type(ftype) is DateTimeType:
        return K_DATETIME_UTC, 0, 0, None
    if type(ftype) is FloatType:
        return K_FLOAT, 0, 0, None
    if isinstance(ftype, BoolType):
        return K_BOOL, 0, 0, None
    if isinstance(ftype, BytesType):
        return K_BYTES, 0, 0, None
    check = _checker(info, f)
    if isinstance(ftype, JsonType):
        dumps = orjson.dumps

        def json_field(value: Any) -> tuple[bytes, Any]:
            value = check(value)
            return dumps(value), value

        return K_PY, 0, 0, json_field
    if isinstance(ftype, (DateType, DecimalType, UUIDType, EnumType)):
        # Exactly these classes have a C fast path; their subclasses (numeric(p,s)
        # quantizes) use the Python pair, as in the Python encoder.
        if type(ftype) is DateType:
            return K_DATE, 0, 0, None
        if type(ftype) is DecimalType:
            return K_DECIMAL, 0, 0, decimal.Decimal
        if type(ftype) is UUIDType:
            return K_UUID, 0, 0, uuid.UUID
        if type(ftype) is EnumType and all(type(m.value) is str for m in ftype.enum_cls):
            return K_ENUM, 0, 0, ftype.enum_cls
        to_hash = ftype.to_hash

        def text_field(value: Any) -> tuple[bytes, Any]:
            w = to_hash(check(value))
            return w.encode(), w

        return K_PY, 0, 0, text_field
    if type(ftype) is TimestampType:
        return K_TIMESTAMP, 0, 0, None
    if type(ftype) is TimeType:
        return K_TIME, 0, 0, None
    to_wire, hash_bytes = ftype.to_wire, ftype.hash_bytes

    def other_field(value: Any) -> tuple[bytes, Any]:
        value = check(value)
        return hash_bytes(value), to_wire(value)

    return K_PY, 0, 0, other_field


def _checker(info: ModelInfo, f: FieldInfo) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return info.check_value(f, value)

    return check
