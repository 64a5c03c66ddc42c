"""Redis key names of the drain, spelled out from their documented layout (``keys.py``),
so the tests check that layout rather than echo kvfast's own code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kvfast


def tag(settings: kvfast.Settings, p: int) -> str:
    return f"{{{settings.namespace}:{p}}}"


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
