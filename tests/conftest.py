"""Fixtures: real Redis and PostgreSQL, a clean key space and database per test.

The servers are the ones named by ``KVFAST_TEST_REDIS_URL`` and ``KVFAST_TEST_PG_DSN``
(``tools/services env`` prints both; they are separate from the demo's);
``tools/test`` starts them with ``tools/services``.  When
a server is missing the tests fail under CI (``CI`` or ``KVFAST_REQUIRE_SERVICES``
set) and are skipped, with the reason, on a developer machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from redis.cluster import RedisCluster

import kvfast
import kvfast.impl
from kvfast.cluster import refresh_slot_map

# The tests flush their Redis database: by default database 1, not the demo's 0.
REDIS_URL = os.environ.get("KVFAST_TEST_REDIS_URL", "redis://127.0.0.1:16379/1")
PG_DSN = os.environ.get(
    "KVFAST_TEST_PG_DSN", "postgresql://kvfast:kvfast@127.0.0.1:15432/kvfast_test"
)
REQUIRE = bool(os.environ.get("CI") or os.environ.get("KVFAST_REQUIRE_SERVICES"))
# A Redis Cluster (`tools/services up cluster`): database 0 only, flushed per test.
CLUSTER_URL = os.environ.get("KVFAST_TEST_CLUSTER_URL", "redis://127.0.0.1:17001/0")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"kvfast: redis={kvfast.settings.redact(REDIS_URL)} pg={kvfast.settings.redact(PG_DSN)} "
        f"cluster={kvfast.settings.redact(CLUSTER_URL)}",
        f"kvfast: psycopg implementation={psycopg.pq.__impl__}, "
        f"redis-py hiredis={redis.utils.HIREDIS_AVAILABLE}",
        f"kvfast: implementation={kvfast.impl.IMPL} (KVFAST_IMPL=c|python)",
    ]


def _missing(what: str, exc: Exception, start: str = "tools/services up") -> None:
    message = f"{what} is not reachable ({exc}); start it with `{start}`"
    if REQUIRE:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        _missing("Redis", exc)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg_server() -> str:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        _missing("PostgreSQL", exc)
    return PG_DSN


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[RedisCluster]:
    try:
        client = RedisCluster.from_url(CLUSTER_URL, socket_connect_timeout=3)
        client.ping()
    except (redis.RedisError, OSError) as exc:
        _missing("Redis Cluster", exc, "tools/services up cluster")
    yield client
    client.close()


@pytest.fixture
def rc(cluster_server: RedisCluster) -> RedisCluster:
    """The test cluster, every master flushed (a failover test may have moved them)."""
    refresh_slot_map(cluster_server)
    cluster_server.flushall(target_nodes=RedisCluster.PRIMARIES)
    return cluster_server


@pytest.fixture
def cluster_settings(rc: RedisCluster, pg: psycopg.Connection[Any]) -> kvfast.Settings:
    """Settings for the test cluster, the partitions of ``settings`` (their evenly spaced
    slots give every master some)."""
    return kvfast.Settings(
        redis_url=CLUSTER_URL, pg_dsn=PG_DSN, partitions=8, batch_size=500, lease_ms=2000,
        drain_interval_ms=20, workers=2,
    )


@pytest.fixture
def r(redis_server: redis.Redis) -> redis.Redis:
    """A raw Redis client on an empty database."""
    redis_server.flushdb()
    return redis_server


@pytest.fixture
def pg(pg_server: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to an empty test database (public schema recreated)."""
    with psycopg.connect(pg_server, autocommit=True, options="-c timezone=UTC") as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
        yield conn


@pytest.fixture
def settings(r: redis.Redis, pg: psycopg.Connection[Any]) -> kvfast.Settings:
    """Settings for the test servers, with a small partition count to exercise sharing."""
    return kvfast.Settings(
        redis_url=REDIS_URL, pg_dsn=PG_DSN, partitions=8, batch_size=500, lease_ms=2000,
        drain_interval_ms=20, workers=2,
    )


@pytest.fixture
def client(settings: kvfast.Settings) -> Iterator[kvfast.Client]:
    with kvfast.Client(settings) as c:
        yield c
