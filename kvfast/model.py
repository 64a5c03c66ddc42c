"""Models: typed dataclasses that name their PostgreSQL table and key.

    @kvfast.model(table="bookings", key="id", ttl=3600)
    class Booking:
        id: int
        status: str
        fare: Decimal | None = None

The decorator turns the class into a dataclass (if it is not one already),
maps every field to a ``FieldType`` (an unsupported annotation is a ``ModelError``
naming the field) and registers the model by table name, which is how queue
entries name it.  Nothing in the core knows any particular model.

Table names: ``table="fit"`` is the table ``fit`` wherever the connection's
``search_path`` finds it (``public`` by default; a DSN may set another);
``table="atlas_app.fit"`` is the table ``fit`` in the schema ``atlas_app``: one
dot separates schema and table.  A name with more dots is refused; a table (or
schema) whose own name contains a dot is named with ``schema=``:
``@model(schema="atlas_app", table="fit.v2")``, whose table string is then
``"atlas_app.fit.v2"``.  Every SQL statement quotes each part on its own; the
table string (``ModelInfo.table``) is what names the model in Redis keys, queue
entries, holds and the model-version registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, dataclass_transform

from kvfast.columns import SpecError, resolve
from kvfast.errors import DecodeError, ModelError, ValidationError
from kvfast.fieldtypes import FieldType, IntType, Reject, StrType, UUIDType
from kvfast.indexspec import check_indexes
from kvfast.keys import MAX_KEY_BYTES, key_string

__all__ = ["FieldInfo", "ModelInfo", "get_model", "model", "model_info", "registered_models"]

T = TypeVar("T")

# PostgreSQL truncates identifiers longer than 63 bytes; refuse them instead.
_PG_IDENTIFIER_MAX = 63
# Redis hash fields kvfast reserves for itself (a field may not use these names).
TOMBSTONE_FIELD = "__kvfast_deleted"

_REGISTRY: dict[str, ModelInfo] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class FieldInfo:
    name: str
    ftype: FieldType
    nullable: bool
    index: int
    #: the PostgreSQL column (the field name unless ``kvfast.Column`` says otherwise)
    column: str = ""

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)


class ModelInfo:
    """Everything kvfast derives from a model class, computed once."""

    def __init__(
        self, cls: type, table: str, key: str | tuple[str, ...], ttl: int | None,
        fields: list[FieldInfo], pg_name: tuple[str, ...] | None = None,
        indexes: tuple[str, ...] = (),
    ) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.table = table
        #: the table in SQL: ``(schema, table)``, or ``(table,)`` for the search_path's
        self.pg_name = pg_name or (table,)
        #: the key as declared: a field name, or a tuple of them (a composite key)
        self.key = key
        self.ttl = ttl
        self.fields = tuple(fields)
        self.by_name = {f.name: f for f in fields}
        #: a composite key's value is a tuple of its parts in ``key_names`` order
        self.composite = isinstance(key, tuple)
        self.key_names: tuple[str, ...] = key if isinstance(key, tuple) else (key,)
        self.key_fields = tuple(self.by_name[n] for n in self.key_names)
        self.key_columns = tuple(f.column for f in self.key_fields)
        self._key_label = (self.key_names[0] if not self.composite
                           else "(" + ", ".join(self.key_names) + ")")
        self.field_names = tuple(f.name for f in fields)
        self.table_bytes = table.encode("utf-8")
        self._crc_prefix = self.table_bytes + b"\x00"
        self._init_kwargs = [f.name for f in fields]
        #: (field, its name as a hash field, its decoder): from_hash's loop, made once
        self._hash_fields = [(f, f.name.encode("utf-8"), f.ftype.from_hash) for f in fields]
        #: indexed fields, in declaration order of ``indexes=`` (kvfast.index)
        self.indexes = indexes

    def __repr__(self) -> str:
        return f"<model {self.name} table={self.table!r} key={self.key!r}>"

    # -- keys and partitions -------------------------------------------------

    def check_key(self, key: Any) -> Any:
        """The key normalized, or ValidationError naming the key field.

        A composite key is a tuple (a list is taken too) of its parts in
        ``key_names`` order; each part is checked as its field, and the error of
        a bad part names that field."""
        if not self.composite:
            checked = self._check_key_part(self.key_fields[0], key, key)
            if type(checked) is str and len(checked) * 4 > MAX_KEY_BYTES:
                self.check_key_size(checked.encode("utf-8"), key)
            return checked
        if not isinstance(key, (tuple, list)) or len(key) != len(self.key_fields):
            raise ValidationError(self.name, self._key_label, key, (
                f"a key of {self.name} is a tuple of {len(self.key_fields)} values "
                f"{self._key_label}"))
        parts = tuple(self._check_key_part(f, part, key)
                      for f, part in zip(self.key_fields, key, strict=True))
        if sum(len(p) for p in parts if type(p) is str) * 4 > MAX_KEY_BYTES:
            self.check_key_size(key_string(parts).encode("utf-8"), key)
        return parts

    def _check_key_part(self, f: FieldInfo, part: Any, key: Any) -> Any:
        if part is None:
            raise ValidationError(self.name, f.name, key, "the key may not be None")
        try:
            return f.ftype.check(part)
        except Reject as exc:
            raise ValidationError(self.name, f.name, part, str(exc)) from None

    def check_key_size(self, key_bytes: bytes, key: Any) -> None:
        """ValidationError for a key PostgreSQL could not index (see keys.MAX_KEY_BYTES)."""
        if len(key_bytes) > MAX_KEY_BYTES:
            raise ValidationError(self.name, self._key_label, key, (
                f"a key of {len(key_bytes)} bytes is longer than PostgreSQL can index "
                f"(at most {MAX_KEY_BYTES} bytes in UTF-8)"))

    def key_of(self, obj: Any) -> Any:
        """The key of an instance (a tuple for a composite key)."""
        if not self.composite:
            return getattr(obj, self.key_names[0])
        return tuple(getattr(obj, n) for n in self.key_names)

    def key_parts(self, key: Any) -> tuple[Any, ...]:
        """A normalized key as its column values, in ``key_columns`` order."""
        return key if self.composite else (key,)

    def key_from_values(self, values: Sequence[Any]) -> Any:
        """The key in a row of every field's value in field order (a SELECT row)."""
        if not self.composite:
            return values[self.key_fields[0].index]
        return tuple(values[f.index] for f in self.key_fields)

    def key_from_wire(self, raw: Any) -> Any:
        """The key named by a queue entry (``keys.key_wire``'s form), checked; a
        DecodeError naming the model if it is not one of this model's keys."""
        try:
            if not self.composite:
                return self._key_from_wire(self.key_fields[0], raw)
            if type(raw) is not list or len(raw) != len(self.key_fields):
                raise ValueError(f"expected a list of {len(self.key_fields)} key parts")
            return tuple(self._key_from_wire(f, part)
                         for f, part in zip(self.key_fields, raw, strict=True))
        except (Reject, ValueError, TypeError) as exc:
            raise DecodeError(f"{self.name} key {raw!r}: {exc}") from None

    @staticmethod
    def _key_from_wire(f: FieldInfo, raw: Any) -> Any:
        ftype = f.ftype
        return ftype.check(raw if type(raw) is ftype.python_type else ftype.from_wire(raw))

    def partition_of(self, key_str: str, partitions: int) -> int:
        """Stable partition of a key: crc32 of ``table NUL key``, the same in every process.

        NUL cannot occur in a table name, so no two (table, key) pairs collide.
        """
        return self.partition_of_bytes(key_str.encode("utf-8"), partitions)

    def partition_of_bytes(self, key: bytes, partitions: int) -> int:
        """``partition_of`` for a key already encoded (the producer's hot loop)."""
        return zlib.crc32(self._crc_prefix + key) % partitions

    # -- validation ------------------------------------------------------------

    def check_value(self, f: FieldInfo, value: Any) -> Any:
        if value is None:
            if f.nullable:
                return None
            raise ValidationError(self.name, f.name, value, "field is not Optional")
        try:
            return f.ftype.check(value)
        except Reject as exc:
            raise ValidationError(self.name, f.name, value, str(exc)) from None

    def check_changes(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """A partial update checked: known, non-key fields with valid values."""
        if not changes:
            raise ValidationError(self.name, "<fields>", {}, "an update needs at least one field")
        out: dict[str, Any] = {}
        for name, value in changes.items():
            f = self.by_name.get(name)
            if f is None:
                raise ValidationError(self.name, name, value, "no such field")
            if name in self.key_names:
                raise ValidationError(self.name, name, value, "the key cannot be updated")
            out[name] = self.check_value(f, value)
        return out

    # -- building instances ----------------------------------------------------

    def from_hash(self, raw: Mapping[bytes, bytes]) -> Any:
        """An instance from an HGETALL reply (absent field = None).

        A stored value the field cannot hold (an enum label the Enum lacks) is a
        DecodeError naming model, field and value."""
        kwargs: dict[str, Any] = {}
        get = raw.get
        for f, name, decode in self._hash_fields:
            value = get(name)
            if value is None:
                kwargs[f.name] = None
                continue
            try:
                kwargs[f.name] = decode(value)
            except (Reject, ValueError, TypeError, KeyError) as exc:
                raise self._bad_stored(f, value, "Redis", exc) from None
        return self.cls(**kwargs)

    def values_from_pg(self, row: tuple[Any, ...]) -> list[Any]:
        """A ``SELECT <all columns in field order>`` row as the values written.

        DecodeError for a NULL in a field that is not Optional, or a value the
        field cannot hold (an enum label the Enum lacks)."""
        out: list[Any] = []
        for f, value in zip(self.fields, row, strict=True):
            if value is None:
                if not f.nullable:
                    raise self._bad_stored(f, value, "PostgreSQL", "NULL in a field that "
                                           "is not Optional")
                out.append(None)
                continue
            try:
                out.append(f.ftype.from_pg(value))
            except (Reject, ValueError, TypeError, KeyError) as exc:
                raise self._bad_stored(f, value, "PostgreSQL", exc) from None
        return out

    def _bad_stored(self, f: FieldInfo, value: Any, store: str, why: object) -> DecodeError:
        return DecodeError(f"{self.name}.{f.name} = {value!r} (read from {store}): {why}")

    def from_pg_row(self, row: tuple[Any, ...]) -> Any:
        """An instance from a ``SELECT <all columns in field order>`` row."""
        # By keyword: a model may be a kw_only dataclass.
        return self.cls(**dict(zip(self.field_names, self.values_from_pg(row), strict=True)))


def _check_identifier(what: str, name: str, where: str) -> None:
    if not isinstance(name, str) or not name:
        raise ModelError(f"{where}: {what} must be a non-empty str, got {name!r}")
    if "\x00" in name:
        raise ModelError(f"{where}: {what} {name!r} contains a NUL byte")
    if len(name.encode("utf-8")) > _PG_IDENTIFIER_MAX:
        raise ModelError(
            f"{where}: {what} {name!r} is longer than PostgreSQL's {_PG_IDENTIFIER_MAX} bytes"
        )


def _pg_name(table: str, schema: str | None, where: str) -> tuple[str, tuple[str, ...]]:
    """(the table string, its SQL name parts) by the rule in the module docstring."""
    if schema is not None:
        _check_identifier("schema", schema, where)
        _check_identifier("table", table, where)
        return f"{schema}.{table}", (schema, table)
    parts = table.split(".") if isinstance(table, str) else [table]
    if len(parts) == 1:
        _check_identifier("table", table, where)
    elif len(parts) > 2:
        raise ModelError(
            f"{where}: table {table!r} has more than one dot; name a table whose name "
            "contains a dot with schema=: @kvfast.model(schema=\"s\", table=\"a.b\")")
    else:
        if not all(parts):
            raise ModelError(f"{where}: table {table!r} needs a schema and a table name "
                             "around its dot")
        _check_identifier("schema", parts[0], where)
        _check_identifier("table", parts[1], where)
    return table, tuple(parts)


def _build(
    cls: type, table: str, key: str | tuple[str, ...] | list[str], ttl: int | None,
    schema: str | None = None, indexes: Any = (),
) -> ModelInfo:
    where = f"model {cls.__name__}"
    key = _key_names(key, where)
    table, pg_name = _pg_name(table, schema, where)
    if ttl is not None and (type(ttl) is not int or ttl <= 0):
        raise ModelError(f"{where}: ttl must be a positive int (seconds) or None, got {ttl!r}")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:  # NameError for an unresolvable forward reference, etc.
        raise ModelError(f"{where}: cannot resolve the field annotations: {exc}") from exc
    fields: list[FieldInfo] = []
    for i, dc_field in enumerate(dataclasses.fields(cls)):
        name = dc_field.name
        _check_identifier("field name", name, where)
        if name == TOMBSTONE_FIELD:
            raise ModelError(f"{where}: the field name {name!r} is reserved by kvfast")
        try:
            ftype, nullable, column = resolve(hints[name])
        except SpecError as exc:
            raise ModelError(f"{where}: field {name!r}: {exc}") from None
        if ftype is None:
            raise ModelError(
                f"{where}: field {name!r} has unsupported type {hints[name]!r}; use int, str, "
                "float, bool, datetime, date, time, timedelta, Decimal, bytes, dict, list, "
                "UUID, a str Enum, or one of these | None; other column types are declared "
                "with typing.Annotated (kvfast.VarChar(n), kvfast.Integer, …)"
            )
        if column is not None:
            _check_identifier(f"column name of field {name!r}", column, where)
        fields.append(FieldInfo(name, ftype, nullable, i, column or name))
    by_column: dict[str, str] = {}
    for f in fields:
        if f.column in by_column:
            raise ModelError(
                f"{where}: fields {by_column[f.column]!r} and {f.name!r} both map to column "
                f"{f.column!r}"
            )
        by_column[f.column] = f.name
    by_name = {f.name: f for f in fields}
    for name in key if isinstance(key, tuple) else (key,):
        if name not in by_name:
            raise ModelError(f"{where}: key {name!r} is not a field")
        key_field = by_name[name]
        if key_field.nullable or not isinstance(key_field.ftype, (IntType, StrType, UUIDType)):
            raise ModelError(
                f"{where}: key field {name!r} must be an int, str or UUID column (not Optional)"
            )
    return ModelInfo(cls, table, key, ttl, fields, pg_name,
                     check_indexes(indexes, by_name, key, where))


def _key_names(key: object, where: str) -> str | tuple[str, ...]:
    """A declared key as ModelInfo holds it: a field name, or a tuple of two or more."""
    if isinstance(key, str):
        return key
    if isinstance(key, (tuple, list)) and key and all(isinstance(k, str) for k in key):
        if len(set(key)) != len(key):
            raise ModelError(f"{where}: key {key!r} names a field twice")
        return tuple(key) if len(key) > 1 else key[0]
    raise ModelError(f"{where}: key must be a field name or a tuple of field names "
                     f"(a composite primary key), got {key!r}")


@dataclass_transform()
def model(
    *, table: str, key: str | tuple[str, ...] = "id", ttl: int | None = None,
    schema: str | None = None, indexes: tuple[str, ...] = (),
) -> Callable[[type[T]], type[T]]:
    """Declare a model: ``@model(table="bookings", key="id", ttl=None)``.

    ``key=("driver_id", "rider_id")`` declares a composite primary key: its value
    is then a tuple of those fields' values, in that order, in every repository
    method (``repo.get_by_id((7, "r-1"))``).

    ``table="atlas_app.fit"`` is the table ``fit`` in the schema ``atlas_app`` (one
    dot separates them); without a dot the connection's ``search_path`` decides.
    ``schema="atlas_app", table="fit.v2"`` names a table whose name itself holds a
    dot (the model's table string is then ``"atlas_app.fit.v2"``).

    ``ttl`` (seconds) expires the Redis copy of each object after its last
    write; reads then fall back to PostgreSQL.  Keep it well above the drain lag.

    ``indexes=("rider_id", "status")`` lets ``Repository.find(rider_id=r)`` answer
    by those fields (kvfast.index: a Redis set per value, written with the object).
    """

    def decorate(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            cls = dataclasses.dataclass(cls)
        info = _build(cls, table, key, ttl, schema, indexes)
        previous = _REGISTRY.get(info.table)
        if previous is not None and previous.cls.__qualname__ != cls.__qualname__:
            raise ModelError(
                f"model {cls.__name__}: table {info.table!r} is already used by {previous.name}"
            )
        _REGISTRY[info.table] = info
        cls.__kvfast_model__ = info  # type: ignore[attr-defined]
        return cls

    return decorate


def model_info(cls: Any) -> ModelInfo:
    """The ModelInfo of a model class (ModelError if it is not one)."""
    info = getattr(cls, "__kvfast_model__", None)
    if not isinstance(info, ModelInfo) or info.cls is not cls:
        raise ModelError(f"{cls!r} is not a kvfast model (decorate it with @kvfast.model)")
    return info


def get_model(table: str) -> ModelInfo | None:
    """The registered model for ``table`` (how a drainer reads a queue entry)."""
    return _REGISTRY.get(table)


def registered_models() -> list[ModelInfo]:
    return list(_REGISTRY.values())


def model_version(info: ModelInfo) -> str:
    """A short fingerprint of a model's fields (names, column types, nullability, order).

    Producers stamp it on every write entry (``mv``); a drainer whose model has
    another version reads such an entry field by field instead of by position
    (see ``kvfast.batch``).  It changes with any change of the field list, so a
    rolling deploy needs no version number kept by hand.
    """
    cached = _VERSIONS.get(id(info))
    if cached is not None and cached[0] is info:
        return cached[1]
    text = ";".join(f"{f.name}:{f.ftype.pg_type}:{int(f.nullable)}" for f in info.fields)
    version = hashlib.sha1(f"{info.table}|{text}".encode()).hexdigest()[:12]
    _VERSIONS[id(info)] = (info, version)
    return version


_VERSIONS: dict[int, tuple[ModelInfo, str]] = {}
