"""Data PostgreSQL rejects, and bytes that are not queue entries at all.

6. Poison rows: about 1% of the writes break a CHECK constraint, a foreign key or
   a length CHECK the test adds to the tables.  Every good row lands, every bad
   one is dead-lettered with PostgreSQL's error, no partition stalls, and the
   drain of the good rows is not slowed by more than a (generous) factor.
7. Foreign garbage: random bytes, JSON of the wrong shape, entries of an unknown
   model or format version, pushed onto the queues by another client during the
   load: each is dead-lettered with the reason, and the drainers keep going.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import queue_key, run_supervisor
from psycopg import sql

import kvfast

from .checks import dead_docs, dead_entry, entry_of, final_check, log_lines, report, stats_json
from .load import (
    LOAD_MODELS,
    POISON_ERRORS,
    SUPERVISOR_MODELS,
    Load,
    add_poison_constraints,
    create_load_tables,
)
from .supervise import injecting, stop_supervisor, supervised_load, wait_drained

#: the drain of the good rows with 1% poison may be at most this much slower
MAX_SLOWDOWN = 10.0


def _reset(r: redis.Redis, pg: psycopg.Connection[Any]) -> None:
    """Empty Redis and the tables (constraints stay)."""
    r.flushall()
    tables = ", ".join(kvfast.model_info(m).table for m in LOAD_MODELS)
    pg.execute(f"TRUNCATE {tables}, kvfast_fence")


@pytest.mark.slow
def test_poison_rows_are_dead_lettered_and_the_good_rows_drain_at_speed(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    """The same load twice, drained as a backlog by ``--drain-until-empty``: without
    poison, then with 1% poison mixed into the producers' create_many batches."""
    create_load_tables(fpg)
    add_poison_constraints(fpg)
    runs: dict[str, dict[str, Any]] = {}
    for name, poison in (("clean", 0.0), ("poison", 0.01)):
        _reset(fr, fpg)
        with Load(fsettings, 2, 30_000, seed=6, keys=1000, poison=poison) as load:
            produced = load.result()
        stats_path = tmp_path / f"{name}.json"
        code, out = run_supervisor(fsettings, "--drain-until-empty", "--stats-json",
                                   str(stats_path), workers=3, models=SUPERVISOR_MODELS,
                                   timeout=300)
        assert code == 0, out[-3000:]
        stats = stats_json(stats_path)
        good = produced["entries"] - len(produced["poison"])
        # Time between the first and the last batch report (no start-up in it).
        span = max(0.1, stats["last_batch_at"] - stats["first_batch_at"])
        runs[name] = {"produced": produced, "stats": stats, "good": good, "span": span,
                      "rate": good / span, "out": out}
        if name == "poison":
            poison_keys = _check_poison(fr, fpg, fsettings, produced["poison"])
            figures = final_check(fr, fpg, fsettings, produced=produced["entries"],
                                  diverged=poison_keys)
            assert figures["dead"] == len(produced["poison"])
        else:
            figures = final_check(fr, fpg, fsettings, produced=produced["entries"])
            assert figures["dead"] == 0
        runs[name]["figures"] = figures
    clean, poisoned = runs["clean"], runs["poison"]
    poisoned_share = len(poisoned["produced"]["poison"]) / poisoned["produced"]["entries"]
    assert 0.005 < poisoned_share < 0.02
    slowdown = clean["rate"] / poisoned["rate"]
    assert slowdown < MAX_SLOWDOWN, (
        f"good rows drained {slowdown:.1f}x slower with {poisoned_share:.1%} poison: "
        f"{clean['rate']:,.0f} vs {poisoned['rate']:,.0f} rows/s"
    )
    report("6 poison rows", writes=poisoned["produced"]["entries"],
           poison=len(poisoned["produced"]["poison"]), poison_share=poisoned_share,
           dead=poisoned["figures"]["dead"], clean_rows_per_s=clean["rate"],
           poisoned_rows_per_s=poisoned["rate"], slowdown=slowdown,
           clean_span_s=clean["span"], poisoned_span_s=poisoned["span"])


def _check_poison(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings,
    poison: list[tuple[str, Any, str]],
) -> dict[type, set[Any]]:
    """Each poison row is dead-lettered once, with its PostgreSQL error; nothing else is."""
    dead: dict[tuple[str, Any], dict[str, Any]] = {}
    for doc in dead_docs(r, settings):
        entry = entry_of(doc)
        assert entry["o"] == "c", doc
        key = (entry["m"], entry["k"])
        assert key not in dead, f"dead-lettered twice: {key}"
        dead[key] = doc
    expected = {(table, key): kind for table, key, kind in poison}
    assert set(dead) == set(expected), (
        f"missing: {sorted(set(expected) - set(dead), key=repr)[:10]}, "
        f"unexpected: {sorted(set(dead) - set(expected), key=repr)[:10]}"
    )
    for ident, kind in expected.items():
        sqlstate, name = POISON_ERRORS[kind]
        error = dead[ident]["error"]
        assert error.startswith(sqlstate) and name in error, (ident, error)
    by_table = {kvfast.model_info(m).table: m for m in LOAD_MODELS}
    keys: dict[type, set[Any]] = {}
    for table, key in expected:
        keys.setdefault(by_table[table], set()).add(key)
    # None of them reached PostgreSQL.
    for model, bad in keys.items():
        info = kvfast.model_info(model)
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} = ANY(%s)").format(
            sql.Identifier(info.table), sql.Identifier(info.key))
        rows = pg.execute(query, (list(bad),)).fetchone()
        assert rows is not None and rows[0] == 0
    return keys


