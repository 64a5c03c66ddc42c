"""The end of every fault scenario: ``final_check``; dead letters, logs and figures read.

``final_check`` asserts that every PostgreSQL row equals its Redis object,
deleted keys are absent, nothing is queued, in flight or tombstoned, every dead
letter carries its entry and its reason, and the drained + dead-lettered
counters add up to the entries the producers queued.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis
from drainhelpers import converged, counter_total, dead_letters

import kvfast

from .load import LOAD_MODELS


def dead_counter(r: redis.Redis, settings: kvfast.Settings) -> int:
    return counter_total(r, settings, "dead")


def drained_counter(r: redis.Redis, settings: kvfast.Settings) -> int:
    return counter_total(r, settings, "drained")


def fence_epochs(pg: psycopg.Connection[Any], settings: kvfast.Settings) -> dict[int, int]:
    rows = pg.execute("SELECT partition, epoch FROM kvfast_fence WHERE namespace = %s",
                      (settings.namespace,)).fetchall()
    return {int(p): int(e) for p, e in rows}


def dead_entry(doc: dict[str, Any]) -> bytes:
    if "entry" in doc:
        return str(doc["entry"]).encode("utf-8")
    return base64.b64decode(doc["entry_b64"])


def final_check(
    r: redis.Redis,
    pg: psycopg.Connection[Any],
    settings: kvfast.Settings,
    *,
    produced: int | None,
    uncertain: int = 0,
    diverged: dict[type, set[Any]] | None = None,
    models: Sequence[type] = LOAD_MODELS,
) -> dict[str, Any]:
    """The end of every scenario (see the module docstring); returns the figures."""
    counts = converged(r, pg, settings, models, diverged=diverged, allow_dead=True)
    dead = dead_letters(r, settings)
    for p, doc in dead:
        assert doc.get("error"), f"dead letter without a reason in partition {p}: {doc}"
        assert "entry" in doc or "entry_b64" in doc, f"dead letter without its entry: {doc}"
        assert doc.get("partition") == p, doc
    assert dead_counter(r, settings) == len(dead), "dead-letter counters != dead-letter lists"
    drained = drained_counter(r, settings)
    if produced is not None:
        # Exactly once: every queued entry was acked once, as applied or dead-lettered,
        # however many times its batch was applied.
        assert produced <= drained + len(dead) <= produced + uncertain, (
            f"produced {produced} (+{uncertain} uncertain), drained {drained}, dead {len(dead)}"
        )
    return {"rows": sum(counts.values()), "drained": drained, "dead": len(dead)}


def dead_docs(r: redis.Redis, settings: kvfast.Settings) -> list[dict[str, Any]]:
    return [doc for _, doc in dead_letters(r, settings)]


def entry_of(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(orjson.loads(dead_entry(doc)))


# -- the supervisor's output and the figures ------------------------------------------


def stats_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def log_lines(out: str, needle: str) -> list[str]:
    return [line for line in out.splitlines() if needle in line]


_LOADING_DEATH = re.compile(r"KvfastError: Redis refused [^:]+: LOADING ")


def drainer_deaths(out: str) -> tuple[int, int, int]:
    """(drainer process deaths, LOADING tracebacks, lease-keeper threads that died).

    A drainer (or its lease keeper thread) that meets a Redis still loading its
    data set dies today (the bug test_redis_faults.test_redis_still_loading_is_
    reported_as_unavailable shows): the Redis restart scenarios tolerate deaths
    with a LOADING traceback, and only those.
    """
    return (len(log_lines(out, "exited with")), len(_LOADING_DEATH.findall(out)),
            len(log_lines(out, "Exception in thread kvfast-lease")))


def report(name: str, **figures: Any) -> None:
    """Print a scenario's measured figures (shown with ``pytest -rP`` or ``-s``)."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    print(f"FIGURES {name}: {shown}")
