"""Column types a model spells out: numeric(p,s), real, timestamp, time, interval
and PostgreSQL enum types (json/jsonb and arrays: ``containertypes``).

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

from kvfast.fieldtypes import DecimalType, FieldType, FloatType, IsoType, Reject

__all__ = ["IntervalType", "NumericType", "PgEnumType", "RealType", "TimeType",
           "TimestampType"]


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
_FLOAT32_INF = _FLOAT32.pack(math.inf)


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
            bits = _FLOAT32_INF
        rounded: float = _FLOAT32.unpack(bits)[0]
        # struct rounds the midpoint above float32's largest value to infinity.
        if math.isinf(rounded):
            raise Reject("out of range for real (float32): it would become infinity")
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


class TimestampType(IsoType):
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

    parse = staticmethod(dt.datetime.fromisoformat)


class TimeType(IsoType):
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

    parse = staticmethod(dt.time.fromisoformat)


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