# -- 7. foreign garbage ---------------------------------------------------------------------

#: (bytes, what the dead letter's reason says).  An entry of a model the drainers
#: were not given is not garbage: it waits for a drainer that has the model
#: (kvfast.holds; tests/test_holds.py), so it is not in this list.
GARBAGE: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"\xff\xfe\x00\x01 not utf-8", "not JSON"),
    (b"not json at all", "not JSON"),
    (b'{"v": 1, "m": "d_rides", "o": "c", "k": 1', "not JSON"),  # cut short
    (b"null", "not an object with v, m, o, k and t"),
    (b"[1, 2, 3]", "not an object with v, m, o, k and t"),
    (b'{"hello": "world"}', "not an object with v, m, o, k and t"),
    (b'{"v": 2, "m": "d_rides", "o": "c", "k": 1, "f": {"id": 1}, "t": 1}',
     "unknown entry format version 2"),
    (b'{"v": "1", "m": "d_rides", "o": "u", "k": 1, "f": {"counter": 1}, "t": 1}',
     "unknown entry format version '1'"),
    (b'{"v": 1, "m": "d_rides", "o": "x", "k": 1, "f": {"id": 1}, "t": 1}', "bad model"),
    (b'{"v": 1, "m": "d_rides", "o": "u", "k": [1], "f": {"counter": 1}, "t": 1}', "bad key"),
    (b'{"v": 1, "m": "d_rides", "o": "u", "k": 1, "f": {"nope": 1}, "t": 1}',
     "has no field 'nope'"),
    (b'{"v": 1, "m": "d_rides", "o": "u", "k": 1, "f": {}, "t": 1}', "without fields"),
    (b'{"v": 1, "m": "d_rides", "o": "u", "k": "one", "f": {"counter": 1}, "t": 1}',
     "DRide key 'one'"),
    (b'{"v": 1, "m": "d_rides", "o": "c", "k": 1, "f": {"id": "one"}, "t": 1}',
     "DRide create"),
    (b'{"v": 1, "m": "d_rides", "o": "d", "k": 1, "t": 1}', "without a tombstone id"),
    (b'{"v": 1, "m": "d_rides", "o": "u", "k": 1, "f": {"counter": 1}, "t": "now"}',
     "bad timestamp"),
]


@pytest.mark.slow
def test_foreign_garbage_on_the_queues_is_dead_lettered(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    create_load_tables(fpg)
    rng = random.Random(7)
    pushed: list[tuple[int, bytes, str]] = []
    stop = threading.Event()

    def pusher() -> None:
        with redis.Redis.from_url(fsettings.redis_url) as other:
            i = 0
            while not stop.is_set():
                raw, reason = GARBAGE[i % len(GARBAGE)]
                if i % len(GARBAGE) == 0:  # and now and then bytes of every value
                    raw, reason = bytes([0xFF]) + os.urandom(rng.randrange(1, 3000)), "not JSON"
                p = rng.randrange(fsettings.partitions)
                other.rpush(queue_key(fsettings, p), raw)
                pushed.append((p, raw, reason))
                i += 1
                time.sleep(0.02)

    stats_path = tmp_path / "stats.json"
    with supervised_load(fsettings, stats_path, 2, 25_000, seed=7, keys=1000) as (sup, load):
        with injecting(pusher, stop, "garbage"):
            produced = load.result()
        wait_drained(fr, fsettings, sup)
        out = stop_supervisor(sup)
    assert len(pushed) > 3 * len(GARBAGE)
    assert not log_lines(out, "exited with"), out[-3000:]
    figures = final_check(fr, fpg, fsettings, produced=produced["entries"] + len(pushed))
    dead = dead_docs(fr, fsettings)
    # Each garbage item is in its partition's dead-letter list, once, with its reason;
    # nothing the producers wrote is.
    assert sorted(dead_entry(d) for d in dead) == sorted(raw for _, raw, _ in pushed)
    reasons = {(d["partition"], dead_entry(d)): d["error"] for d in dead}
    for p, raw, reason in pushed:
        error = reasons[(p, raw)]
        assert error.startswith("undecodable entry: ") and reason in error, (raw[:80], error)
    stats = stats_json(stats_path)
    assert stats["dead_lettered"] == len(pushed)
    report("7 foreign garbage", writes=produced["entries"], garbage=len(pushed),
           dead=figures["dead"], rows=figures["rows"], batches=stats["batches"],
           kinds=len(GARBAGE) + 1)
