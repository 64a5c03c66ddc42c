"""Fixtures of the fault-injection scenarios (the rest lives beside this file).

* ``servers.py``: the private pair of servers (``tools/services`` on their own
  ports and directory) and extra ``redis-server`` processes (``RedisProcess``);
* ``load.py``: the mixed load of several producer processes over five models
  (``Load``), poison rows;
* ``supervise.py``: the ``python -m kvfast.supervisor`` of a scenario, waits,
  its output;
* ``checks.py``: ``final_check``, the end of every scenario.

The dead-letter CLI and security tests live here too, for the same servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

import kvfast

from .servers import FaultServers, fault_settings, fresh_pg, fresh_redis, server_session


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[FaultServers]:
    with server_session() as servers:
        yield servers


@pytest.fixture
def fr(fault_servers: FaultServers) -> Iterator[redis.Redis]:
    """A raw client of the private Redis, everything flushed."""
    client = fresh_redis(fault_servers)
    yield client
    client.close()


@pytest.fixture
def fpg(fault_servers: FaultServers) -> Iterator[psycopg.Connection[Any]]:
    with fresh_pg(fault_servers) as conn:
        yield conn


@pytest.fixture
def fsettings(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any]
) -> kvfast.Settings:
    return fault_settings(fault_servers)
