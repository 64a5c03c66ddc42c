"""Python field types ↔ PostgreSQL columns ↔ the three encodings kvfast uses.

Every supported annotation maps to one ``FieldType`` that knows:

* ``pg_type``   the PostgreSQL column type (also the psycopg COPY ``set_types`` name);
* ``check``     refuse a value PostgreSQL could not hold, return it normalized;
* ``to_hash`` / ``from_hash``   the Redis hash field value (bytes-safe text);
* ``to_wire`` / ``from_wire``   the JSON value inside a queue entry (orjson);
* ``from_pg``   the value psycopg returns, normalized to what was written.

One module per family: this one holds the integer, text, boolean, bytea, uuid and
enum types and today's default float/numeric/timestamptz/date; ``pgtypes`` the
column types a model must spell out (numeric(p,s), real, timestamp, time,
interval, PostgreSQL enums); ``containertypes`` json/jsonb and arrays;
``columns`` maps annotations
(``Annotated[str, kvfast.VarChar(36)]``) to them.

``None`` is never encoded here: a NULL is an absent hash field and a JSON null.
Datetimes are normalized to UTC on the way in, because PostgreSQL's timestamptz
keeps the instant, not the offset; both read paths then return the same value.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

__all__ = ["FieldType", "Reject"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# PostgreSQL numeric: up to 131072 digits before the point, 16383 after.
NUMERIC_MAX_INT_DIGITS = 131072
NUMERIC_MAX_SCALE = 16383
_UTC = dt.UTC


class Reject(Exception):
    """A value a field type refuses; the model turns it into a ValidationError."""


class FieldType:
    pg_type: str = ""
    #: the psycopg type name given to ``Copy.set_types`` (binary COPY)
    copy_type: str = ""
    python_type: type = object
    #: the wire value equals the Python value (no conversion on the hot path)
    wire_is_value: bool = False

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def to_hash(self, value: Any) -> bytes | str | int:
        raise NotImplementedError

    def from_hash(self, raw: bytes) -> Any:
        raise NotImplementedError

    def to_wire(self, value: Any) -> Any:
        return value

    def from_wire(self, raw: Any) -> Any:
        return raw

    def from_pg(self, value: Any) -> Any:
        return value

    def to_copy(self, value: Any) -> Any:
        """The checked value as psycopg's COPY dumper for ``copy_type`` takes it."""
        return value

    def hash_bytes(self, value: Any) -> bytes:
        """``to_hash`` as bytes (the generated encoders write RESP directly)."""
        h = self.to_hash(value)
        if type(h) is bytes:
            return h
        return b"%d" % h if type(h) is int else str(h).encode("utf-8")

    @property
    def stage_type(self) -> str:
        """The column type of the drainer's staging table (usually ``pg_type``)."""
        return self.pg_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pg_type})"


#: PostgreSQL integer types: (column type, COPY type, bits)
INT_TYPES = {"smallint": ("int2", 16), "integer": ("int4", 32), "bigint": ("int8", 64)}


class IntType(FieldType):
    """smallint, integer or bigint: an int inside the column's two's-complement range."""

    python_type = int
    wire_is_value = True

    def __init__(self, pg_type: str = "bigint") -> None:
        self.pg_type = pg_type
        self.copy_type, bits = INT_TYPES[pg_type]
        self.lo, self.hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self._range = f"out of range for {pg_type} (-2**{bits - 1} .. 2**{bits - 1}-1)"

    def check(self, value: Any) -> Any:
        if type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise Reject(f"expected int, got {type(value).__name__}")
            value = int(value)
        if not self.lo <= value <= self.hi:
            raise Reject(self._range)
        return value

    def to_hash(self, value: Any) -> int:
        return value  # type: ignore[no-any-return]

    def from_hash(self, raw: bytes) -> int:
        return int(raw)


