"""How a model names a column's type and name: ``typing.Annotated`` metadata.

Plain annotations keep their defaults (int → bigint, str → text, float → double
precision, bool → boolean, datetime → timestamptz, date → date, time → time,
timedelta → interval, Decimal → numeric, bytes → bytea, dict/list → jsonb, UUID →
uuid, a str Enum → text).  A column that needs more says so::

    @kvfast.model(table="booking", key="id")
    class Booking:
        id: Annotated[str, kvfast.Char(36)]
        status: Annotated[str, kvfast.VarChar(255)]
        fare: Annotated[Decimal, kvfast.Numeric(30, 2)]
        seats: Annotated[int, kvfast.Integer]
        tags: Annotated[list[str], kvfast.Array(kvfast.Text)]
        state: Annotated[RideStatus, kvfast.PgEnum("ride_status")]
        booked_at: Annotated[datetime, kvfast.Timestamp]        # naive
        class_: Annotated[str | None, kvfast.Column("class")] = None

A type without parameters may be written bare (``kvfast.Integer``) or called
(``kvfast.Integer()``).  ``Array()`` without an element type takes it from the
list's item annotation (``list[UUID]`` → ``uuid[]``; ``list[str | None]`` allows
NULL elements).  ``Column(name)`` maps the field to another column name; the
Redis hash and the queue entry keep the field's name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
import uuid
from decimal import Decimal
from typing import Any

from kvfast.containertypes import ArrayType, JsonType
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
from kvfast.pgtypes import (
    IntervalType,
    NumericType,
    PgEnumType,
    RealType,
    TimestampType,
    TimeType,
)

__all__ = [
    "Array", "BigInt", "Boolean", "Bytea", "Char", "Column", "ColumnType", "Date", "Double",
    "Integer", "Interval", "Json", "Jsonb", "Numeric", "PgEnum", "Real", "SmallInt", "Text",
    "Time", "Timestamp", "TimestampTZ", "Uuid", "VarChar", "field_type_for", "resolve",
]


class SpecError(Exception):
    """A column spec that does not fit its annotation; model.py makes it a ModelError."""


@dataclasses.dataclass(frozen=True)
class Column:
    """``Annotated[T, kvfast.Column("class")]``: the field's PostgreSQL column name."""

    name: str


