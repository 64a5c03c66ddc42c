"""Column types a model spells out: numeric(p,s), real, timestamp, time, interval,
json/jsonb, one-dimensional arrays and PostgreSQL enum types.

Same contract as ``fieldtypes`` (check / to_hash / from_hash / to_wire / from_wire /
from_pg / to_copy).  Each type refuses at the producer what its column would reject
or change, and normalizes what the column would normalize, so that Redis holds what
PostgreSQL will hold:

* ``numeric(p,s)``: refused when it needs more than s fractional digits or more
  than p-s integer digits (never rounded); padded to scale s (``1.5`` → ``1.50``),
  which is what PostgreSQL returns.
* ``real``: rounded to float32, in both stores, to the shortest decimal that names
  that float32 (``0.1`` stays ``0.1``; ``0.123456789`` becomes ``0.12345679``).
  Refusing every float that is not exactly a float32 would refuse ``0.1``: a
  ``real`` column is a request for float32 precision, so rounding is the
  expected result, and doing it at the producer keeps both stores equal.  Finite
  values beyond float32's range (they would become infinity) and non-zero values
  that would become 0 are refused.
* ``timestamp`` and ``time``: naive values only (an aware one is refused: kvfast
  will not pick a zone for it).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import struct
from decimal import Decimal
from typing import Any

import orjson

from kvfast.fieldtypes import (
    INT64_MAX,
    INT64_MIN,
    DecimalType,
    FieldType,
    FloatType,
    Reject,
    StrType,
    _check_text,
)

__all__ = ["ArrayType", "IntervalType", "JsonType", "NumericType", "PgEnumType", "RealType",
           "TimeType", "TimestampType"]


class NumericType(DecimalType):
    """numeric(p,s): exact fit or refused; the value comes back with scale s."""

    def __init__(self, precision: int, scale: int) -> None:
        self.precision, self.scale = precision, scale
        self.pg_type = f"numeric({precision},{scale})"
        self._quantum = Decimal(1).scaleb(-scale)
        self._context = decimal.Context(
            prec=precision + 2, traps=[decimal.Inexact, decimal.InvalidOperation]
        )

    def check(self, value: Any) -> Any:
        value = super().check(value)
        if value and value.adjusted() >= self.precision - self.scale:
            raise Reject(
                f"needs more than {self.precision - self.scale} digits before the point "
                f"({self.pg_type})"
            )
        try:
            value = value.quantize(self._quantum, context=self._context)
        except (decimal.Inexact, decimal.InvalidOperation):
            raise Reject(
                f"needs more than {self.scale} digits after the point ({self.pg_type}); "
                "round it first"
            ) from None
        # PostgreSQL has no negative zero: -0.00 comes back as 0.00.
        return value if value else value.copy_abs()


_FLOAT32 = struct.Struct("f")


class RealType(FieldType):
    """real (float32): rounded to float32 in both stores (see the module docstring)."""

    pg_type = "real"
    copy_type = "float4"
    python_type = float

    def check(self, value: Any) -> Any:
        value = _DOUBLE.check(value)
        if not math.isfinite(value):
            return value
        try:
            bits = _FLOAT32.pack(value)
        except OverflowError:
            raise Reject("out of range for real (float32)") from None
        rounded: float = _FLOAT32.unpack(bits)[0]
        if rounded == 0.0 and value != 0.0:
            raise Reject("too small for real (float32): it would become 0")
        return _shortest(rounded, bits)

    def to_hash(self, value: Any) -> str:
        return repr(value)

    def from_hash(self, raw: bytes) -> float:
        return float(raw)

    def to_wire(self, value: Any) -> Any:
        return _DOUBLE.to_wire(value)

    def from_wire(self, raw: Any) -> Any:
        return _DOUBLE.from_wire(raw)

    def from_pg(self, value: Any) -> Any:
        # psycopg reads real as the float32's digits in text, its exact value in binary.
        return self.check(value)


_DOUBLE = FloatType()


def _shortest(rounded: float, bits: bytes) -> float:
    """The float of the shortest decimal that rounds to the same float32."""
    for digits in range(1, 10):
        candidate = float(f"{rounded:.{digits}g}")
        if _FLOAT32.pack(candidate) == bits:
            return candidate
    return rounded  # pragma: no cover - 9 significant digits always identify a float32


class TimestampType(FieldType):
    """timestamp without time zone: naive datetimes only, stored as given."""

    pg_type = "timestamp without time zone"
    copy_type = "timestamp"
    python_type = dt.datetime

    def check(self, value: Any) -> Any:
        if not isinstance(value, dt.datetime):
            raise Reject(f"expected a naive datetime, got {type(value).__name__}")
        if value.tzinfo is not None:
            raise Reject("aware datetime on a timestamp without time zone column: pass a "
                         "naive one (kvfast does not choose a zone for it)")
        if type(value) is not dt.datetime or value.fold:
            value = dt.datetime(value.year, value.month, value.day, value.hour, value.minute,
                                value.second, value.microsecond)
        return value

    def to_hash(self, value: Any) -> str:
        return value.isoformat()  # type: ignore[no-any-return]

    def from_hash(self, raw: bytes) -> dt.datetime:
        return dt.datetime.fromisoformat(raw.decode("ascii"))

    def to_wire(self, value: Any) -> Any:
        return value.isoformat()

    def from_wire(self, raw: Any) -> Any:
        return dt.datetime.fromisoformat(raw)


class TimeType(FieldType):
    """time without time zone: naive ``datetime.time`` values."""

    pg_type = "time without time zone"
    copy_type = "time"
    python_type = dt.time

    def check(self, value: Any) -> Any:
        if not isinstance(value, dt.time):
            raise Reject(f"expected datetime.time, got {type(value).__name__}")
        if value.tzinfo is not None:
            raise Reject("aware time on a time without time zone column: pass a naive one")
        if type(value) is not dt.time or value.fold:
            value = dt.time(value.hour, value.minute, value.second, value.microsecond)
        return value

    def to_hash(self, value: Any) -> str:
        return value.isoformat()  # type: ignore[no-any-return]

    def from_hash(self, raw: bytes) -> dt.time:
        return dt.time.fromisoformat(raw.decode("ascii"))

    def to_wire(self, value: Any) -> Any:
        return value.isoformat()

    def from_wire(self, raw: Any) -> Any:
        return dt.time.fromisoformat(raw)


_MICROSECOND = dt.timedelta(microseconds=1)


class IntervalType(FieldType):
    """interval as ``datetime.timedelta``; every timedelta fits (days, microseconds).

    Hash and wire form: the whole number of microseconds as text (a timedelta's
    range exceeds a 64-bit JSON integer)."""

    pg_type = "interval"
    copy_type = "interval"
    python_type = dt.timedelta

    def check(self, value: Any) -> Any:
        if not isinstance(value, dt.timedelta):
            raise Reject(f"expected datetime.timedelta, got {type(value).__name__}")
        if type(value) is not dt.timedelta:
            value = dt.timedelta(value.days, value.seconds, value.microseconds)
        return value

    def to_hash(self, value: Any) -> str:
        return str(value // _MICROSECOND)

    def from_hash(self, raw: bytes) -> dt.timedelta:
        return dt.timedelta(microseconds=int(raw))

    def to_wire(self, value: Any) -> Any:
        return str(value // _MICROSECOND)

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not str:
            raise Reject(f"interval wire value {raw!r} is not a str")
        return dt.timedelta(microseconds=int(raw))


class PgEnumType(FieldType):
    """A PostgreSQL enum type: a Python Enum of str values, or a str among ``labels``."""

    copy_type = "text"

    def __init__(self, name: str, labels: tuple[str, ...], enum_cls: type[enum.Enum] | None):
        self.pg_type = name
        self.labels = labels
        self._allowed = frozenset(labels)
        self.enum_cls = enum_cls
        self.python_type = enum_cls if enum_cls is not None else str

    def check(self, value: Any) -> Any:
        cls = self.enum_cls
        if cls is not None:
            if isinstance(value, cls):
                return value
            if isinstance(value, str):
                try:
                    return cls(str.__str__(value))
                except ValueError:
                    pass
            raise Reject(f"expected a {cls.__name__} member (enum type {self.pg_type})")
        if not isinstance(value, str):
            raise Reject(f"expected str, got {type(value).__name__}")
        value = str.__str__(value)
        if value not in self._allowed:
            raise Reject(f"not a label of enum type {self.pg_type} {list(self.labels)}")
        return value

    def _label(self, value: Any) -> str:
        return value.value if self.enum_cls is not None else value  # type: ignore[no-any-return]

    def to_hash(self, value: Any) -> str:
        return self._label(value)

    def from_hash(self, raw: bytes) -> Any:
        return self.check(raw.decode("utf-8"))

    def to_wire(self, value: Any) -> Any:
        return self._label(value)

    def from_pg(self, value: Any) -> Any:
        return self.check(value)

    def to_copy(self, value: Any) -> Any:
        return self._label(value)

    def __repr__(self) -> str:
        return f"PgEnumType({self.pg_type})"


class ArrayType(FieldType):
    """A one-dimensional array of a scalar type, as a list (None elements if allowed).

    Hash form: the JSON array of the elements' wire values; COPY form: the list of
    the elements' COPY values, under the element's array type."""

    python_type = list

    def __init__(self, element: FieldType, element_nullable: bool) -> None:
        self.element = element
        self.element_nullable = element_nullable
        self.pg_type = element.pg_type + "[]"
        # A binary array names its element type, which PostgreSQL checks against the
        # column's: varchar(n) elements go as varchar.  psycopg has no binary dumper
        # for character(n) (bpchar) elements: those are staged as text[], which the
        # INSERT casts (text → character is an implicit cast).
        padded = isinstance(element, StrType) and element.pad
        bounded = isinstance(element, StrType) and element.length is not None and not padded
        self.copy_type = "varchar[]" if bounded else element.copy_type + "[]"
        self._stage = "text[]" if padded else self.pg_type

    @property
    def stage_type(self) -> str:
        return self._stage

    def check(self, value: Any) -> Any:
        if type(value) is not list:
            raise Reject(f"expected list, got {type(value).__name__}")
        element = self.element
        out: list[Any] = []
        for i, item in enumerate(value):
            if item is None:
                if not self.element_nullable:
                    raise Reject(f"element {i} is None but the element type is not Optional")
                out.append(None)
                continue
            try:
                out.append(element.check(item))
            except Reject as exc:
                raise Reject(f"element {i} ({item!r}): {exc}") from None
        return out

    def to_wire(self, value: Any) -> Any:
        tw = self.element.to_wire
        return [None if x is None else tw(x) for x in value]

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not list:
            raise Reject(f"array wire value {raw!r} is not a list")
        fw = self.element.from_wire
        return [None if x is None else fw(x) for x in raw]

    def to_hash(self, value: Any) -> bytes:
        return orjson.dumps(self.to_wire(value))

    def from_hash(self, raw: bytes) -> Any:
        return self.check(self.from_wire(orjson.loads(raw)))

    def from_pg(self, value: Any) -> Any:
        fp = self.element.from_pg
        return [None if x is None else fp(x) for x in value]

    def to_copy(self, value: Any) -> Any:
        tc = self.element.to_copy
        return [None if x is None else tc(x) for x in value]

    def __repr__(self) -> str:
        return f"ArrayType({self.element!r})"


class JsonType(FieldType):
    """dict or list, stored as jsonb (default) or json; only values that come back
    unchanged pass."""

    wire_is_value = True

    def __init__(self, container: type, pg_type: str = "jsonb") -> None:
        self.python_type = container
        self.pg_type = self.copy_type = pg_type
        # json keeps its text as written; jsonb prints numbers as plain decimals.
        self._exponents = pg_type == "json"

    def check(self, value: Any) -> Any:
        if type(value) is not self.python_type:
            raise Reject(f"expected {self.python_type.__name__}, got {type(value).__name__}")
        _check_json(value, 0, self._exponents)
        return value

    def to_hash(self, value: Any) -> bytes:
        return orjson.dumps(value)

    def from_hash(self, raw: bytes) -> Any:
        return orjson.loads(raw)


_JSON_MAX_DEPTH = 200


def _check_json(value: Any, depth: int, exponents: bool = False) -> None:
    """Refuse what jsonb (json) would change or reject, so the value round-trips exactly."""
    if depth > _JSON_MAX_DEPTH:
        raise Reject(f"JSON nested deeper than {_JSON_MAX_DEPTH}")
    kind = type(value)
    if kind is str:
        _check_text(value)
    elif kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise Reject(f"JSON object key {k!r} is not a str")
            _check_text(k)
            _check_json(v, depth + 1, exponents)
    elif kind is list:
        for v in value:
            _check_json(v, depth + 1, exponents)
    elif kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise Reject("JSON integer outside 64 bits")
    elif kind is float:
        if not math.isfinite(value):
            raise Reject("JSON cannot hold NaN or Infinity")
        # jsonb prints numbers as plain decimals: 1e300 would come back as an int.
        if not exponents and "e+" in repr(value):
            raise Reject(f"JSON float {value!r} does not round-trip through jsonb")
    elif value is None or kind is bool:
        pass
    else:
        raise Reject(f"JSON cannot hold a {kind.__name__}")
