"""Per-model encoders, generated once: object → (key, HSET fields as RESP, count, wire fields).

``Producer.create`` spends its time here, once per record.  A generic loop over
``FieldType`` methods costs ~30 µs for a 7-field booking; the generated function
below checks the common case of each field with one inline type test (an int in
bigint range, an ASCII str without NUL, a UTC datetime) and calls the full check
only for the rest, and encodes a datetime, date, Decimal or UUID to text once for
both the hash and the queue entry.

The hash fields come out already in Redis's wire protocol (RESP bulk strings),
formatted with one ``bytes %`` template per model: ``hiredis.pack_command``
took ~3.2 µs per booking HSET (ints go through a slow path in it), the template
~1.5 µs, and the producer only prepends the command header and the object key.
The code is built from the model's field list only: field names are read as
attributes (identifiers, as dataclasses require) and every other value is
passed in as a constant, never as source text.  ``generated.build_function``
compiles it, so a traceback shows the generated line and ``encode.__kvfast_source__``
holds the whole source.
"""

from __future__ import annotations

import base64
import datetime as dt
import keyword
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from kvfast.containertypes import JsonType
from kvfast.errors import ValidationError
from kvfast.fieldtypes import (
    INT64_MAX,
    INT64_MIN,
    BoolType,
    BytesType,
    DateTimeType,
    DateType,
    DecimalType,
    EnumType,
    FloatType,
    IntType,
    StrType,
    UUIDType,
)
from kvfast.generated import build_function

if TYPE_CHECKING:
    from kvfast.model import ModelInfo

__all__ = ["Encoded", "build_create_encoder"]

#: (key value, RESP bulk strings "field value …" for HSET, number of fields,
#:  {field: wire value}); a model with indexes adds (hash value or None per index)
Encoded = tuple[Any, ...]


def _bulk(data: bytes) -> bytes:
    """``data`` as a RESP bulk string, escaped for use inside a ``bytes %`` template."""
    return (b"$%d\r\n" % len(data) + data + b"\r\n").replace(b"%", b"%%")


#: the template of one field's value
_VALUE = b"$%d\r\n%b\r\n"


def build_create_encoder(info: ModelInfo) -> Callable[[Any], Encoded]:
    ns: dict[str, Any] = {
        "CLS": info.cls,
        "datetime": dt.datetime,
        "UTC": dt.UTC,
        "LO": INT64_MIN,
        "HI": INT64_MAX,
        "dumps": orjson.dumps,
        "b64": base64.b64encode,
    }

    def bad_object(obj: Any) -> None:
        raise ValidationError(
            info.name, "<object>", obj, f"expected a {info.name}, got {type(obj).__name__}"
        )

    ns["bad_object"] = bad_object
    lines = ["def encode(obj):", "    if type(obj) is not CLS:", "        bad_object(obj)"]
    fixed: list[str] = []
    template = b""
    optional: list[str] = []
    wire: list[str] = []
    for f in info.fields:
        i = f.index
        ns[f"n{i}"] = f.name
        ns[f"chk{i}"] = _checker(info, f.index)
        v = f"v{i}"
        read = f"obj.{f.name}" if f.name.isidentifier() and not keyword.iskeyword(f.name) \
            else f"getattr(obj, n{i})"
        lines.append(f"    {v} = {read}")
        body = _field_code(f.ftype, i, v, ns)
        if f.nullable:
            lines.append(f"    if {v} is None:")
            lines.append(f"        w{i} = None")
            if f.name in info.indexes:
                lines.append(f"        h{i} = None")
            lines.append("    else:")
            lines += ["        " + b for b in body]
            ns[f"t{i}"] = _bulk(f.name.encode()) + _VALUE
            optional.append(f"    if {v} is not None:\n        h += t{i} % (len(h{i}), h{i})\n"
                            "        n += 1")
        else:
            lines.append(f"    if {v} is None:")
            lines.append(f"        {v} = chk{i}({v})")
            lines += ["    " + b for b in body]
            template += _bulk(f.name.encode()) + _VALUE
            fixed.append(f"len(h{i}), h{i}")
        wire.append(f"n{i}: w{i}")
    ns["TEMPLATE"] = template
    # The key field is never nullable, so the template holds at least one field.
    lines.append(f"    h = TEMPLATE % ({', '.join(fixed)},)")
    lines.append(f"    n = {len(fixed)}")
    lines += optional
    # The key as check_key normalizes it: a composite key is a tuple of its parts.
    key = ", ".join(f"v{f.index}" for f in info.key_fields) + ("," if info.composite else "")
    # A model with indexes gets a fifth item: the indexed fields' hash values (None
    # for NULL), which the producer adds to the index sets (kvfast.index).
    indexed = "".join(f", h{info.by_name[name].index}" for name in info.indexes)
    extra = f", ({indexed[2:]},)" if indexed else ""
    lines.append(f"    return ({key}), h, n, {{{', '.join(wire)}}}{extra}")
    encode: Callable[[Any], Encoded] = build_function(
        "\n".join(lines), f"<kvfast encoder {info.name}>", ns, "encode")
    return encode


