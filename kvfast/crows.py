"""The drainer's C create decoder: a create entry → one binary COPY row, and its plan.

``kvfast._speedups.create_row(raw, codecs)`` (kvfast/_copyrows.c) parses a
create entry of a model in ``codecs`` straight into the bytes psycopg's
``Copy.write_row`` would write for the row the Python decoder
(``decoders.build_row_decoder``) makes of it, and returns
``(codec, key, row bytes, write time, mark id)``; anything it does not take
(another op or model version, a value out of range or not in canonical wire
form, JSON it is not sure of) returns None and goes the Python way, so errors
keep their Python wording.  ``row_codec(info)`` builds a model's codec: one
tuple per field, ``(name, kind, nullable, lo, hi, width, length, pad, extra)``.

Field types with a C kind are exactly the classes below (``type() is``, as
``cencoders`` does: a subclass such as numeric(p,s) may normalize).  The rest
(json/jsonb, arrays, numeric, real, interval, subclasses) get ``R_PY``: a
Python function of the field's JSON text that decodes it the Python way and
dumps it with psycopg's binary dumper for the field's COPY type (the dumper
``Copy.set_types`` picks), so those bytes are the Python path's by construction.

Only models with one key that is an int or text field get a codec (the key is
returned as the value itself); the others drain the Python way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import Format

from kvfast import impl
from kvfast.decoders import decode_value
from kvfast.errors import DecodeError
from kvfast.fieldtypes import (
    BoolType,
    BytesType,
    DateTimeType,
    DateType,
    EnumType,
    FieldType,
    FloatType,
    IntType,
    StrType,
    UUIDType,
)
from kvfast.model import model_version
from kvfast.pgtypes import PgEnumType, TimestampType, TimeType

if TYPE_CHECKING:
    from kvfast.model import FieldInfo, ModelInfo

__all__ = ["row_codec", "row_field_plan"]

# Row field kinds: the values of kvfast/_copyrows.c's enum.
R_INT, R_STR, R_BOOL, R_FLOAT8, R_TSTZ, R_TS, R_DATE, R_TIME = range(8)
R_UUID, R_BYTEA, R_ENUM, R_PY = range(8, 12)

_INT_WIDTH = {"int2": 2, "int4": 4, "int8": 8}
_SIMPLE_KINDS: dict[type, int] = {
    BoolType: R_BOOL, FloatType: R_FLOAT8, DateTimeType: R_TSTZ, TimestampType: R_TS,
    DateType: R_DATE, TimeType: R_TIME, UUIDType: R_UUID, BytesType: R_BYTEA,
}
_LENGTH = struct.Struct("!i")


def row_codec(info: ModelInfo) -> Any | None:
    """The C ``RowCodec`` of ``info``, or None (Python implementation, or a key C
    does not return: composite, or neither int nor text)."""
    speedups = impl.speedups
    if speedups is None or info.composite:
        return None
    key = info.key_fields[0]
    plan = tuple(row_field_plan(info, f) for f in info.fields)
    kind = plan[key.index][1]
    if kind not in (R_INT, R_STR):
        return None
    return speedups.RowCodec(info, orjson.dumps(model_version(info)), plan, key.index,
                             kind == R_STR)


def row_field_plan(info: ModelInfo, f: FieldInfo) -> tuple[Any, ...]:
    """The C plan of one field (see the module docstring)."""
    ftype = f.ftype
    kind, lo, hi, width, length, pad, extra = _kind(info, f, ftype)
    return (f.name.encode("utf-8"), kind, int(f.nullable), lo, hi, width, length, int(pad),
            extra)


def _kind(info: ModelInfo, f: FieldInfo,
          ftype: FieldType) -> tuple[int, int, int, int, int, bool, Any]:
    cls = type(ftype)
    if isinstance(ftype, IntType) and cls is IntType:
        return R_INT, ftype.lo, ftype.hi, _INT_WIDTH[ftype.copy_type], 0, False, None
    if isinstance(ftype, StrType) and cls is StrType:
        return (R_STR, 0, 0, 0, -1 if ftype.length is None else ftype.length, ftype.pad,
                None)
    if cls in _SIMPLE_KINDS:
        return _SIMPLE_KINDS[cls], 0, 0, 0, 0, False, None
    if isinstance(ftype, EnumType) and cls is EnumType and all(
            type(m.value) is str for m in ftype.enum_cls):
        return R_ENUM, 0, 0, 0, 0, False, frozenset(m.value for m in ftype.enum_cls)
    if isinstance(ftype, PgEnumType) and cls is PgEnumType:
        return R_ENUM, 0, 0, 0, 0, False, frozenset(ftype.labels)
    return R_PY, 0, 0, 0, 0, False, python_field(info, f)


def python_field(info: ModelInfo, f: FieldInfo) -> Callable[[bytes], bytes | None]:
    """``field(JSON text of the value) -> its COPY bytes (length first)``, or None
    when the Python decoder refuses the value (the entry then goes the Python way
    and is dead-lettered in its words)."""
    tx = Transformer()
    oid = psycopg.adapters.types.get_oid(f.ftype.copy_type)
    tx.set_dumper_types([oid], Format.BINARY)
    formats = [PyFormat.BINARY]
    dump = tx.dump_sequence
    loads = orjson.loads
    pack = _LENGTH.pack
    # An element type psycopg cannot dump is the COPY's failure either way.
    refused = (DecodeError, orjson.JSONDecodeError, TypeError, ValueError, OverflowError,
               psycopg.DataError)

    def field(span: bytes) -> bytes | None:
        try:
            value = decode_value(info, f, loads(span))
            data = dump([value], formats)[0]
        except refused:
            return None
        if data is None:  # a checked value is never None: not for C, to be safe
            return None
        return pack(len(data)) + bytes(data)

    return field