class StrType(FieldType):
    """text, varchar(n) or character(n); lengths count characters, as PostgreSQL does.

    character(n) padding rule: trailing spaces are not part of the value.  PostgreSQL
    pads a character(n) to n with spaces, ignores them in comparisons and drops them
    on a cast to text; kvfast strips them on write (so Redis holds the text without
    them) and on every read from PostgreSQL, so both stores return ``"ab"`` for a
    ``character(4)`` written as ``"ab"`` or ``"ab  "``.  varchar(n) never pads; a
    value longer than n is refused, even when the excess is spaces (PostgreSQL would
    cut those silently, and Redis would keep them).
    """

    copy_type = "text"
    python_type = str
    wire_is_value = True

    def __init__(self, length: int | None = None, *, pad: bool = False) -> None:
        self.length = length
        self.pad = pad
        if pad:
            self.pg_type = f"character({length})"
        elif length is not None:
            self.pg_type = f"character varying({length})"
        else:
            self.pg_type = "text"

    def check(self, value: Any) -> Any:
        if type(value) is not str:
            if not isinstance(value, str):
                raise Reject(f"expected str, got {type(value).__name__}")
            # The text itself: str() would call a subclass's __str__ (a str Enum
            # member would become "Shade.DARK" instead of "dark").
            value = str.__str__(value)
        _check_text(value)
        if self.pad:
            value = value.rstrip(" ")
        if self.length is not None and len(value) > self.length:
            raise Reject(f"{len(value)} characters, longer than {self.pg_type} allows")
        return value

    def to_hash(self, value: Any) -> str:
        return value  # type: ignore[no-any-return]

    def from_hash(self, raw: bytes) -> str:
        return raw.decode("utf-8")

    def from_pg(self, value: Any) -> Any:
        return value.rstrip(" ") if self.pad else value


def _check_text(value: str) -> None:
    if "\x00" in value:
        raise Reject("PostgreSQL text cannot hold a NUL byte (\\x00)")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Reject("not valid UTF-8 (lone surrogate)") from None


class EnumType(FieldType):
    pg_type = "text"
    copy_type = "text"

    def __init__(self, enum_cls: type[enum.Enum]) -> None:
        self.python_type = enum_cls
        self.enum_cls = enum_cls

    def check(self, value: Any) -> Any:
        if isinstance(value, self.enum_cls):
            return value
        if isinstance(value, str):
            try:
                return self.enum_cls(value)
            except ValueError:
                pass
        raise Reject(f"expected a {self.enum_cls.__name__} member")

    def to_hash(self, value: Any) -> str:
        return value.value  # type: ignore[no-any-return]

    def from_hash(self, raw: bytes) -> Any:
        return self.enum_cls(raw.decode("utf-8"))

    def to_wire(self, value: Any) -> Any:
        return value.value

    def from_wire(self, raw: Any) -> Any:
        return raw

    def from_pg(self, value: Any) -> Any:
        return self.enum_cls(value)

    def to_copy(self, value: Any) -> Any:
        return value.value

    def __repr__(self) -> str:
        return f"EnumType({self.enum_cls.__name__})"


_FLOAT_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class FloatType(FieldType):
    pg_type = "double precision"
    copy_type = "float8"
    python_type = float

    def check(self, value: Any) -> Any:
        if type(value) is float:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Reject(f"expected float, got {type(value).__name__}")
        try:
            return float(value)
        except OverflowError:
            raise Reject("int too large for double precision") from None

    def to_hash(self, value: Any) -> str:
        return repr(value)

    def from_hash(self, raw: bytes) -> float:
        return float(raw)

    def to_wire(self, value: Any) -> Any:
        # JSON has no NaN/Infinity (orjson would write null): spell them out.
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is str:
            return _FLOAT_SPECIAL[raw]
        return float(raw)


class BoolType(FieldType):
    pg_type = "boolean"
    copy_type = "bool"
    python_type = bool
    wire_is_value = True

    def check(self, value: Any) -> Any:
        if type(value) is not bool:
            raise Reject(f"expected bool, got {type(value).__name__}")
        return value

    def to_hash(self, value: Any) -> str:
        return "1" if value else "0"

    def from_hash(self, raw: bytes) -> bool:
        return raw == b"1"


