"""Redis key names of the drain, spelled out from their documented layout (``keys.py``),
so the tests check that layout rather than echo kvfast's own code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from redis.crc import key_slot

import kvfast


@functools.cache
def _tags(namespace: str, n: int) -> list[str]:
    """The documented rule, with redis-py's CRC16 (kvfast uses binascii's): ``{ns:p}``,
    else ``{ns:p:k}`` with the smallest k whose slot is in the p-th of n equal ranges."""
    out = []
    for p in range(n):
        low, high = p * 16384 // n, (p + 1) * 16384 // n
        name, k = f"{namespace}:{p}", 0
        while not low <= key_slot(name.encode()) < high:
            name, k = f"{namespace}:{p}:{k}", k + 1
        out.append("{" + name + "}")
    return out


def tag(settings: kvfast.Settings, p: int) -> str:
    if settings.partitions > 1024:
        return f"{{{settings.namespace}:{p}}}"
    return _tags(settings.namespace, settings.partitions)[p]


def _key(suffix: str) -> Callable[[kvfast.Settings, int], str]:
    def name(settings: kvfast.Settings, p: int) -> str:
        return f"{tag(settings, p)}:{suffix}"

    name.__name__ = name.__qualname__ = f"key_{suffix}"
    return name


#: {ns:p}:q queue, :f in-flight entries, :fm in-flight meta, :d dead letters, :s counters
queue_key = _key("q")
inflight_key = _key("f")
inflight_meta_key = _key("fm")
dead_key = _key("d")
counters_key = _key("s")


def partition_of(settings: kvfast.Settings, model: type, key: Any) -> int:
    return kvfast.model_info(model).partition_of(str(key), settings.partitions)