def _checker(info: ModelInfo, index: int) -> Callable[[Any], Any]:
    f = info.fields[index]

    def check(value: Any) -> Any:
        return info.check_value(f, value)

    return check


def _field_code(ftype: Any, i: int, v: str, ns: dict[str, Any]) -> list[str]:
    """Lines that check ``v`` (fast path inline) and set ``h{i}`` (the hash value,
    bytes) and ``w{i}`` (the queue entry's JSON value)."""
    if isinstance(ftype, IntType):
        ns[f"lo{i}"], ns[f"hi{i}"] = ftype.lo, ftype.hi
        return [f"if type({v}) is not int or not lo{i} <= {v} <= hi{i}:",
                f"    {v} = chk{i}({v})",
                f"h{i} = b'%d' % {v}",
                f"w{i} = {v}"]
    if isinstance(ftype, StrType):
        # varchar(n)/character(n): a longer value, or trailing spaces to strip, go to chk.
        ns[f"len{i}"] = ftype.length
        extra = "" if ftype.length is None else f" or len({v}) > len{i}"
        extra += f" or {v}[-1:] == ' '" if ftype.pad else ""
        return [f"if type({v}) is not str or '\\x00' in {v} or not {v}.isascii(){extra}:",
                f"    {v} = chk{i}({v})",
                f"h{i} = {v}.encode()",
                f"w{i} = {v}"]
    if type(ftype) is DateTimeType:
        # isoformat() costs ~1.8 µs here and records of a batch often share one
        # datetime object (created_at = updated_at = now): remember the last one.
        # The cache holds a reference, so `is` cannot match a recycled object.
        # One (datetime, text, bytes) tuple, read and replaced whole: two threads
        # sharing an encoder can never pair one datetime with the other's text.
        ns.setdefault("dtc", [(None, None, None)])
        return [f"c{i} = dtc[0]",
                f"if {v} is c{i}[0]:",
                f"    w{i} = c{i}[1]",
                f"    h{i} = c{i}[2]",
                "else:",
                f"    if type({v}) is not datetime or {v}.tzinfo is not UTC:",
                f"        {v} = chk{i}({v})",
                f"    w{i} = {v}.isoformat()",
                f"    h{i} = w{i}.encode()",
                f"    dtc[0] = ({v}, w{i}, h{i})"]
    if type(ftype) is FloatType:
        ns[f"tw{i}"] = ftype.to_wire
        # v - v is 0.0 for every finite float and NaN for NaN and ±Infinity.
        # repr: the text hiredis.pack_command wrote (float() reads it back exactly).
        return [f"if type({v}) is not float:",
                f"    {v} = chk{i}({v})",
                f"h{i} = repr({v}).encode()",
                f"w{i} = {v} if {v} - {v} == 0.0 else tw{i}({v})"]
    if isinstance(ftype, BoolType):
        return [f"if type({v}) is not bool:",
                f"    {v} = chk{i}({v})",
                f"h{i} = b'1' if {v} else b'0'",
                f"w{i} = {v}"]
    if isinstance(ftype, BytesType):
        return [f"if type({v}) is not bytes:",
                f"    {v} = chk{i}({v})",
                f"h{i} = {v}",
                f"w{i} = b64({v}).decode('ascii')"]
    if isinstance(ftype, JsonType):
        return [f"{v} = chk{i}({v})",
                f"h{i} = dumps({v})",
                f"w{i} = {v}"]
    if isinstance(ftype, (DateType, DecimalType, UUIDType, EnumType)):
        # Their hash text and wire text are the same string: encode once.
        ns[f"th{i}"] = ftype.to_hash
        return [f"{v} = chk{i}({v})",
                f"w{i} = th{i}({v})",
                f"h{i} = w{i}.encode()"]
    # Every other type (real, time, interval, arrays, enum types…): its methods.
    ns[f"tw{i}"], ns[f"hb{i}"] = ftype.to_wire, ftype.hash_bytes
    return [f"{v} = chk{i}({v})",
            f"w{i} = tw{i}({v})",
            f"h{i} = hb{i}({v})"]
