"""Helpers shared by the write/read path tests (plain functions, no fixtures).

The key layout is recomputed here from its documented definition instead of asking
kvfast, so the tests check the layout rather than echo it: ``keys.py`` names an object
``{ns:p}:o:<table, ':' and '%' %-escaped>:<key>``, and ``ModelInfo.partition_of``
picks ``p = crc32(<table> NUL <key>) % partitions``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import uuid
import zlib
from decimal import Decimal
from typing import Any

import psycopg
import redis
from drainkeys import tag
from models import Color, Everything
from psycopg import sql
from psycopg.types.json import Jsonb

import kvfast
from kvfast import codec

UTC = dt.UTC


def partition(settings: kvfast.Settings, model: type, key: Any) -> int:
    table = kvfast.model_info(model).table
    return zlib.crc32(f"{table}\x00{key}".encode()) % settings.partitions


def obj_key(settings: kvfast.Settings, model: type, key: Any) -> str:
    table = kvfast.model_info(model).table.replace("%", "%25").replace(":", "%3A")
    return f"{tag(settings, partition(settings, model, key))}:o:{table}:{key}"


def queue_key(settings: kvfast.Settings, p: int) -> str:
    return f"{tag(settings, p)}:q"


def queue_lengths(r: redis.Redis, settings: kvfast.Settings) -> list[int]:
    return [r.llen(queue_key(settings, p)) for p in range(settings.partitions)]


def queue_entries(r: redis.Redis, settings: kvfast.Settings) -> dict[int, list[codec.Entry]]:
    """Every queued entry, decoded, by partition (empty partitions left out)."""
    out: dict[int, list[codec.Entry]] = {}
    for p in range(settings.partitions):
        raw = r.lrange(queue_key(settings, p), 0, -1)
        if raw:
            out[p] = [codec.decode(item) for item in raw]
    return out


def all_entries(r: redis.Redis, settings: kvfast.Settings) -> list[codec.Entry]:
    return [e for entries in queue_entries(r, settings).values() for e in entries]


def snapshot(r: redis.Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key with its serialized value and whether it has a TTL."""
    return {key: (r.dump(key), r.pttl(key) > 0) for key in r.keys("*")}


def create_tables(pg: psycopg.Connection[Any], *models: type) -> None:
    kvfast.create_tables(pg, [kvfast.model_info(m) for m in models])


def _pg_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (dict, list)):
        return Jsonb(value)
    return value


def insert_row(pg: psycopg.Connection[Any], obj: Any) -> None:
    """INSERT ``obj`` into its model's table with plain psycopg (what a drain would leave)."""
    info = kvfast.model_info(type(obj))
    names = [f.name for f in info.fields]
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(info.table),
        sql.SQL(", ").join(sql.Identifier(n) for n in names),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    pg.execute(query, [_pg_value(getattr(obj, n)) for n in names])


def pg_count(pg: psycopg.Connection[Any], model: type) -> int:
    table = kvfast.model_info(model).table
    row = pg.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


def everything(key: int, **overrides: Any) -> Everything:
    """A valid Everything with every required field set and no Optional one."""
    values: dict[str, Any] = {
        "id": key,
        "n_int": -42,
        "n_str": "héllo wörld",
        "n_float": 2.5,
        "n_bool": True,
        "n_datetime": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "n_date": dt.date(2024, 2, 29),
        "n_decimal": Decimal("12345.6789"),
        "n_bytes": b"\x00\x01binary\xff",
        "n_dict": {"a": [1, 2.5, None, True], "b": {"c": "d"}},
        "n_list": [1, "two", {"three": 3}],
        "n_uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "n_enum": Color.GREEN,
    }
    values.update(overrides)
    return Everything(**values)


def everything_full(key: int) -> Everything:
    """An Everything with every Optional field set too."""
    base = everything(key)
    optional = {
        "o_" + f.name[2:]: getattr(base, f.name)
        for f in dataclasses.fields(base)
        if f.name.startswith("n_")
    }
    return dataclasses.replace(base, **optional)


# -- comparing what came back with what was written ----------------------------------


def same_float(a: Any, b: Any) -> bool:
    if type(a) is not float or type(b) is not float:
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def same_json(a: Any, b: Any) -> bool:
    """Equal JSON values with equal types (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_field(written: Any, read: Any) -> bool:
    """``read`` is what kvfast must return for ``written`` (exact type, same value)."""
    if written is None:
        return read is None
    if isinstance(written, float):
        return same_float(written, read)
    if isinstance(written, dt.datetime):
        return (
            type(read) is dt.datetime
            and read.utcoffset() == dt.timedelta(0)
            and read == written.astimezone(UTC)
        )
    if isinstance(written, (dict, list)):
        return same_json(written, read)
    if isinstance(written, Decimal):
        return type(read) is Decimal and read == written
    return type(read) is type(written) and bool(read == written)


def differences(written: Any, read: Any) -> list[str]:
    """Field-by-field differences between two model instances (empty when equal)."""
    if read is None:
        return ["<object is None>"]
    assert type(read) is type(written), (type(read), type(written))
    return [
        f"{f.name}: wrote {getattr(written, f.name)!r}, read {getattr(read, f.name)!r}"
        for f in dataclasses.fields(written)
        if not same_field(getattr(written, f.name), getattr(read, f.name))
    ]
