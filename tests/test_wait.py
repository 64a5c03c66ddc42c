"""``wait_replicas`` on one Redis without replicas: every write is applied, and says
it was not replicated (``NotReplicated`` naming its keys), never silently."""

from __future__ import annotations

import dataclasses

import pytest
import redis

import kvfast


@kvfast.model(table="w_rides", key="id")
class WRide:
    id: int
    status: str


def test_writes_without_the_replicas_asked_for_raise_not_replicated(
        settings: kvfast.Settings, r: redis.Redis) -> None:
    waiting = dataclasses.replace(settings, pg_dsn=None, wait_replicas=1, wait_timeout_ms=20)
    with kvfast.Repository(WRide, waiting) as repo:
        with pytest.raises(kvfast.NotReplicated) as err:
            repo.create_many([WRide(i, "new") for i in range(5)])
        assert err.value.keys == [0, 1, 2, 3, 4]
        assert "0 of the 1 replicas asked for (wait_replicas) confirmed it within 20 ms" in str(
            err.value)
        with pytest.raises(kvfast.NotReplicated) as err:
            repo.update(2, status="moved")
        assert err.value.keys == [2]
        with pytest.raises(kvfast.NotReplicated) as err:
            repo.delete_many([3, 4])
        assert err.value.keys == [3, 4]
    # applied all the same, on the master
    with kvfast.Repository(WRide, dataclasses.replace(waiting, wait_replicas=0)) as repo:
        got = repo.get_many(range(5))
    assert [o.status if o else None for o in got] == ["new", "new", "moved", None, None]


def test_wait_replicas_zero_sends_no_wait(settings: kvfast.Settings, r: redis.Redis) -> None:
    r.config_resetstat()
    with kvfast.Repository(WRide, dataclasses.replace(settings, pg_dsn=None)) as repo:
        repo.create_many([WRide(i, "new") for i in range(5)])
        repo.update(1, status="x")
    assert "cmdstat_wait" not in r.info("commandstats")


def test_aio_writes_without_the_replicas_asked_for_raise_not_replicated(
        settings: kvfast.Settings, r: redis.Redis) -> None:
    import kvfast.aio

    waiting = dataclasses.replace(settings, pg_dsn=None, wait_replicas=1, wait_timeout_ms=20)

    async def go() -> list[WRide | None]:
        async with await kvfast.aio.AsyncRepository.open(WRide, waiting) as repo:
            with pytest.raises(kvfast.NotReplicated) as err:
                await repo.create_many([WRide(i, "new") for i in range(5)])
            assert err.value.keys == [0, 1, 2, 3, 4]
            assert "0 of the 1 replicas asked for" in str(err.value)
            with pytest.raises(kvfast.NotReplicated) as err:
                await repo.update(2, status="moved")
            assert err.value.keys == [2]
            with pytest.raises(kvfast.NotReplicated) as err:
                await repo.delete_many([3, 4])
            assert err.value.keys == [3, 4]
            return await repo.get_many(range(5))

    got = kvfast.aio.run(go())
    assert [o.status if o else None for o in got] == ["new", "new", "moved", None, None]
