"""Which fields a model may index (``@kvfast.model(indexes=(...))``), checked at declaration.

An index is looked up by the value's hash encoding (the bytes the object's Redis
hash holds, see ``FieldType.hash_bytes``), so only types whose encoding is one
string per value can be indexed: two equal values must encode the same, or
``find`` would miss objects in Redis that PostgreSQL's ``=`` finds.  That rules
out ``float`` (0.0 and -0.0), ``Decimal`` (1.0 and 1.00; -0.00 and 0.00), JSON, arrays,
``time`` and ``interval``; ``bytes`` too (its PostgreSQL parameter is not text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kvfast.errors import ModelError
from kvfast.fieldtypes import BoolType, DateTimeType, DateType, EnumType, IntType, StrType, UUIDType
from kvfast.pgtypes import PgEnumType, TimestampType

if TYPE_CHECKING:
    from kvfast.model import FieldInfo

__all__ = ["INDEXABLE", "check_indexes"]

#: field types ``indexes=`` accepts
INDEXABLE = (IntType, StrType, UUIDType, BoolType, DateType, DateTimeType, TimestampType,
             EnumType, PgEnumType)


def check_indexes(indexes: Any, by_name: Mapping[str, FieldInfo], key: str | tuple[str, ...],
                  where: str) -> tuple[str, ...]:
    """``indexes`` as a tuple of field names, or ModelError naming the model and field."""
    if isinstance(indexes, str) or not isinstance(indexes, (tuple, list)):
        raise ModelError(f"{where}: indexes must be a tuple of field names, got {indexes!r}")
    out: list[str] = []
    for name in indexes:
        f = by_name.get(name) if isinstance(name, str) else None
        if f is None:
            raise ModelError(f"{where}: index {name!r} is not a field")
        # (one part of a composite key may be indexed: "every trip of driver 7")
        if name == key:
            raise ModelError(f"{where}: index {name!r} is the key (get_by_id reads by key)")
        if name in out:
            raise ModelError(f"{where}: index {name!r} is listed twice")
        if not isinstance(f.ftype, INDEXABLE):
            raise ModelError(
                f"{where}: index {name!r}: a {f.ftype.pg_type} field cannot be indexed "
                "(index int, str, UUID, bool, date, datetime, or enum fields)")
        out.append(name)
    return tuple(out)
