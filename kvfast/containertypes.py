"""The container column types: json, jsonb, and one-dimensional arrays of a scalar type.

Same contract as ``fieldtypes``.  JSON values are refused when jsonb (or json)
would change or reject them, so both stores return the value written; an array's
elements are checked by the element's own type.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from kvfast.fieldtypes import INT64_MAX, INT64_MIN, FieldType, Reject, StrType, _check_text

__all__ = ["ArrayType", "JsonType"]


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