class ColumnType:
    """A PostgreSQL column type for ``Annotated[T, …]``; ``python`` lists the T it takes."""

    python: tuple[type, ...] = ()

    def field_type(self, annotation: Any) -> FieldType:
        raise NotImplementedError

    def _expect(self, annotation: Any) -> None:
        if not (isinstance(annotation, type) and annotation in self.python):
            names = " or ".join(t.__name__ for t in self.python)
            raise SpecError(f"{self!r} needs a {names} field, not {annotation!r}")

    def __repr__(self) -> str:
        fields = ", ".join(repr(getattr(self, f.name)) for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return f"{type(self).__name__}({fields})"


def _simple(name: str, py: tuple[type, ...], make: Any) -> type[ColumnType]:
    def field_type(self: ColumnType, annotation: Any) -> FieldType:
        self._expect(annotation)
        return make()  # type: ignore[no-any-return]

    cls = type(name, (ColumnType,), {"python": py, "field_type": field_type,
                                     "__repr__": lambda self: f"{name}()"})
    return dataclasses.dataclass(frozen=True)(cls)


SmallInt = _simple("SmallInt", (int,), lambda: IntType("smallint"))
Integer = _simple("Integer", (int,), lambda: IntType("integer"))
BigInt = _simple("BigInt", (int,), lambda: IntType("bigint"))
Text = _simple("Text", (str,), StrType)
Real = _simple("Real", (float,), RealType)
Double = _simple("Double", (float,), FloatType)
TimestampTZ = _simple("TimestampTZ", (dt.datetime,), DateTimeType)
Timestamp = _simple("Timestamp", (dt.datetime,), TimestampType)
Date = _simple("Date", (dt.date,), DateType)
Time = _simple("Time", (dt.time,), TimeType)
Interval = _simple("Interval", (dt.timedelta,), IntervalType)
Boolean = _simple("Boolean", (bool,), BoolType)
Bytea = _simple("Bytea", (bytes,), BytesType)
Uuid = _simple("Uuid", (uuid.UUID,), UUIDType)


def _length(what: str, n: Any) -> int:
    if type(n) is not int or not 1 <= n <= 10_485_760:
        raise SpecError(f"{what} length must be an int from 1 to 10485760, got {n!r}")
    return n


@dataclasses.dataclass(frozen=True, repr=False)
class Char(ColumnType):
    """character(n): at most n characters; trailing spaces are not kept (see StrType)."""

    length: int
    python = (str,)

    def field_type(self, annotation: Any) -> FieldType:
        self._expect(annotation)
        return StrType(_length("Char", self.length), pad=True)


@dataclasses.dataclass(frozen=True, repr=False)
class VarChar(ColumnType):
    """character varying(n): at most n characters (not bytes)."""

    length: int
    python = (str,)

    def field_type(self, annotation: Any) -> FieldType:
        self._expect(annotation)
        return StrType(_length("VarChar", self.length))


@dataclasses.dataclass(frozen=True, repr=False)
class Numeric(ColumnType):
    """numeric(p,s), or unconstrained numeric when ``precision`` is None."""

    precision: int | None = None
    scale: int = 0
    python = (Decimal,)

    def field_type(self, annotation: Any) -> FieldType:
        self._expect(annotation)
        p, s = self.precision, self.scale
        if p is None:
            if s != 0:
                raise SpecError("Numeric: a scale needs a precision")
            return DecimalType()
        if type(p) is not int or not 1 <= p <= 1000:
            raise SpecError(f"Numeric precision must be an int from 1 to 1000, got {p!r}")
        if type(s) is not int or not -1000 <= s <= 1000:
            raise SpecError(f"Numeric scale must be an int from -1000 to 1000, got {s!r}")
        return NumericType(p, s)


@dataclasses.dataclass(frozen=True, repr=False)
class _JsonSpec(ColumnType):
    python = (dict, list)
    _pg: typing.ClassVar[str] = "jsonb"

    def field_type(self, annotation: Any) -> FieldType:
        container = typing.get_origin(annotation) or annotation
        if container not in (dict, list):
            raise SpecError(f"{self!r} needs a dict or list field, not {annotation!r}")
        return JsonType(container, self._pg)


@dataclasses.dataclass(frozen=True, repr=False)
class Json(_JsonSpec):
    """json: the text kept as written (1e300 stays a float)."""

    _pg: typing.ClassVar[str] = "json"


@dataclasses.dataclass(frozen=True, repr=False)
class Jsonb(_JsonSpec):
    """jsonb (the default for dict and list)."""


@dataclasses.dataclass(frozen=True, repr=False)
class Array(ColumnType):
    """A one-dimensional array: ``Annotated[list[str], kvfast.Array(kvfast.VarChar(20))]``."""

    element: Any = None
    python = (list,)

    def field_type(self, annotation: Any) -> FieldType:
        if typing.get_origin(annotation) is not list or len(typing.get_args(annotation)) != 1:
            raise SpecError(f"Array needs a list[T] field, not {annotation!r}")
        item, nullable = unwrap_optional(typing.get_args(annotation)[0])
        if self.element is None:
            element = field_type_for(item)
            if element is None:
                raise SpecError(f"Array: no column type for the list item {item!r}")
        else:
            element = as_spec(self.element).field_type(item)
        if isinstance(element, (ArrayType, JsonType, PgEnumType)):
            raise SpecError(f"Array: {element.pg_type} elements are not supported")
        return ArrayType(element, nullable)


@dataclasses.dataclass(frozen=True, repr=False)
class PgEnum(ColumnType):
    """A PostgreSQL enum type (``"ride_status"`` or ``"schema.ride_status"``).

    The field is a Python Enum of str values (its values are the labels) or a str,
    then with ``labels``.  check_tables requires every label to be one of the type's
    (the type may have more: a label added for a newer model version)."""

    name: str
    labels: tuple[str, ...] | None = None
    python = (str,)

    def field_type(self, annotation: Any) -> FieldType:
        if not isinstance(self.name, str) or not self.name or "\x00" in self.name:
            raise SpecError(f"PgEnum needs a type name, got {self.name!r}")
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            if self.labels is not None:
                raise SpecError("PgEnum: labels come from the Enum, do not give them too")
            values = [m.value for m in annotation]
            if not all(isinstance(v, str) for v in values):
                raise SpecError(f"PgEnum: {annotation.__name__} has values that are not str")
            return PgEnumType(self.name, tuple(values), annotation)
        if annotation is str:
            labels = self.labels
            if not labels or not all(isinstance(x, str) for x in labels):
                raise SpecError("PgEnum on a str field needs labels=(…) (the allowed labels)")
            return PgEnumType(self.name, tuple(labels), None)
        raise SpecError(f"PgEnum needs an Enum or str field, not {annotation!r}")


def as_spec(meta: Any) -> ColumnType:
    """A ColumnType instance from ``Integer`` or ``Integer()``."""
    if isinstance(meta, type) and issubclass(meta, ColumnType):
        try:
            return meta()
        except TypeError:
            raise SpecError(f"{meta.__name__} needs arguments, e.g. {meta.__name__}(36)") from None
    if isinstance(meta, ColumnType):
        return meta
    raise SpecError(f"{meta!r} is not a kvfast column type")


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], nullable
        return annotation, nullable
    return annotation, False


def resolve(annotation: Any) -> tuple[FieldType | None, bool, str | None]:
    """(FieldType or None when unsupported, nullable, column name or None) of a hint
    read with ``include_extras=True``.  SpecError for a spec that does not fit."""
    inner, nullable = unwrap_optional(annotation)
    column: str | None = None
    spec: ColumnType | None = None
    if typing.get_origin(inner) is typing.Annotated:
        base, *metadata = typing.get_args(inner)
        for meta in metadata:
            if isinstance(meta, Column):
                column = meta.name
            elif isinstance(meta, ColumnType) or (
                isinstance(meta, type) and issubclass(meta, ColumnType)
            ):
                if spec is not None:
                    raise SpecError("more than one column type given")
                spec = as_spec(meta)
        inner, inner_nullable = unwrap_optional(base)
        nullable = nullable or inner_nullable
    if spec is not None:
        return spec.field_type(inner), nullable, column
    return field_type_for(inner), nullable, column


_SIMPLE: dict[Any, FieldType] = {
    int: IntType(),
    str: StrType(),
    float: FloatType(),
    bool: BoolType(),
    dt.datetime: DateTimeType(),
    dt.date: DateType(),
    dt.time: TimeType(),
    dt.timedelta: IntervalType(),
    Decimal: DecimalType(),
    bytes: BytesType(),
    uuid.UUID: UUIDType(),
}


def field_type_for(annotation: Any) -> FieldType | None:
    """The default FieldType of a plain (non-optional) annotation, or None when unsupported."""
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    origin = getattr(annotation, "__origin__", None)
    container = origin if origin is not None else annotation
    if container in (dict, list):
        return JsonType(container)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if all(isinstance(m.value, str) for m in annotation):
            return EnumType(annotation)
        return None
    return None
