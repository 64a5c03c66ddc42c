"""Settings and start-ups as operators meet them (issue 14, item 10).

1. A write whose reply does not come within the Redis socket timeout (Redis
   stalled by a slow script) raises ``WriteOutcomeUnknown``, and it was in
   fact applied: sync and asyncio clients alike.
2. Fifteen supervisors started at once with ``--create-tables`` all start
   (the DDL runs under an advisory lock) and drain.
3. A clean supervised run (no takeover) logs no "lost the lease" warning.

Wrong passwords (exit 2 at once, ``AuthenticationFailed``) are in test_security.py,
beside the password-protected servers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import ride
from drainmodels import DRide

import kvfast
from kvfast.aio import AsyncRepository
from kvfast.aioclient import run

from .checks import final_check, log_lines, report, stats_json
from .load import Load, create_load_tables
from .supervise import stop_supervisor, supervised_load, supervisor, wait_drained

# -- 1. a reply that does not come -----------------------------------------------------------

STALL_MS = 1500
# A script that keeps Redis busy (single-threaded: no other client is served) for
# ARGV[1] ms; the requests that arrive meanwhile run once it is done.
_BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > ARGV[1] * 1000
return 1
"""


@contextlib.contextmanager
def _stalled(url: str) -> Iterator[None]:
    """Redis stalled for STALL_MS from the start of the block (a slow script elsewhere)."""
    other = redis.Redis.from_url(url)
    done = threading.Event()

    def stall() -> None:
        other.eval(_BUSY, 0, STALL_MS)
        done.set()

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    time.sleep(0.2)  # the script runs
    try:
        yield
    finally:
        thread.join(30)
        other.close()
        assert done.is_set()


def test_a_write_without_its_reply_is_write_outcome_unknown(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings
) -> None:
    """``redis_socket_timeout`` 0.3 s, Redis stalled 1.5 s: ``create`` raises
    WriteOutcomeUnknown (a RedisUnavailable: retried by code that retries those),
    which says it may have been applied, and it was.  Before, the timeout was not a
    setting and the error was a plain RedisUnavailable: "not written"."""
    settings = dataclasses.replace(fsettings, pg_dsn=None, redis_socket_timeout=0.3)
    with kvfast.Repository(DRide, settings) as rides:
        rides.create(ride(1))  # connected, partition layout checked
        with _stalled(settings.redis_url), pytest.raises(kvfast.WriteOutcomeUnknown) as info:
            rides.create(ride(2, counter=2))
        assert isinstance(info.value, kvfast.RedisUnavailable)
        assert "may have been applied" in str(info.value)
        assert rides.get_by_id(2) == ride(2, counter=2)  # it was
        rides.create(ride(3))  # and the client goes on

    async def async_side() -> None:
        async with await AsyncRepository.open(DRide, settings) as arides:
            await arides.create(ride(4))
            with _stalled(settings.redis_url), pytest.raises(kvfast.WriteOutcomeUnknown) as ainfo:
                await arides.create(ride(5, counter=5))
            assert "may have been applied" in str(ainfo.value)
        async with await AsyncRepository.open(DRide, settings) as arides:
            assert await arides.get_by_id(5) == ride(5, counter=5)

    run(async_side())


# -- 2. supervisors started together ---------------------------------------------------------

STARTS = 15


@pytest.mark.slow
def test_supervisors_started_together_with_create_tables_all_start(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings
) -> None:
    """15 supervisors at once with --create-tables --drain-until-empty on an empty
    database: every one exits 0 (before: most failed at start-up with a unique
    violation on pg_type_typname_nsp_index, CREATE TABLE IF NOT EXISTS racing)."""
    with Load(dataclasses.replace(fsettings, pg_dsn=None), 1, 2000, seed=5) as load:
        produced = load.result()
    sups = [supervisor(fsettings, "--create-tables", "--drain-until-empty", workers=1)
            for _ in range(STARTS)]
    try:
        codes = [s.wait(240) for s in sups]
        outs = [s.output() for s in sups]
    finally:
        for s in sups:
            s.close()
    failed = [(c, o[-1500:]) for c, o in zip(codes, outs, strict=True) if c != 0]
    assert not failed, failed[:2]
    figures = final_check(fr, fpg, fsettings, produced=produced["entries"])
    report("10c concurrent --create-tables", starts=STARTS, failed=len(failed),
           writes=produced["entries"], rows=figures["rows"])


# -- 3. no false "lost the lease" ------------------------------------------------------------


def test_a_clean_run_logs_no_lost_lease(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    """Short leases (renewed every 100 ms) and small batches, nothing killed or stalled:
    no batch is taken over, and no drainer says it lost a lease (before: the lease
    keeper's renewal raced the ack, and a renewal refused because the batch had just
    been acked was logged as a loss, 19 times in a clean run)."""
    create_load_tables(fpg)
    settings = dataclasses.replace(fsettings, lease_ms=300, batch_size=50, partitions=8)
    stats_path = tmp_path / "stats.json"
    with supervised_load(settings, stats_path, 2, 15_000, seed=33, workers=3,
                         rate_each=3000) as (sup, load):
        produced = load.result()
        wait_drained(fr, settings, sup)
        out = stop_supervisor(sup)
    stats = stats_json(stats_path)
    lost = log_lines(out, "lost the lease")
    assert stats["retaken"] == 0 and stats["stale"] == 0, stats  # nothing was lost
    assert not lost, lost[:5]
    assert not log_lines(out, "is stale"), out[-3000:]
    figures = final_check(fr, fpg, settings, produced=produced["entries"])
    report("10d clean run, no false lease loss", writes=produced["entries"],
           batches=stats["batches"], lost_lines=len(lost), rows=figures["rows"])
