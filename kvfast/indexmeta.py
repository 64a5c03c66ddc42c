"""Which indexes a table's Redis index sets were built for, recorded in ``ns:meta``.

Producers add a key to the sets of the fields their model indexes, so objects
written before a field was indexed are in no set of it: ``find`` would miss
them in Redis.  The record (``x:<table>`` → the indexed fields, comma-joined)
lets the supervisor's start-up catch that, like a partition mismatch:

* recorded and equal to the model's: fine;
* the first producer to write a model records its indexes (``HSETNX``, before
  its first write): a supervisor started after it then finds them recorded and
  equal, instead of objects and no record (which it must take for sets built by
  an older model); a producer never overwrites a record, so a real change is
  still caught here;
* nothing recorded, or something else: if Redis holds no object of the table,
  the model's indexes are recorded (nothing to rebuild); otherwise it is a
  ``ConfigError`` (exit 2) asking for ``python -m kvfast.reindex``, which
  rebuilds the sets from the objects and records the model's indexes.

Looking for an object is one SCAN of the key space, stopped at the first
match (only at start-up, and only for a model whose record differs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvfast.cluster import Unit
from kvfast.drivers import redis_errors
from kvfast.errors import ConfigError
from kvfast.resp import check_replies, pack

if TYPE_CHECKING:
    from kvfast.client import Client
    from kvfast.keys import Keys
    from kvfast.model import ModelInfo

__all__ = ["check_recorded", "first_record", "has_objects", "meta_field", "record",
           "record_first", "recorded"]


def meta_field(info: ModelInfo) -> str:
    return f"x:{info.table}"


def recorded(client: Client, info: ModelInfo) -> str | None:
    """The indexes recorded for ``info``'s table, comma-joined ("" = none), or None."""
    with redis_errors(client.settings):
        raw = client.redis.hget(client.keys.meta, meta_field(info))
    return None if raw is None else bytes(raw).decode()  # type: ignore[arg-type]


def record(client: Client, info: ModelInfo) -> None:
    with redis_errors(client.settings):
        client.redis.hset(client.keys.meta, meta_field(info), ",".join(info.indexes))


def first_record(keys: Keys, info: ModelInfo) -> tuple[str, str, str, str]:
    """The command a producer sends before its first write of ``info``: record its
    indexes unless something is recorded already (module docstring)."""
    return ("HSETNX", keys.meta, meta_field(info), ",".join(info.indexes))


def record_first(client: Client, info: ModelInfo) -> None:
    """``first_record`` on the sync client (routed on a cluster), after the start-up
    check of ``kvfast.meta`` (a Redis kvfast refuses gets nothing written)."""
    client.check_partitions()
    command = first_record(client.keys, info)
    topology = client.topology
    if topology is not None:
        # kvfast's own routed send: one try within the socket timeout (redis-py's
        # cluster client retries a node that does not answer for seconds)
        (replies,) = client.execute_units([Unit(topology.slot_of_key(command[1]),
                                                pack(command), 1)])
        check_replies(replies, "HSETNX")
        return
    with redis_errors(client.settings):
        client.redis.hsetnx(*command[1:])


def has_objects(client: Client, info: ModelInfo) -> bool:
    """Whether Redis holds any object (or tombstone) of ``info``'s table."""
    with redis_errors(client.settings):
        for _ in client.redis.scan_iter(match=client.keys.table_pattern("o", info.table),
                                        count=1000):
            return True
    return False


def check_recorded(client: Client, models: Sequence[ModelInfo], command: str) -> None:
    """The start-up check of the module docstring; ``command`` is the reindex command
    line to suggest, without its MODEL arguments."""
    problems: list[str] = []
    for info in models:
        have = recorded(client, info)
        want = ",".join(info.indexes)
        if have == want or (have is None and not want):
            continue
        if not has_objects(client, info):
            record(client, info)
            continue
        problems.append(
            f"model {info.name} (table {info.table!r}) indexes ({want or 'nothing'}) but its "
            f"objects in Redis were indexed for ({have or 'nothing'}): find would miss "
            "objects; rebuild the index sets (after every producer runs this model) with "
            f"`{command} {info.name}`")
    if problems:
        raise ConfigError("index sets do not match their models:\n  " + "\n  ".join(problems))
