"""Redis memory (issue 14 items 1-3): a full Redis, eviction policies, a user without CONFIG.

* Redis at ``maxmemory`` under ``noeviction``, the drainers stopped: producers
  get ``RedisFull`` (naming the backlog) and nothing of a refused call is
  written; a supervisor started while Redis is full starts (its start-up check
  only reads the meta key), drains (the drain scripts carry ``allow-oom``),
  and the producers, retrying the very call that was refused, succeed again by
  themselves once the drain has freed memory.
* ``allkeys-lru``: the supervisor and the dead-letter tool refuse to start (exit 2,
  the message names the policy and the fix).
* A user that may not run CONFIG: the policy is read from ``INFO memory``; a user
  that may run neither is refused.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import queue_key

import kvfast
from kvfast.demo import Booking

from .checks import final_check, report
from .load import create_load_tables
from .servers import REDIS_PORT, FaultServers, RedisProcess, fault_settings
from .supervise import stop_supervisor, supervisor, wait_drained, wait_for
from .test_security import ACL_USER, KVFAST_COMMANDS, acl_user

FULL_REDIS_PORT = REDIS_PORT + 6
NOW = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)
BATCH = 500


def booking(i: int) -> Booking:
    return Booking(id=i, driver_id=i % 500, rider_id=i * 7 % 1000, status="new",
                   fare_cents=500 + i % 5000, created_at=NOW, updated_at=NOW)


def queued(r: redis.Redis, settings: kvfast.Settings) -> int:
    pipe = r.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.llen(queue_key(settings, p))
    return sum(pipe.execute())


def objects(r: redis.Redis) -> int:
    return sum(1 for _ in r.scan_iter(match="*:o:*", count=10_000))


class Producer(threading.Thread):
    """create_many of BATCH new bookings in a loop; a refused call is retried as it was."""

    def __init__(self, settings: kvfast.Settings, index: int) -> None:
        super().__init__(name=f"producer-{index}", daemon=True)
        self.settings = settings
        self.base = (index + 1) * 10**7
        self.written = 0
        self.full_errors = 0
        self.first_full: float | None = None
        self.recovered: float | None = None
        self.message = ""
        self.go_on = threading.Event()  # set: keep writing after the first RedisFull
        self.stop = threading.Event()
        self.after_recovery = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with kvfast.Repository(Booking, self.settings) as repo:
                while not self.stop.is_set():
                    start = self.base + self.written
                    try:
                        repo.create_many(booking(start + i) for i in range(BATCH))
                    except kvfast.RedisFull as exc:
                        self.full_errors += 1
                        if self.first_full is None:
                            self.first_full = time.monotonic()
                            self.message = str(exc)
                        self.go_on.wait()
                        time.sleep(0.05)
                        continue
                    self.written += BATCH
                    if self.first_full is not None:
                        if self.recovered is None:
                            self.recovered = time.monotonic()
                        self.after_recovery += BATCH
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.slow
def test_a_full_redis_refuses_writes_whole_and_recovers_by_itself(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    create_load_tables(fpg)
    server = RedisProcess(FULL_REDIS_PORT, tmp_path / "redis", "--maxmemory-policy", "noeviction")
    server.start()
    r = server.client()
    settings = fault_settings(fault_servers, redis_url=server.url)
    producers = [Producer(settings, i) for i in range(2)]
    try:
        with kvfast.Repository(Booking, settings) as repo:
            repo.create(booking(1))  # the meta key exists before the limit
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", used + 20_000_000)
        started = time.monotonic()
        for p in producers:
            p.start()
        # No drainer runs: Redis fills up, and every producer is refused.
        wait_for(lambda: all(p.first_full is not None or p.error for p in producers), 120,
                 "every producer to meet a full Redis")
        for p in producers:
            assert p.error is None, repr(p.error)
        filled = max(p.first_full or 0 for p in producers) - started
        message = producers[0].message
        assert "queued" in message and "maxmemory" in message, message
        print(f"RedisFull: {message}")
        written = 1 + sum(p.written for p in producers)
        # Nothing half-written: every acknowledged record, and only those.
        assert queued(r, settings) == written
        assert objects(r) == written

        # A supervisor started while Redis is full starts and drains.
        for p in producers:
            p.go_on.set()
        sup_started = time.monotonic()
        with supervisor(settings, workers=2) as sup:
            sup.wait_drainers(2, timeout=60)
            wait_for(lambda: all(p.after_recovery >= 5 * BATCH or p.error for p in producers),
                     120, "the producers to recover", lambda: sup.output()[-3000:])
            for p in producers:
                p.stop.set()
                p.join(60)
                assert p.error is None, repr(p.error)
            produced = 1 + sum(p.written for p in producers)
            drain_s = wait_drained(r, settings, sup)
            out = stop_supervisor(sup)
        assert "OOM" not in out and "exited with" not in out, out[-3000:]
        figures = final_check(r, fpg, settings, produced=produced, models=(Booking,))
        assert figures["rows"] == produced
        recovered = max(p.recovered or 0 for p in producers)
        report("redis_full", writes=produced, written_before_full=written,
               refused_calls=sum(p.full_errors for p in producers),
               s_to_fill=filled,
               s_full=recovered - min(p.first_full or recovered for p in producers),
               s_supervisor_start_to_recovery=recovered - sup_started,
               s_drain_after_stop=drain_s, rows=figures["rows"])
    finally:
        for p in producers:
            p.go_on.set()
            p.stop.set()
        r.close()
        server.stop()


def test_allkeys_lru_is_refused_by_the_supervisor_and_the_dead_letter_tool(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    create_load_tables(fpg)
    server = RedisProcess(FULL_REDIS_PORT, tmp_path / "redis", "--maxmemory-policy",
                          "allkeys-lru", "--maxmemory", "100mb")
    server.start()
    try:
        settings = fault_settings(fault_servers, redis_url=server.url)
        with supervisor(settings, workers=1) as sup:
            code = sup.wait(60)
            out = sup.output()
        assert code == 2, out[-3000:]
        assert "allkeys-lru" in out and "noeviction" in out, out[-3000:]
        done = subprocess.run(
            [sys.executable, "-m", "kvfast.deadletter", "--redis-url", server.url,
             "--partitions", str(settings.partitions), "count"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "allkeys-lru" in done.stderr and "noeviction" in done.stderr, done.stderr
        assert server.client().dbsize() == 0  # refused before writing anything
    finally:
        server.stop()


def test_the_policy_is_read_from_info_where_config_is_refused(
    fault_servers: FaultServers, fr: redis.Redis
) -> None:
    namespace = "kvmem"
    saved = fr.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        with acl_user(fr, namespace) as url:
            settings = fault_settings(fault_servers, redis_url=url, namespace=namespace,
                                      partitions=8)
            user = redis.Redis.from_url(url)
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.config_get("maxmemory-policy")
            user.close()
            with kvfast.Repository(Booking, settings) as repo:  # noeviction, read from INFO
                repo.create(booking(1))
                assert repo.get_by_id(1) == booking(1)
            fr.config_set("maxmemory-policy", "allkeys-lfu")
            with (kvfast.Repository(Booking, settings) as repo,
                  pytest.raises(kvfast.ConfigError, match="allkeys-lfu")):
                repo.get_by_id(1)
            # A user that may run neither CONFIG nor INFO cannot be checked: refused.
            fr.execute_command("ACL", "SETUSER", ACL_USER, "-info")
            fr.config_set("maxmemory-policy", "noeviction")
            with (kvfast.Repository(Booking, settings) as repo,
                  pytest.raises(kvfast.ConfigError, match=r"\+info")):
                repo.get_by_id(1)
    finally:
        fr.config_set("maxmemory-policy", saved)
    assert "info" in KVFAST_COMMANDS
