"""Shared by the declared-column-type tests (issue 10): the values both stores must
return, strict comparison, and an environment with an in-process drainer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import redis
from drainhelpers import dead_letters, is_idle
from helpers import obj_key, same_json
from models import RideStatus, Typed

import kvfast
from kvfast.drainer import Drainer
from kvfast.schema import select_rows

UTC = dt.UTC
INFO = kvfast.model_info(Typed)
JSON_FIELDS = {"js", "jsb", "o_js"}

# -- expected values (independent of kvfast) -----------------------------------------------


def f32(x: float) -> float:
    return x if not math.isfinite(x) else float(str(np.float32(x)))


def normal(name: str, value: Any) -> Any:
    """What both stores must return for ``value`` written to field ``name``."""
    if value is None:
        return None
    if name in ("char", "o_char", "id"):
        return value.rstrip(" ")
    if name == "pads":
        return [x.rstrip(" ") for x in value]
    if name in ("money", "o_money"):
        q = value.quantize(Decimal("0.01"))
        return q if q else abs(q)
    if name == "moneys":
        return [None if x is None else (x.quantize(Decimal("0.1")) or abs(x.quantize(
            Decimal("0.1")))) for x in value]
    if name in ("status", "o_status"):
        return RideStatus(value)  # a label is accepted for its member
    if name in ("real", "o_real"):
        return f32(value)
    if name == "reals":
        return [f32(x) for x in value]
    if name == "tstz":
        return value.astimezone(UTC)
    if name == "tstzs":
        return [x.astimezone(UTC) for x in value]
    return value


def normalized(obj: Typed) -> Typed:
    return dataclasses.replace(obj, **{f.name: normal(f.name, getattr(obj, f.name))
                                       for f in INFO.fields})


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dt.datetime):
        return bool(a == b and a.utcoffset() == b.utcoffset())
    if isinstance(a, Decimal):
        ea, eb = a.as_tuple().exponent, b.as_tuple().exponent
        assert isinstance(ea, int) and isinstance(eb, int)
        return a == b and (ea == eb or (ea >= 0 and eb >= 0))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def differences(want: Typed, got: Any, label: str) -> list[str]:
    if got is None:
        return [f"{label}: missing"]
    out = []
    for f in INFO.fields:
        a, b = getattr(want, f.name), getattr(got, f.name)
        ok = same_json(a, b) if f.name in JSON_FIELDS and a is not None else same(a, b)
        if not ok:
            out.append(f"{label} {f.name}: want {a!r}, got {b!r}")
    return out


# -- environment ---------------------------------------------------------------------------


@dataclasses.dataclass
class Env:
    r: redis.Redis
    pg: psycopg.Connection[Any]
    settings: kvfast.Settings
    drainer: Drainer
    writer: kvfast.Repository[Typed]  # falls back to PostgreSQL
    reader: kvfast.Repository[Typed]  # Redis only

    def drain(self) -> None:
        while (claim := self.drainer.claim()) is not None:
            report = self.drainer.process(claim)
            assert report.acked and report.dead == 0, dead_letters(self.r, self.settings)
        assert is_idle(self.r, self.settings)

    def check(self, written: Typed) -> None:
        """Redis, PostgreSQL and the fallback read all return ``written`` normalized.

        Leaves the object in PostgreSQL only: a later update hydrates Redis from it."""
        want = normalized(written)
        key = want.id
        problems = differences(want, self.reader.get_by_id(key), "redis")
        row = select_rows(self.pg, INFO, [key]).get(key)
        problems += differences(want, None if row is None else INFO.from_pg_row(row), "pg")
        assert self.r.delete(obj_key(self.settings, Typed, key)) == 1
        problems += differences(want, self.writer.get_by_id(key), "fallback")
        assert not problems, "\n".join(problems)


@contextmanager
def make_env(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> Iterator[Env]:
    """Typed's table created, a drainer, a writer (with fallback) and a Redis-only reader."""
    kvfast.create_tables(pg, [INFO])
    drainer = Drainer(settings)
    with (
        kvfast.Client(settings) as writer,
        kvfast.Client(dataclasses.replace(settings, pg_dsn=None)) as reader,
    ):
        try:
            yield Env(r, pg, settings, drainer, kvfast.Repository(Typed, client=writer),
                      kvfast.Repository(Typed, client=reader))
        finally:
            drainer.close()
