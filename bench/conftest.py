"""kvfast benchmarks: ``pytest bench/ --benchmark-only`` (services from ``tools/services up``).

Each benchmark measures its reference in the same run (redis-benchmark, plain
redis-py, a raw socket, hand-written psycopg COPY) and records kvfast, the
reference, the ratio and the seed target of issue 5.  At the end a summary table
is printed and written, with the raw figures, to ``bench/results/latest.json``
(``tools/bench-report`` turns it into markdown and a PNG chart).

Servers: Redis database 5 and PostgreSQL database ``kvfast_test_d`` by default
(``KVFAST_BENCH_REDIS_URL`` / ``KVFAST_BENCH_PG_DSN``); only those are flushed.

Sizes (environment variables; the defaults fit the 15-minute budget on 2 cores):

    KVFAST_BENCH_PRODUCER_N          records per producer round        100000
    KVFAST_BENCH_PRODUCER_BATCH      records per create_many call      5000
    KVFAST_BENCH_REDIS_BENCHMARK_N   redis-benchmark requests/command  500000
    KVFAST_BENCH_LATENCY_N           single round trips timed          20000
    KVFAST_BENCH_DRAIN_N             queued writes per drain run       500000 (issue: 1000000)
    KVFAST_BENCH_DRAIN_WORKERS       drainer counts                    1,2,4
    KVFAST_BENCH_E2E_SECONDS         paced production per rate         8
    KVFAST_BENCH_E2E_RATES           offered rates, % of producer max  25,50,100
    KVFAST_BENCH_SCALE_DEPTHS        claim benchmark queue depths      1000,...,1000000
    KVFAST_BENCH_SCALE_10M=1         add a 10,000,000-entry depth
    KVFAST_BENCH_FIND_N              objects find runs over            200000 (issue: 1000000)
    KVFAST_BENCH_FIND_CALLS          finds timed per case              2000
    KVFAST_BENCH_FIND_CREATE_N       records per create_many round     100000

Benchmarks report; they never fail on a missed target.  They do fail when
kvfast loses or changes data (a drain whose tables differ from the reference's).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import _config
import _data
import _results
import psycopg
import pytest
import redis

import kvfast
import kvfast.impl

REQUIRE = bool(os.environ.get("CI") or os.environ.get("KVFAST_REQUIRE_SERVICES"))
_STARTED = time.time()
_LOAD_START = os.getloadavg()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"kvfast bench: redis={kvfast.settings.redact(_config.REDIS_URL)} "
        f"pg={kvfast.settings.redact(_config.PG_DSN)} cpus={os.cpu_count()}",
        f"kvfast bench: producer n={_config.PRODUCER_N:,} batch={_config.PRODUCER_BATCH:,}, "
        f"latency n={_config.LATENCY_N:,}, drain n={_config.DRAIN_N:,} "
        f"workers={_config.DRAIN_WORKERS}, e2e {_config.E2E_SECONDS}s at {_config.E2E_RATES}%, "
        f"claim depths={_config.SCALE_DEPTHS}",
        f"kvfast bench: implementation={kvfast.impl.IMPL} (KVFAST_IMPL=c|python)",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --benchmark-disable nothing is measured: skip rather than report nonsense."""
    if config.getoption("benchmark_disable", default=False):
        skip = pytest.mark.skip(reason="benchmarks are disabled (--benchmark-disable)")
        for item in items:
            item.add_marker(skip)


def _missing(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); start it with `tools/services up`"
    if REQUIRE:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _ensure_database() -> None:
    """Create the benchmark database when the server has the role but not the database."""
    try:
        with psycopg.connect(_config.PG_DSN, connect_timeout=5):
            return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    info = psycopg.conninfo.conninfo_to_dict(_config.PG_DSN)
    name = str(info.get("dbname"))
    for maintenance in ("postgres", "kvfast"):
        info["dbname"] = maintenance
        try:
            with psycopg.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True,
                                 connect_timeout=5) as conn:
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(
                    psycopg.sql.Identifier(name)))
                return
        except psycopg.OperationalError:
            continue


@pytest.fixture(scope="session", autouse=True)
def services() -> Iterator[None]:
    """Both servers up; an empty benchmark database in each; the model tables created."""
    client = redis.Redis.from_url(_config.REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
        _results.RESULTS.data["redis_version"] = client.info("server").get("redis_version")
    except redis.RedisError as exc:
        _missing("Redis", exc)
    finally:
        client.close()
    try:
        _ensure_database()
        with _config.pg_connect() as conn:
            v = conn.info.server_version
            _results.RESULTS.data["postgres_version"] = f"{v // 10000}.{v % 10000}"
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
    except psycopg.OperationalError as exc:
        _missing("PostgreSQL", exc)
    _config.create_bench_tables()
    _config.flush_redis()
    yield
    _config.flush_redis()


@pytest.fixture(scope="module")
def sample() -> tuple[list[bytes], bytes]:
    """The HSET arguments and queue entry of one booking (once per module)."""
    return _data.sample_booking_writes()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=_config.ROOT, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    except OSError:
        return ""


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "platform": platform.platform(), "redis": _results.RESULTS.data.get("redis_version"),
        "postgres": _results.RESULTS.data.get("postgres_version"),
        "psycopg": psycopg.__version__, "psycopg_impl": psycopg.pq.__impl__,
        "kvfast_impl": kvfast.impl.IMPL,
        "redis_py": redis.__version__,
        "git": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "kvfast")),
        "loadavg_start": [round(x, 2) for x in _LOAD_START],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results = _results.RESULTS
    if not results.rows:
        return
    elapsed = time.time() - _STARTED
    machine = _machine()
    tr = terminalreporter
    tr.section("kvfast benchmark summary")
    tr.write_line(f"kvfast implementation: {machine['kvfast_impl']} (KVFAST_IMPL=c|python)")
    tr.write_line(f"{machine['nproc']} CPUs ({machine['cpu']}), Redis {machine['redis']}, "
                  f"PostgreSQL {machine['postgres']}, kvfast {machine['git']}"
                  f"{' (modified)' if machine['git_dirty'] else ''}, run {elapsed:.0f}s, "
                  f"load average {machine['loadavg_start'][0]} at start, "
                  f"{machine['loadavg_end'][0]} at end")
    for line in _results.table_lines(results.ordered()):
        tr.write_line(line)
    misses = [r for r in results.rows if r.status == "MISS"]
    tr.write_line(f"{len(results.rows)} figures, "
                  f"{sum(r.status == 'pass' for r in results.rows)} targets met, "
                  f"{len(misses)} missed")
    doc = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "machine": machine,
        "params": {
            "producer_n": _config.PRODUCER_N, "producer_batch": _config.PRODUCER_BATCH,
            "redis_benchmark_n": _config.REDIS_BENCHMARK_N, "latency_n": _config.LATENCY_N,
            "drain_n": _config.DRAIN_N, "drain_workers": _config.DRAIN_WORKERS,
            "batch_size": _config.BATCH_SIZE, "partitions": _config.PARTITIONS,
            "drain_interval_ms": _config.DRAIN_INTERVAL_MS, "e2e_seconds": _config.E2E_SECONDS,
            "e2e_rates": _config.E2E_RATES, "scale_depths": _config.SCALE_DEPTHS,
        },
        "rows": [r.as_dict() for r in results.ordered()],
        "data": results.data,
    }
    _config.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = _config.RESULTS_DIR / "latest.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tr.write_line(f"written to {path.relative_to(_config.ROOT)} "
                  "(tools/bench-report turns it into markdown and a PNG)")
