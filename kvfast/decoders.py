"""Per-model decoders, generated once: the wire fields of a create → a COPY row.

The drainer's mirror of ``encoders``: a generic loop over ``FieldType`` methods
cost ~20 µs per booking and was most of a drainer's CPU.  The generated function
reads each field by name, accepts the common case with one inline test (an int
in bigint range, a str without NUL, an ISO datetime in UTC) and sends anything
else through the full ``from_wire`` + ``check`` path, which raises DecodeError
naming the field.  Values are re-checked because a queue may hold entries
written by something other than kvfast's producer.  Compiled by
``generated.build_function``: tracebacks show the generated lines.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvfast.errors import DecodeError
from kvfast.fieldtypes import INT64_MAX, INT64_MIN, BoolType, DateTimeType, IntType, Reject, StrType
from kvfast.generated import build_function

if TYPE_CHECKING:
    from kvfast.model import FieldInfo, ModelInfo

__all__ = ["build_row_decoder", "decode_value"]


def decode_value(info: ModelInfo, f: FieldInfo, raw: Any) -> Any:
    """One wire value → its checked value, ready for COPY (DecodeError naming the field)."""
    if raw is None:
        if f.nullable:
            return None
        raise DecodeError(f"{info.name}.{f.name} is NULL but not Optional")
    try:
        value = raw if f.ftype.wire_is_value else f.ftype.from_wire(raw)
        return f.ftype.to_copy(f.ftype.check(value))
    # ArithmeticError: decimal.InvalidOperation ("twelve" as a Decimal) is one.
    except (Reject, ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as exc:
        raise DecodeError(f"{info.name}.{f.name} = {raw!r}: {exc}") from None


def build_row_decoder(info: ModelInfo) -> Callable[[dict[str, Any]], list[Any]]:
    """``decode(fields) -> [value in field order]`` for the full row of a create."""
    ns: dict[str, Any] = {
        "LO": INT64_MIN,
        "HI": INT64_MAX,
        "fromiso": dt.datetime.fromisoformat,
        "UTC": dt.UTC,
        "NF": len(info.fields),
        "dtc": [(None, None)],
    }

    def bad_shape(fields: dict[str, Any]) -> None:
        missing = sorted(set(info.field_names) - set(fields))
        extra = sorted(set(fields) - set(info.field_names))
        raise DecodeError(f"{info.name} create: missing fields {missing}, unknown {extra}")

    ns["bad_shape"] = bad_shape
    lines = ["def decode(f):", "    if len(f) != NF:", "        bad_shape(f)", "    try:"]
    for fi in info.fields:
        i = fi.index
        ns[f"n{i}"] = fi.name
        ns[f"slow{i}"] = _slow(info, fi)
        v = f"v{i}"
        lines.append(f"        {v} = f[n{i}]")
        fast = _fast_test(fi.ftype, v, i, ns)
        if fast is None:
            lines.append(f"        {v} = slow{i}({v})")
        elif isinstance(fi.ftype, DateTimeType):
            # Rows of one batch often share a timestamp string: remember the last.
            # One (text, datetime) tuple, read and replaced whole (thread-safe).
            lines += [
                f"        c{i} = dtc[0]",
                f"        if {v} == c{i}[0]:",
                f"            {v} = c{i}[1]",
                "        else:",
                f"            s{i} = {v}",
                f"            {v} = slow{i}({v})",
                f"            dtc[0] = (s{i}, {v})",
            ]
        else:
            lines.append(f"        if {fast}:")
            lines.append(f"            {v} = slow{i}({v})")
    lines += ["    except KeyError:", "        bad_shape(f)"]
    lines.append(f"    return [{', '.join(f'v{fi.index}' for fi in info.fields)}]")
    decode: Callable[[dict[str, Any]], list[Any]] = build_function(
        "\n".join(lines), f"<kvfast decoder {info.name}>", ns, "decode")
    return decode


def _slow(info: ModelInfo, f: FieldInfo) -> Callable[[Any], Any]:
    def slow(raw: Any) -> Any:
        return decode_value(info, f, raw)

    return slow


def _fast_test(ftype: Any, v: str, i: int, ns: dict[str, Any]) -> str | None:
    """A Python expression true when ``v`` needs the slow path (None: always slow)."""
    if isinstance(ftype, IntType):
        ns[f"lo{i}"], ns[f"hi{i}"] = ftype.lo, ftype.hi
        return f"type({v}) is not int or not lo{i} <= {v} <= hi{i}"
    if isinstance(ftype, StrType):
        ns[f"len{i}"] = ftype.length
        extra = "" if ftype.length is None else f" or len({v}) > len{i}"
        extra += f" or {v}[-1:] == ' '" if ftype.pad else ""
        return f"type({v}) is not str or '\\x00' in {v}{extra}"
    if isinstance(ftype, BoolType):
        return f"type({v}) is not bool"
    if type(ftype) is DateTimeType:
        return "True"
    return None
