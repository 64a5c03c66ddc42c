"""7. Secondary keys: ``Repository.find`` of a value with 10 matches, and what an index
costs ``create_many``.

``find`` runs over ``FIND_N`` objects (``KVFAST_BENCH_FIND_N``, default 200,000;
the issue's figure is 1,000,000), ten per rider: every row is in PostgreSQL
(loaded with COPY, as a drain leaves it, with an index on ``rider``) and the
first half also in Redis (written with ``create_many``, so indexed), the
second half only in PostgreSQL (as after their copies expired).  A find of a
rider of the first half takes the index sets' round trip overlapped with the
SELECT, then the members' hashes; one of the second half the rows' keys and
epochs instead.  The reference, in the same run and interleaved call by call:
the plain ``SELECT … WHERE rider = $1`` on the indexed column with psycopg (rows
as tuples), on its own connection.

The index's cost: ``create_many`` of ``FIND_CREATE_N`` records (batches of
``PRODUCER_BATCH``) into a model with one index against the same model without
it, rounds interleaved, each from an empty Redis database.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import _config
import _results
import pytest
import redis
from psycopg import sql

import kvfast

pytestmark = [pytest.mark.timeout(900)]

FIND_N = _config.env_int("KVFAST_BENCH_FIND_N", 200_000)
CREATE_N = _config.env_int("KVFAST_BENCH_FIND_CREATE_N", 100_000)
CALLS = _config.env_int("KVFAST_BENCH_FIND_CALLS", 2000)
MATCHES = 10
ROUNDS = 3
DATA = _results.RESULTS.data


@kvfast.model(table="bench_requests", key="id", indexes=("rider",))
class SearchRequest:
    id: int
    rider: int
    status: str
    fare_cents: int
    pickup: str


@kvfast.model(table="bench_requests_plain", key="id")
class PlainRequest:
    id: int
    rider: int
    status: str
    fare_cents: int
    pickup: str


def _request(cls: Callable[..., Any], i: int) -> Any:
    return cls(i, i // MATCHES, ("new", "assigned", "done")[i % 3], 500 + i % 9000,
               f"{i % 997} Main Street")


@pytest.fixture(scope="module")
def r() -> Iterator[redis.Redis]:
    client = _config.redis_client()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def loaded(r: redis.Redis) -> Iterator[None]:
    """FIND_N rows in PostgreSQL, the first half also in Redis (module docstring)."""
    infos = [kvfast.model_info(SearchRequest), kvfast.model_info(PlainRequest)]
    with _config.pg_connect() as conn:
        for info in infos:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(info.table)))
        kvfast.create_tables(conn, infos)
        with conn.cursor() as cur, cur.copy(
                "COPY bench_requests (id, rider, status, fare_cents, pickup) FROM STDIN") as copy:
            for i in range(FIND_N):
                o = _request(SearchRequest, i)
                copy.write_row((o.id, o.rider, o.status, o.fare_cents, o.pickup))
        conn.execute("ANALYZE bench_requests")
    with kvfast.Repository(SearchRequest, _config.settings()) as repo:
        objs = [_request(SearchRequest, i) for i in range(FIND_N // 2)]
        for start in range(0, len(objs), 5000):
            repo.create_many(objs[start:start + 5000])
    yield
    r.flushdb()


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered) * 1e3,
            "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1e3}


def _find_vs_select(riders: list[int]) -> tuple[dict[str, float], dict[str, float]]:
    """Time ``find(rider=…)`` and the plain SELECT, alternating, for each rider."""
    query = "SELECT id, rider, status, fare_cents, pickup FROM bench_requests WHERE rider = %s"
    mine: list[float] = []
    plain: list[float] = []
    with kvfast.Repository(SearchRequest, _config.settings()) as repo, \
            _config.pg_connect() as conn:
        for rider in riders[:50]:  # warm-up: connections, prepared statements, scripts
            repo.find(rider=rider)
            conn.execute(query, (rider,)).fetchall()
        for rider in riders:
            t0 = time.perf_counter()
            found = repo.find(rider=rider)
            t1 = time.perf_counter()
            rows = conn.execute(query, (rider,)).fetchall()
            t2 = time.perf_counter()
            mine.append(t1 - t0)
            plain.append(t2 - t1)
            assert len(found) == len(rows) == MATCHES, (rider, found, rows)
    return _quantiles(mine), _quantiles(plain)


def _record_find(benchmark: Any, case: str, riders: list[int]) -> None:
    mine, plain = benchmark.pedantic(_find_vs_select, args=(riders,), rounds=1, iterations=1)
    DATA[f"find.{case}"] = {"kvfast": mine, "select": plain}
    benchmark.extra_info.update({f"find_{k}": v for k, v in mine.items()})
    benchmark.extra_info.update({f"select_{k}": v for k, v in plain.items()})
    add = _results.RESULTS.add
    ref = "plain SELECT WHERE rider = $1 (indexed)"
    add(_results.Row("find", f"find p50, {case}", "ms", mine["p50_ms"], plain["p50_ms"], ref,
                     "ratio_max", 1.5, "<= 1.5x", chart="latency"))
    add(_results.Row("find", f"find p99, {case}", "ms", mine["p99_ms"], plain["p99_ms"], ref,
                     chart="latency"))


@pytest.mark.benchmark(group="7-find")
def test_find_of_objects_in_redis_and_postgresql(benchmark: Any, loaded: None) -> None:
    rng = random.Random(7)
    riders = [rng.randrange(FIND_N // 2 // MATCHES) for _ in range(CALLS)]
    _record_find(benchmark, "in Redis and PostgreSQL", riders)


@pytest.mark.benchmark(group="7-find")
def test_find_of_objects_only_in_postgresql(benchmark: Any, loaded: None) -> None:
    rng = random.Random(8)
    riders = [rng.randrange(FIND_N // 2 // MATCHES, FIND_N // MATCHES) for _ in range(CALLS)]
    _record_find(benchmark, "only in PostgreSQL", riders)


def _create_rounds(r: redis.Redis) -> dict[str, float]:
    """Records/s of create_many, indexed and plain models, rounds interleaved (median)."""
    settings = _config.settings()
    batch = _config.PRODUCER_BATCH
    rates: dict[str, list[float]] = {"indexed": [], "plain": []}
    with contextlib.ExitStack() as stack:
        repos = {name: stack.enter_context(kvfast.Repository(cls, settings))
                 for name, cls in (("indexed", SearchRequest), ("plain", PlainRequest))}
        objs = {name: [_request(repo.model, i) for i in range(CREATE_N)]
                for name, repo in repos.items()}
        for n in range(ROUNDS + 1):  # the first round warms up
            for name, repo in repos.items():
                r.flushdb()
                t0 = time.perf_counter()
                for start in range(0, CREATE_N, batch):
                    repo.create_many(objs[name][start:start + batch])
                if n:
                    rates[name].append(CREATE_N / (time.perf_counter() - t0))
    r.flushdb()
    return {name: statistics.median(v) for name, v in rates.items()}


@pytest.mark.benchmark(group="7-find")
def test_create_many_with_one_index(benchmark: Any, r: redis.Redis) -> None:
    rates = benchmark.pedantic(_create_rounds, args=(r,), rounds=1, iterations=1)
    DATA["find.create_many"] = rates
    benchmark.extra_info.update(rates)
    _results.RESULTS.add(_results.Row(
        "find", "create_many with one index", "records/s", rates["indexed"], rates["plain"],
        "the same model without the index", "ratio_min", 0.75, ">= 0.75x (<= 25% slower)",
        chart="throughput"))
