"""5. Scaling: the claim's cost per entry does not grow with the queue depth.

One partition's queue is filled to each depth in ``SCALE_DEPTHS`` (1k … 1M; 10M
with ``KVFAST_BENCH_SCALE_10M=1``) with real queue entries.  Each round claims
1,000 entries with ``kvfast.drainer.Drainer.claim()`` (claim.lua: look at every
partition's in-flight record, LPOP, copy to the in-flight list, epoch and lease)
and is timed alone; between rounds (not timed) the claimed entries go back to
the tail of the queue and the in-flight record is dropped, so the depth stays
put.  Reference at each depth: a bare ``LPOP queue 1000`` through
redis-py, the same way.  Target: the cost per entry at the deepest queue within
1.5x of the cost at 1k.

The drainers' memory bound (peak RSS with a deep queue against a small one) is
measured by benchmark 3, on the supervisor's real drainers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import _config
import _data
import _results
import pytest
import redis

from kvfast.drainer import Drainer

pytestmark = [pytest.mark.timeout(900)]

DATA = _results.RESULTS.data
CLAIM = _config.SCALE_CLAIM
ROUNDS = 200
WARMUP = 20
PARTITION = 0


def _label(depth: int) -> str:
    return f"{depth // 1_000_000}M" if depth >= 1_000_000 else f"{depth // 1000}k"


@pytest.fixture(scope="module")
def r() -> Iterator[redis.Redis]:
    _config.flush_redis()
    client = _config.redis_client()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def entry() -> bytes:
    return _data.sample_booking_writes()[1]


@pytest.fixture(scope="module", params=_config.SCALE_DEPTHS, ids=_label)
def depth(request: pytest.FixtureRequest, r: redis.Redis, entry: bytes) -> Iterator[int]:
    """Partition 0's queue holding ``depth`` entries; nothing in flight."""
    target: int = request.param
    ks = _config.keys()
    queue = ks.queues[PARTITION]
    have = r.llen(queue)
    if have > target:
        r.ltrim(queue, 0, target - 1)
    chunk = [entry] * 10_000
    while have < target:
        pipe = r.pipeline(transaction=False)
        for _ in range(20):
            n = min(len(chunk), target - have)
            if n <= 0:
                break
            pipe.rpush(queue, *chunk[:n])
            have += n
        pipe.execute()
    r.delete(ks.inflight[PARTITION], ks.inflight_meta[PARTITION])
    assert r.llen(queue) == target
    yield target


def _per_entry_us(benchmark: Any) -> float:
    return benchmark.stats.stats.median / CLAIM * 1e6


@pytest.mark.benchmark(group="5-claim")
def test_reference_lpop(benchmark: Any, r: redis.Redis, depth: int) -> None:
    """LPOP queue 1000 (redis-py, hiredis parser): the pop alone."""
    queue = _config.keys().queues[PARTITION]
    taken: list[list[bytes]] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        if taken:
            r.rpush(queue, *taken.pop())
        return (), {}

    def pop() -> Any:
        reply = r.execute_command("LPOP", queue, CLAIM)
        taken.append(reply)
        return reply

    benchmark.pedantic(pop, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    if taken:
        r.rpush(queue, *taken.pop())
    us = _per_entry_us(benchmark)
    DATA[f"claim.lpop.{depth}"] = us
    benchmark.extra_info.update(depth=depth, us_per_entry=us)


@pytest.mark.benchmark(group="5-claim")
def test_kvfast_claim(benchmark: Any, r: redis.Redis, depth: int) -> None:
    """Drainer.claim(): claim.lua over all 64 partitions, 1,000 entries recorded in flight."""
    ks = _config.keys()
    queue = ks.queues[PARTITION]
    drainer = Drainer(_config.settings(batch_size=CLAIM))
    claimed: list[list[bytes]] = []

    def put_back() -> None:
        if claimed:
            r.rpush(queue, *claimed.pop())
        r.delete(ks.inflight[PARTITION], ks.inflight_meta[PARTITION])

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        put_back()
        return (), {}

    def claim() -> Any:
        c = drainer.claim()
        assert c is not None and len(c.entries) == CLAIM, c
        claimed.append(c.entries)
        return c

    with contextlib.closing(drainer):
        benchmark.pedantic(claim, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP,
                           iterations=1)
    put_back()
    us = _per_entry_us(benchmark)
    DATA[f"claim.kvfast.{depth}"] = us
    benchmark.extra_info.update(depth=depth, us_per_entry=us)

    add = _results.RESULTS.add
    add(_results.Row("scaling", f"claim cost per entry, depth {_label(depth)}", "µs/entry", us,
                  DATA.get(f"claim.lpop.{depth}"), "bare LPOP COUNT 1000"))
    depths = sorted(int(k.rsplit(".", 1)[1]) for k in DATA if k.startswith("claim.kvfast."))
    if len(depths) > 1:
        low, high = depths[0], depths[-1]
        add(_results.Row("scaling", "claim cost per entry, deepest vs shallowest", "µs/entry",
                      DATA[f"claim.kvfast.{high}"], DATA[f"claim.kvfast.{low}"],
                      f"depth {_label(low)} vs {_label(high)}", "ratio_max", 1.5,
                      "flat: <= 1.5x"))
