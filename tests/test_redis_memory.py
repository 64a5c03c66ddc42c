"""Redis memory limits: eviction policies kvfast refuses, and a full Redis.

The test Redis is shared by the whole run, so every test here puts its
``maxmemory`` and ``maxmemory-policy`` back as it found them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from helpers import create_tables, pg_count, queue_lengths

import kvfast
from kvfast import memory
from kvfast.aio import AsyncRepository, run
from kvfast.demo import Booking
from kvfast.drainer import Drainer

NOW = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)


def booking(i: int) -> Booking:
    return Booking(id=i, driver_id=i % 500, rider_id=i * 7 % 1000, status="new",
                   fare_cents=500 + i % 5000, created_at=NOW, updated_at=NOW)


@pytest.fixture
def memory_config(r: redis.Redis) -> Iterator[redis.Redis]:
    """The test Redis; its memory settings restored afterwards."""
    saved = r.config_get("maxmemory")["maxmemory"], r.config_get("maxmemory-policy")[
        "maxmemory-policy"]
    try:
        yield r
    finally:
        r.config_set("maxmemory", saved[0])
        r.config_set("maxmemory-policy", saved[1])


def _fill_limit(r: redis.Redis, headroom: int) -> None:
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", used + headroom)


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_an_eviction_policy_that_drops_undrained_writes_is_refused(
    memory_config: redis.Redis, settings: kvfast.Settings, policy: str
) -> None:
    memory_config.config_set("maxmemory-policy", policy)
    with kvfast.Repository(Booking, settings) as repo, pytest.raises(kvfast.ConfigError) as info:
        repo.create(booking(1))
    message = str(info.value)
    assert policy in message and "noeviction" in message, message
    assert memory_config.dbsize() == 0  # refused before anything was written


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "volatile-ttl"])
def test_policies_that_keep_keys_without_a_ttl_are_accepted(
    memory_config: redis.Redis, settings: kvfast.Settings, policy: str
) -> None:
    memory_config.config_set("maxmemory-policy", policy)
    with kvfast.Repository(Booking, settings) as repo:
        repo.create(booking(1))
        assert repo.get_by_id(1) == booking(1)


def test_a_full_redis_refuses_a_batch_whole_and_the_drain_frees_it(
    memory_config: redis.Redis, settings: kvfast.Settings, pg: psycopg.Connection[Any]
) -> None:
    r = memory_config
    create_tables(pg, Booking)
    r.config_set("maxmemory-policy", "noeviction")
    with kvfast.Repository(Booking, settings) as repo:
        repo.create(booking(0))  # the meta key and the scripts exist before the limit
        _fill_limit(r, 3_000_000)
        written = 1
        with pytest.raises(kvfast.RedisFull) as info:
            for _ in range(1000):
                repo.create_many(booking(written + i) for i in range(500))
                written += 500
        assert "queued" in str(info.value), str(info.value)
        # The refused call wrote nothing: not one of its objects, not one entry.
        assert sum(queue_lengths(r, settings)) == written
        assert repo.get_many(range(written, written + 500)) == [None] * 500

        # Draining is what frees memory, and it runs while Redis is full.
        with Drainer(settings) as drainer:
            assert drainer.drain_until_empty() == written
        assert pg_count(pg, Booking) == written
        # The producer succeeds again by itself once the drain has made room.
        repo.create_many(booking(written + i) for i in range(100))
        assert repo.get_by_id(written + 99) == booking(written + 99)


def test_create_many_bigger_than_a_block_writes_all_or_nothing(
    memory_config: redis.Redis, settings: kvfast.Settings
) -> None:
    r = memory_config
    r.config_set("maxmemory-policy", "noeviction")
    with kvfast.Repository(Booking, settings) as repo:
        repo.create(booking(0))
        # Room for roughly half of the 20,000 records below.
        _fill_limit(r, 4_000_000)
        with pytest.raises(kvfast.RedisFull):
            repo.create_many(booking(i) for i in range(1, 20_001))
        assert sum(queue_lengths(r, settings)) == 1
        assert r.dbsize() == 2 + 1  # meta, object 0, its queue


def test_delete_many_bigger_than_a_block_writes_all_or_nothing(
    memory_config: redis.Redis, settings: kvfast.Settings
) -> None:
    r = memory_config
    r.config_set("maxmemory-policy", "noeviction")
    with kvfast.Repository(Booking, settings) as repo:
        repo.create_many(booking(i) for i in range(20_000))
        _fill_limit(r, 1_000_000)
        with pytest.raises(kvfast.RedisFull):
            repo.delete_many(range(20_000))
        assert sum(queue_lengths(r, settings)) == 20_000  # not one delete queued
        assert repo.get_many([0, 9_999, 19_999]) == [booking(0), booking(9_999), booking(19_999)]


def test_an_update_refused_by_a_full_redis_is_redis_full_naming_the_backlog(
    memory_config: redis.Redis, settings: kvfast.Settings
) -> None:
    r = memory_config
    r.config_set("maxmemory-policy", "noeviction")
    with kvfast.Repository(Booking, settings) as repo:
        repo.create_many(booking(i) for i in range(10))
        r.config_set("maxmemory", 1)  # every write refused
        with pytest.raises(kvfast.RedisFull) as info:
            repo.update(3, status="paid")
        message = str(info.value)
        assert "11 entries queued" not in message  # 10 creates, the update was refused
        assert "10 entries queued" in message and "maxmemory" in message, message
        assert isinstance(info.value, kvfast.RedisCommandError)
        r.config_set("maxmemory", 0)
        repo.update(3, status="paid")  # by itself once there is room
        assert repo.get_by_id(3) == dataclasses.replace(booking(3), status="paid")


def test_the_async_repository_refuses_an_unsafe_policy(
    memory_config: redis.Redis, settings: kvfast.Settings
) -> None:
    policy = "allkeys-lru"
    memory_config.config_set("maxmemory-policy", policy)

    async def main() -> None:
        with pytest.raises(kvfast.ConfigError, match=policy):
            await AsyncRepository.open(Booking, settings)

    run(main())
    assert memory_config.dbsize() == 0


def test_an_unknown_policy_is_refused() -> None:
    # (Redis refuses to be set to one: a future Redis's new policy is the case)
    assert memory.policy_problem("noeviction", "x") is None
    problem = memory.policy_problem(b"volatile-new", "redis://h:1/0")
    assert problem is not None and "volatile-new" in problem and "noeviction" in problem


def test_the_start_up_check_writes_nothing_when_the_meta_key_exists(
    memory_config: redis.Redis, settings: kvfast.Settings
) -> None:
    r = memory_config
    r.config_set("maxmemory-policy", "noeviction")
    with kvfast.Client(settings) as client:
        client.check_partitions()  # records the meta key
    r.config_set("maxmemory", 1)  # every write is refused now
    with kvfast.Client(settings) as client:
        client.check_partitions()
    wrong = dataclasses.replace(settings, partitions=settings.partitions + 1)
    with kvfast.Client(wrong) as client, pytest.raises(kvfast.PartitionMismatch):
        client.check_partitions()
