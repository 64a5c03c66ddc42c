"""1. Producer throughput: ``Repository.create_many`` of demo bookings in one process.

kvfast's figure is records/s and Redis ops/s (an HSET and an RPUSH per record,
the issue's count), measured over ``PRODUCER_N`` bookings sent in
``create_many`` calls of ``PRODUCER_BATCH`` records.  References, same run, same
server:

* ``redis-benchmark -P 64 -c 50`` of HSET (the seven fields kvfast writes, random
  keys) and RPUSH (kvfast's queue entry, 64 lists): Redis's own ceiling, combined
  as the rate of one HSET plus one RPUSH (harmonic mean of the two rates);
* plain redis-py ``pipeline(transaction=False)`` with HSET+RPUSH per record for the
  same bookings, one pipeline per batch: encoding included ("from objects", the
  issue's 3× target) and pre-encoded (redis-py's client machinery alone).

Each timed round starts from an empty database (flushed untimed); one warm-up
round comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import _config
import _redis_refs
import _results
import pytest
import redis

import kvfast
import kvfast.aio
from kvfast.demo import Booking
from kvfast.loadgen import make_booking

pytestmark = [pytest.mark.timeout(900)]

ROUNDS = 3
#: create_many calls the asyncio producer keeps in flight on its one connection
AIO_IN_FLIGHT = 2
#: records per asyncio create_many call (issue 12's figure: 2 x 1,000 records in flight)
AIO_BATCH = _config.env_int("KVFAST_BENCH_AIO_BATCH", 1000)
N = _config.PRODUCER_N
BATCH = _config.PRODUCER_BATCH
DATA = _results.RESULTS.data


@pytest.fixture(scope="module")
def bookings() -> list[Booking]:
    now = dt.datetime.now(dt.UTC)
    return [make_booking(i, now) for i in range(1, N + 1)]


@pytest.fixture(scope="module")
def r() -> Iterator[redis.Redis]:
    client = _config.redis_client()
    yield client
    client.flushdb()
    client.close()


class CpuMeter:
    """Wall time, this process's CPU and the Redis server's CPU over each timed round."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.rounds: list[dict[str, float]] = []

    def _redis_cpu(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            rc0, pc0, t0 = self._redis_cpu(), time.process_time(), time.perf_counter()
            out = fn(*args)
            wall = time.perf_counter() - t0
            self.rounds.append({"wall_s": wall,
                                "client_cpu": (time.process_time() - pc0) / wall,
                                "redis_cpu": (self._redis_cpu() - rc0) / wall})
            return out
        return timed

    def summary(self) -> dict[str, float]:
        timed = self.rounds[-ROUNDS:]
        return {k: round(sum(x[k] for x in timed) / len(timed), 3)
                for k in ("client_cpu", "redis_cpu")} if timed else {}


def _flush(r: redis.Redis, *args: Any) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        r.flushdb()
        return args, {}
    return setup


def _rate(benchmark: Any, count: int) -> float:
    return count / benchmark.stats.stats.median


@pytest.mark.benchmark(group="1-producer")
def test_reference_redis_benchmark(benchmark: Any, sample: tuple[list[bytes], bytes],
                                   r: redis.Redis) -> None:
    """redis-benchmark -P 64 -c 50: HSET of kvfast's seven fields, RPUSH of its entry."""
    hset, rpush = _redis_refs.redis_benchmark_writes(sample)
    n = _config.REDIS_BENCHMARK_N

    def run() -> tuple[dict[str, float], dict[str, float]]:
        h = _redis_refs.redis_benchmark(hset, requests=n, clients=50, pipeline=64)
        q = _redis_refs.redis_benchmark(rpush, requests=n, clients=50, pipeline=64, keyspace=64)
        return h, q

    # Warm-up: the server's first touch of that much memory costs page faults.
    _redis_refs.redis_benchmark(hset, requests=n // 4, clients=50, pipeline=64)
    r.flushdb()
    h, q = benchmark.pedantic(run, setup=_flush(r), rounds=1, iterations=1)
    r.flushdb()
    combined = 2 / (1 / h["rps"] + 1 / q["rps"])
    DATA["producer.redis_benchmark"] = {"hset": h, "rpush": q, "combined_cmds_per_s": combined}
    benchmark.extra_info.update(hset_rps=h["rps"], rpush_rps=q["rps"],
                                combined_cmds_per_s=combined)


@pytest.mark.benchmark(group="1-producer")
def test_reference_redispy_pipeline(benchmark: Any, bookings: list[Booking],
                                    r: redis.Redis) -> None:
    """Plain redis-py pipeline, HSET+RPUSH per booking, encoding included."""
    _redispy_rounds(benchmark, r, _redis_refs.redispy_pipeline_from_objects, bookings,
                    "producer.redispy_records_per_s")


@pytest.mark.benchmark(group="1-producer")
def test_reference_redispy_preencoded(benchmark: Any, bookings: list[Booking],
                                      r: redis.Redis) -> None:
    """The same pipeline with every record encoded beforehand: redis-py's machinery only."""
    encoded = _redis_refs.redispy_encode(bookings)
    _redispy_rounds(benchmark, r, _redis_refs.redispy_pipeline_preencoded, encoded,
                    "producer.redispy_preencoded_records_per_s")


def _redispy_rounds(benchmark: Any, r: redis.Redis, fn: Callable[..., None], payload: Any,
                    name: str) -> None:
    """ROUNDS timed rounds of ``fn(r, payload, BATCH)``; records/s kept as DATA[name]."""
    meter = CpuMeter(r)
    benchmark.pedantic(meter.wrap(fn), setup=_flush(r, r, payload, BATCH), rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    rate = _rate(benchmark, N)
    DATA[name] = rate
    benchmark.extra_info.update(records_per_s=rate, **meter.summary())


def _wire_commands(bookings: list[Booking]) -> int:
    """Commands kvfast sends for the round, if each call is one MULTI block (estimate).

    MULTI, DEL, one HSET per record, one RPUSH per partition touched, EXEC.
    """
    info = kvfast.model_info(Booking)
    total = 0
    for start in range(0, len(bookings), BATCH):
        chunk = bookings[start:start + BATCH]
        parts = {info.partition_of(str(b.id), _config.PARTITIONS) for b in chunk}
        total += 3 + len(chunk) + len(parts)
    return total


@pytest.mark.benchmark(group="1-producer")
def test_kvfast_create_many(benchmark: Any, bookings: list[Booking], r: redis.Redis) -> None:
    """Repository.create_many, PRODUCER_BATCH records per call, one process."""
    repo = kvfast.Repository(Booking, _config.settings())

    def run(objs: list[Booking]) -> None:
        for start in range(0, len(objs), BATCH):
            repo.create_many(objs[start:start + BATCH])

    meter = CpuMeter(r)
    with contextlib.closing(repo):
        benchmark.pedantic(meter.wrap(run), setup=_flush(r, bookings), rounds=ROUNDS,
                           warmup_rounds=1, iterations=1)
    r.flushdb()
    rate = _rate(benchmark, N)
    ops = 2 * rate
    wire = _wire_commands(bookings) / benchmark.stats.stats.median
    DATA["producer.records_per_s"] = rate
    benchmark.extra_info.update(records_per_s=rate, redis_ops_per_s=ops,
                                wire_commands_per_s_est=wire, **meter.summary())
    DATA["producer.cpu"] = meter.summary()

    rb = DATA.get("producer.redis_benchmark", {}).get("combined_cmds_per_s")
    plain = DATA.get("producer.redispy_records_per_s")
    pre = DATA.get("producer.redispy_preencoded_records_per_s")
    add = _results.RESULTS.add
    add(_results.Row("producer", "create_many records/s, 1 process", "records/s", rate, plain,
                  "redis-py pipeline", "ratio_min", 3.0, ">= 3x redis-py pipeline",
                  chart="throughput"))
    add(_results.Row("producer", "Redis ops/s (HSET+RPUSH per record)", "ops/s", ops, rb,
                  "redis-benchmark -P64 -c50", "min", 350_000, ">= 350,000 ops/s",
                  chart="throughput"))
    add(_results.Row("producer", "Redis ops/s vs redis-benchmark (stretch)", "ops/s", ops, rb,
                  "redis-benchmark -P64 -c50", "ratio_min", 0.7, "stretch: >= 0.7x"))
    add(_results.Row("producer", "records/s vs pre-encoded redis-py", "records/s", rate, pre,
                  "redis-py, encoded beforehand", note="client machinery only"))


@pytest.mark.benchmark(group="1-producer")
def test_kvfast_aio_create_many(benchmark: Any, bookings: list[Booking], r: redis.Redis) -> None:
    """kvfast.aio.AsyncRepository.create_many on uvloop, AIO_BATCH records per call,
    AIO_IN_FLIGHT calls in flight: one batch is encoded while Redis executes the
    previous one."""
    settings = _config.settings()

    async def produce(objs: list[Booking]) -> None:
        async with await kvfast.aio.AsyncRepository.open(Booking, settings) as repo:
            slots = asyncio.Semaphore(AIO_IN_FLIGHT)

            async def one(chunk: list[Booking]) -> None:
                async with slots:
                    await repo.create_many(chunk)

            await asyncio.gather(*(one(objs[start:start + AIO_BATCH])
                                   for start in range(0, len(objs), AIO_BATCH)))

    def run(objs: list[Booking]) -> None:
        kvfast.aio.run(produce(objs))

    meter = CpuMeter(r)
    benchmark.pedantic(meter.wrap(run), setup=_flush(r, bookings), rounds=ROUNDS,
                       warmup_rounds=1, iterations=1)
    r.flushdb()
    rate = _rate(benchmark, N)
    DATA["producer.aio_records_per_s"] = rate
    benchmark.extra_info.update(records_per_s=rate, redis_ops_per_s=2 * rate,
                                in_flight=AIO_IN_FLIGHT, **meter.summary())
    DATA["producer.aio_cpu"] = meter.summary()
    add = _results.RESULTS.add
    add(_results.Row("producer", f"asyncio create_many records/s, {AIO_IN_FLIGHT} in flight",
                  "records/s", rate, DATA.get("producer.redispy_records_per_s"),
                  "redis-py pipeline", chart="throughput"))
    rb = DATA.get("producer.redis_benchmark", {}).get("combined_cmds_per_s")
    add(_results.Row("producer", f"asyncio Redis ops/s, {AIO_IN_FLIGHT} x {AIO_BATCH:,} in "
                  "flight, vs redis-benchmark", "ops/s", 2 * rate, rb,
                  "redis-benchmark -P64 -c50", "ratio_min", 0.9, ">= 0.9x redis-benchmark"))
    add(_results.Row("producer", "asyncio vs sync create_many", "records/s", rate,
                  DATA.get("producer.records_per_s"), "sync Repository.create_many",
                  note=f"batches of {AIO_BATCH:,} vs {BATCH:,}"))