class IsoType(FieldType):
    """Dates and times: ISO 8601 text in the hash and on the wire (``parse`` reads it)."""

    #: the type's ``fromisoformat`` (a staticmethod in each subclass)
    parse: Callable[[str], Any]

    def to_hash(self, value: Any) -> str:
        return value.isoformat()  # type: ignore[no-any-return]

    def from_hash(self, raw: bytes) -> Any:
        return self.parse(raw.decode("ascii"))

    def to_wire(self, value: Any) -> Any:
        return value.isoformat()

    def from_wire(self, raw: Any) -> Any:
        return self.parse(raw)


class DateTimeType(IsoType):
    pg_type = "timestamp with time zone"
    copy_type = "timestamptz"
    python_type = dt.datetime

    def check(self, value: Any) -> Any:
        if not isinstance(value, dt.datetime):
            raise Reject(f"expected a timezone-aware datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise Reject("naive datetime: give it a timezone (e.g. datetime.UTC)")
        if value.tzinfo is not _UTC:
            try:
                value = value.astimezone(_UTC)
            except OverflowError:
                raise Reject("outside the datetime range once converted to UTC") from None
        if type(value) is not dt.datetime:
            value = dt.datetime(
                value.year, value.month, value.day, value.hour, value.minute,
                value.second, value.microsecond, tzinfo=_UTC,
            )
        return value

    parse = staticmethod(dt.datetime.fromisoformat)

    def from_pg(self, value: Any) -> Any:
        return value.astimezone(_UTC)


class DateType(IsoType):
    pg_type = "date"
    copy_type = "date"
    python_type = dt.date

    def check(self, value: Any) -> Any:
        if type(value) is not dt.date:
            if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
                raise Reject(f"expected date, got {type(value).__name__}")
            value = dt.date(value.year, value.month, value.day)
        return value

    parse = staticmethod(dt.date.fromisoformat)


class DecimalType(FieldType):
    pg_type = "numeric"
    copy_type = "numeric"
    python_type = Decimal

    def check(self, value: Any) -> Any:
        if not isinstance(value, Decimal):
            raise Reject(f"expected Decimal, got {type(value).__name__}")
        if not value.is_finite():
            raise Reject("NaN and Infinity Decimals are not stored (numeric range)")
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        if -exponent > NUMERIC_MAX_SCALE:
            raise Reject(f"more than {NUMERIC_MAX_SCALE} digits after the point")
        if value and value.adjusted() >= NUMERIC_MAX_INT_DIGITS:
            raise Reject(f"more than {NUMERIC_MAX_INT_DIGITS} digits before the point")
        return value

    def to_hash(self, value: Any) -> str:
        return str(value)

    def from_hash(self, raw: bytes) -> Decimal:
        return Decimal(raw.decode("ascii"))

    def to_wire(self, value: Any) -> Any:
        return str(value)

    def from_wire(self, raw: Any) -> Any:
        return Decimal(raw)


class BytesType(FieldType):
    pg_type = "bytea"
    copy_type = "bytea"
    python_type = bytes

    def check(self, value: Any) -> Any:
        if type(value) is bytes:
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise Reject(f"expected bytes, got {type(value).__name__}")

    def to_hash(self, value: Any) -> bytes:
        return value  # type: ignore[no-any-return]

    def from_hash(self, raw: bytes) -> bytes:
        return raw

    def to_wire(self, value: Any) -> Any:
        return base64.b64encode(value).decode("ascii")

    def from_wire(self, raw: Any) -> Any:
        # validate: without it, characters outside the alphabet are dropped and
        # garbage decodes to other bytes instead of failing (binascii.Error).
        return base64.b64decode(raw, validate=True)


class UUIDType(FieldType):
    pg_type = "uuid"
    copy_type = "uuid"
    python_type = uuid.UUID

    def check(self, value: Any) -> Any:
        if not isinstance(value, uuid.UUID):
            raise Reject(f"expected uuid.UUID, got {type(value).__name__}")
        return value

    def to_hash(self, value: Any) -> str:
        return str(value)

    def from_hash(self, raw: bytes) -> uuid.UUID:
        return uuid.UUID(raw.decode("ascii"))

    def to_wire(self, value: Any) -> Any:
        return str(value)

    def from_wire(self, raw: Any) -> Any:
        return uuid.UUID(raw)

