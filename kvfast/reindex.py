"""``python -m kvfast.reindex MODEL…``: rebuild the Redis index sets of models.

Run it after changing a model's ``indexes=`` while Redis holds its objects
(the supervisor refuses to start until then, see ``kvfast.indexmeta``), once
every producer runs the new model.  For each model it

1. adds every live object of the table to the sets of its indexed fields'
   current values (one SCAN of the key space, then HMGET and SADD pipelined
   per 1,000 objects);
2. deletes the table's sets of fields the model no longer indexes;
3. records the model's indexes in ``ns:meta``.

It is safe while producers and drainers run: a write meanwhile adds its own
members, SADD is idempotent, and a member left stale by a concurrent move is
dropped by the next ``find`` that reads it.  Objects only in PostgreSQL need
nothing: ``find`` reads them from there.

MODEL is a model's class name or its table; the models come from ``--models``
modules (``KVFAST_MODELS``), as for the supervisor.  Exit codes: 0 done, 2 bad
arguments or configuration, 4 Redis unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from kvfast.client import Client
from kvfast.drivers import redis_errors
from kvfast.errors import ConfigError, ConnectionFailed, KvfastError
from kvfast.indexmeta import record
from kvfast.keys import Keys
from kvfast.model import TOMBSTONE_FIELD, ModelInfo
from kvfast.settings import Settings, SupervisorOptions
from kvfast.supervisor import RET_CONFIG, RET_OK, RET_UNAVAILABLE, _import_models

__all__ = ["Reindexed", "main", "reindex"]

#: objects read (HMGET) and indexed (SADD) per pipelined round trip
_BATCH = 1000
_TOMB = TOMBSTONE_FIELD.encode()


@dataclass(frozen=True, slots=True)
class Reindexed:
    """What ``reindex`` did to one model."""

    objects: int
    members: int
    dropped_sets: int

    def __str__(self) -> str:
        return (f"{self.objects} objects indexed ({self.members} set members), "
                f"{self.dropped_sets} sets of fields no longer indexed deleted")


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(items, size)):
        yield chunk


def reindex(client: Client, info: ModelInfo) -> Reindexed:
    """Rebuild ``info``'s index sets from its objects in Redis (module docstring)."""
    keys = client.keys
    fields = [f.encode() for f in info.indexes]
    objects = members = dropped = 0
    with redis_errors(client.settings):
        client.check_partitions()
        redis = client.redis
        scan = redis.scan_iter(match=keys.table_pattern("o", info.table), count=_BATCH)
        for names in _chunks(scan, _BATCH):
            pipe = redis.pipeline(transaction=False)
            for name in names:
                pipe.hmget(name, [_TOMB, *fields])
            adds = redis.pipeline(transaction=False)
            for name, values in zip(names, pipe.execute(), strict=True):
                if values[0] is not None:  # a tombstone: a pending delete
                    continue
                p = keys.partition_in(name)
                member = name[len(keys.obj(p, info.table, "").encode()):]
                objects += 1
                for field, value in zip(info.indexes, values[1:], strict=True):
                    if value is not None:
                        adds.sadd(keys.index_prefix(p, info.table, field) + value, member)
                        members += 1
            adds.execute()
        scan = redis.scan_iter(match=keys.table_pattern("x", info.table), count=_BATCH)
        for names in _chunks(scan, _BATCH):
            stale = [n for n in names if not _kept(keys, info, n)]
            if stale:
                dropped += int(redis.unlink(*stale))
    record(client, info)
    return Reindexed(objects, members, dropped)


def _kept(keys: Keys, info: ModelInfo, name: bytes) -> bool:
    """Whether an index set of ``info``'s table belongs to a field it indexes."""
    p = keys.partition_in(name)
    return any(name.startswith(keys.index_prefix(p, info.table, f)) for f in info.indexes)


def _resolve(names: Sequence[str], models: list[ModelInfo]) -> list[ModelInfo]:
    out = []
    for name in names:
        found = [m for m in models if name in (m.name, m.table)]
        if len(found) != 1:
            known = ", ".join(sorted(m.name for m in models))
            what = "no model" if not found else "more than one model"
            raise ConfigError(f"{what} named {name!r} (class name or table); known: {known}")
        out.append(found[0])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvfast.reindex", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    Settings.add_arguments(p, ("redis_url", "namespace", "partitions"))
    SupervisorOptions.add_arguments(p, ("models",))
    p.add_argument("model", nargs="+", metavar="MODEL", help="class name or table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_args(args)
        options = SupervisorOptions.from_args(args)
        models = _resolve(args.model, _import_models(options.models))
        with Client(settings) as client:
            for info in models:
                print(f"{info.name} ({info.table}): {reindex(client, info)}")
    except ConnectionFailed as exc:
        print(f"kvfast.reindex: {exc}", file=sys.stderr)
        return RET_UNAVAILABLE
    except KvfastError as exc:
        print(f"kvfast.reindex: {exc}", file=sys.stderr)
        return RET_CONFIG
    return RET_OK


if __name__ == "__main__":
    sys.exit(main())
