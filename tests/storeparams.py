"""Fixtures that run a test module's cases on one Redis and on the Redis Cluster.

A module that says ``store, r, settings = storeparams.both_stores()`` gets every
case twice: ``store`` is "redis" (the conftest fixtures as they are) or "cluster"
(``rc`` and ``cluster_settings``: the 3-master test cluster, flushed).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

import kvfast


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Primaries:
    """The cluster client, with the commands a test means for the whole database
    (``dbsize``, ``keys``, ``flushdb``) run on every master; the rest route by key."""

    def __init__(self, rc: RedisCluster) -> None:
        self._rc = rc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rc, name)

    def _nodes(self) -> list[redis.Redis]:
        return [n.redis_connection for n in self._rc.get_primaries()
                if n.redis_connection is not None]

    def dbsize(self) -> int:
        return sum(int(node.dbsize()) for node in self._nodes())

    def keys(self, pattern: str = "*") -> list[bytes]:
        return [k for node in self._nodes() for k in node.keys(pattern)]

    def flushdb(self) -> None:
        for node in self._nodes():
            node.flushdb()


@pytest.fixture
def r(r: redis.Redis, store: str, request: pytest.FixtureRequest) -> Any:
    return r if store == "redis" else Primaries(request.getfixturevalue("rc"))


@pytest.fixture
def settings(settings: kvfast.Settings, store: str,
             request: pytest.FixtureRequest) -> kvfast.Settings:
    if store == "redis":
        return settings
    cluster: kvfast.Settings = request.getfixturevalue("cluster_settings")
    return cluster


def both_stores() -> tuple[Any, Any, Any]:
    """The three fixtures, for a test module to bind at its top level."""
    return store, r, settings
