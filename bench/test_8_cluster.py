"""8. Redis Cluster: one Redis against the local 3-master cluster, on this machine.

Figures, each against its reference measured in the same run:

* producer ``create_many`` records/s on the cluster (3 masters) vs one Redis;
* drain rows/s (one in-process drainer) of those records, cluster vs one Redis;
* each master's ``usec_per_call`` of the commands kvfast sends (``INFO
  commandstats``), so the per-master cost shows where 2 cores cannot show the
  throughput of three servers;
* the busiest master's share of the 64 partitions for 3, 6 and 10 masters on
  equal slot ranges (target <= 1.05x its fair share), against the old ``{ns:p}``;
* ``create`` p50 with ``KVFAST_WAIT_REPLICAS=1`` vs without, on the cluster;
* ``kvfast.aio`` ``create_many`` records/s on the cluster vs the sync producer on
  the cluster (the same routing plan, one pipelined connection per node).

The cluster is ``KVFAST_BENCH_CLUSTER_URL`` (default: the test cluster of
``tools/services up cluster``); without one these benchmarks skip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import _config
import _results
import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

import kvfast
from kvfast.cluster import refresh_slot_map
from kvfast.demo import Booking
from kvfast.drainer import Drainer
from kvfast.keys import Keys
from kvfast.loadgen import make_booking

pytestmark = [pytest.mark.timeout(900)]

CLUSTER_URL = (os.environ.get("KVFAST_BENCH_CLUSTER_URL")
               or os.environ.get("KVFAST_TEST_CLUSTER_URL") or "redis://127.0.0.1:17001/0")
N = _config.env_int("KVFAST_BENCH_CLUSTER_N", 50_000)
BATCH = _config.PRODUCER_BATCH
LATENCY_N = _config.env_int("KVFAST_BENCH_CLUSTER_LATENCY_N", 2_000)
KVFAST_COMMANDS = ("hset", "rpush", "del", "exec", "evalsha", "wait")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    try:
        rc = RedisCluster.from_url(CLUSTER_URL, socket_connect_timeout=3)
        rc.ping()
    except Exception as exc:
        pytest.skip(f"no Redis Cluster at {CLUSTER_URL} ({exc}): tools/services up cluster")
    yield rc
    rc.flushall(target_nodes=RedisCluster.PRIMARIES)
    rc.close()


def _flush_cluster(rc: RedisCluster) -> None:
    refresh_slot_map(rc)
    rc.flushall(target_nodes=RedisCluster.PRIMARIES)
    for node in rc.get_primaries():
        node.redis_connection.config_resetstat()


def _produce(settings: kvfast.Settings, bookings: list[Booking]) -> float:
    with kvfast.Repository(Booking, settings) as repo:
        repo.get_by_id(0)  # connect and pass the start-up check untimed
        t0 = time.perf_counter()
        for i in range(0, len(bookings), BATCH):
            repo.create_many(bookings[i:i + BATCH])
        return len(bookings) / (time.perf_counter() - t0)


def _produce_aio(settings: kvfast.Settings, bookings: list[Booking]) -> float:
    import kvfast.aio

    async def go() -> float:
        async with await kvfast.aio.AsyncRepository.open(Booking, settings) as repo:
            t0 = time.perf_counter()
            for i in range(0, len(bookings), BATCH):
                await repo.create_many(bookings[i:i + BATCH])
            return len(bookings) / (time.perf_counter() - t0)

    return kvfast.aio.run(go())


def _drain(settings: kvfast.Settings) -> float:
    drainer = Drainer(settings)
    try:
        t0 = time.perf_counter()
        n = drainer.drain_until_empty(max_idle_polls=1)
        return n / (time.perf_counter() - t0)
    finally:
        drainer.close()


def busiest_share(slots: list[int], masters: int) -> float:
    counts = [0] * masters
    for s in slots:
        counts[s * masters // 16384] += 1
    return max(counts) / (len(slots) / masters)


@pytest.mark.benchmark(group="8-cluster")
def test_cluster_producer_and_drain(benchmark: Any, cluster: RedisCluster) -> None:
    now = dt.datetime.now(dt.UTC)
    bookings = [make_booking(i, now) for i in range(1, N + 1)]
    single = _config.settings()
    on_cluster = dataclasses.replace(single, redis_url=CLUSTER_URL)
    _config.create_bench_tables()
    stats: dict[str, dict[str, float]] = {}

    def one_round() -> dict[str, float]:
        _config.flush_redis()
        _flush_cluster(cluster)
        out = {"single_produce": _produce(single, bookings)}
        out["single_drain"] = _drain(single)
        _config.reset_pg_tables()
        out["cluster_produce"] = _produce(on_cluster, bookings)
        stats.clear()
        for node in cluster.get_primaries():
            cmd = node.redis_connection.info("commandstats")
            stats[node.name] = {c: cmd[f"cmdstat_{c}"]["usec_per_call"]
                                for c in KVFAST_COMMANDS if f"cmdstat_{c}" in cmd}
        out["cluster_drain"] = _drain(on_cluster)
        _flush_cluster(cluster)
        out["cluster_produce_aio"] = _produce_aio(on_cluster, bookings)
        return out

    result = benchmark.pedantic(one_round, rounds=1, iterations=1)
    _results.RESULTS.data["cluster.usec_per_call"] = stats
    benchmark.extra_info.update(result, usec_per_call=stats)
    add = _results.RESULTS.add
    add(_results.Row("cluster", "cluster: create_many records/s, 3 masters", "records/s",
                     result["cluster_produce"], result["single_produce"], "one Redis",
                     note="2 cores: three masters share them with the client"))
    add(_results.Row("cluster", "cluster: drain rows/s, 1 drainer, 3 masters", "rows/s",
                     result["cluster_drain"], result["single_drain"], "one Redis"))
    add(_results.Row("cluster", "cluster: kvfast.aio create_many records/s, 3 masters",
                     "records/s", result["cluster_produce_aio"], result["cluster_produce"],
                     "sync create_many on the cluster"))
    for name, per in sorted(stats.items()):
        add(_results.Row("cluster", f"cluster: master {name} usec/call hset, rpush, exec",
                         "µs", per.get("hset"), None, "",
                         note=f"rpush {per.get('rpush')}, exec {per.get('exec')}, "
                              f"evalsha {per.get('evalsha')}"))


@pytest.mark.benchmark(group="8-cluster")
def test_busiest_master_share(benchmark: Any) -> None:
    def shares() -> dict[int, tuple[float, float]]:
        tags = Keys("kvfast", 64).tags
        new = [key_slot(t.encode()) for t in tags]
        old = [key_slot(f"kvfast:{p}".encode()) for p in range(64)]
        return {m: (busiest_share(new, m), busiest_share(old, m)) for m in (3, 6, 10)}

    result = benchmark.pedantic(shares, rounds=1, iterations=1)
    for masters, (new, old) in result.items():
        _results.RESULTS.add(_results.Row(
            "cluster", f"cluster: busiest of {masters} masters, share of 64 partitions", "x",
            new, old, "{ns:p} tags (layout 2)", "max", 1.05, "<= 1.05x fair share",
            note="64/10 is 6.4: 7 partitions is 1.09x, the least any tags can do"
            if masters == 10 else ""))


@pytest.mark.benchmark(group="8-cluster")
def test_wait_replicas_cost_on_create_p50(benchmark: Any, cluster: RedisCluster) -> None:
    now = dt.datetime.now(dt.UTC)
    plain = dataclasses.replace(_config.settings(), redis_url=CLUSTER_URL)
    waiting = dataclasses.replace(plain, wait_replicas=1, wait_timeout_ms=1000)

    def p50s() -> tuple[float, float]:
        _flush_cluster(cluster)
        times: dict[str, list[float]] = {"plain": [], "wait": []}
        with (kvfast.Repository(Booking, plain) as a, kvfast.Repository(Booking, waiting) as b):
            a.get_by_id(0)
            b.get_by_id(0)
            for i in range(LATENCY_N):  # interleaved: the same noise for both
                for name, repo in (("plain", a), ("wait", b)):
                    t0 = time.perf_counter()
                    repo.create(make_booking(i, now))
                    times[name].append(time.perf_counter() - t0)
        return (statistics.median(times["wait"]) * 1000,
                statistics.median(times["plain"]) * 1000)

    wait_ms, plain_ms = benchmark.pedantic(p50s, rounds=1, iterations=1)
    benchmark.extra_info.update(wait_p50_ms=wait_ms, plain_p50_ms=plain_ms)
    _results.RESULTS.add(_results.Row(
        "cluster", "cluster: create p50 with KVFAST_WAIT_REPLICAS=1", "ms", wait_ms, plain_ms,
        "create p50 without WAIT"))
