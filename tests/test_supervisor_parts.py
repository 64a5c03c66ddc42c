"""The supervisor's parts in-process: the report record, lag quantiles, the status
window, health and metrics over HTTP, the restart backoff, and the pool's crash-loop
judgement (forked stand-in drainers)."""

from __future__ import annotations

import logging
import os
import pickle
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from multiprocessing.connection import Connection

import prometheus_client as prom
import pytest

import kvfast
from kvfast.claims import LeaseKeeper, Part
from kvfast.drainer import BatchReport
from kvfast.metrics import Metrics, serve_http
from kvfast.pool import CRASH_BUDGET, RESTART_BACKOFF, Pool
from kvfast.retry import Backoff
from kvfast.stats import Health, LagRing, Report, Snapshot, Stats


def sorted_quantile(values: Sequence[float], q: float) -> float:
    """The supervisor's quantile before numpy: the sample at int(q*n) of the sorted list."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def test_a_report_is_a_typed_record_built_from_a_batch_report() -> None:
    rep = BatchReport(partitions=[1, 2], entries=10, applied=9, dead=1, acked=True, stale=0,
                      retaken=True, lag_ms=[1.0, 2.0])
    report = Report.of(3, rep)
    assert (report.drainer, report.entries, report.applied, report.dead) == (3, 10, 9, 1)
    assert report.retaken is True and report.stale == 0 and list(report.lag_ms) == [1.0, 2.0]
    assert pickle.loads(pickle.dumps(report)) == report  # it travels down a pipe


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 999, 1000, 1001, 5003])
def test_lag_ring_quantiles_equal_the_sorted_ones(n: int) -> None:
    rng = random.Random(n)
    values = [rng.expovariate(1 / 100) for _ in range(n)]
    ring = LagRing(capacity=1000)
    for i in range(0, n, 64):  # reports of up to 64 samples, wrapping around the ring
        ring.extend(values[i:i + 64])
    kept = values[-1000:]
    assert len(ring) == len(kept)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert ring.quantiles([q]) == [sorted_quantile(kept, q)]
        assert ring.quantiles([q], newest=37) == [sorted_quantile(kept[-37:], q)]


def test_lag_ring_takes_a_report_bigger_than_itself() -> None:
    ring = LagRing(capacity=4)
    ring.extend([9.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert len(ring) == 4 and ring.quantiles([0.0, 1.0]) == [2.0, 5.0]


def test_the_status_window_covers_only_its_own_reports() -> None:
    stats = Stats()
    stats.count(Report(0, 10, 10, 0, False, 0, [500.0] * 10))
    _, p50, _ = stats.window(restart=True)
    assert p50 == 500.0
    stats.count(Report(1, 5, 4, 1, True, 1, [20.0, 30.0]))
    rate, p50, p99 = stats.window(restart=False)
    assert (p50, p99) == (30.0, 30.0) and rate > 0
    assert stats.window(restart=True)[1:] == (30.0, 30.0)  # not restarted by the peek above
    assert stats.window(restart=True)[1:] == (0.0, 0.0)  # nothing since
    totals = stats.report()
    assert (totals["rows"], totals["dead_lettered"], totals["batches"]) == (14, 1, 2)
    assert (totals["retaken"], totals["stale"], totals["lag_samples"]) == (1, 1, 12)
    assert totals["lag_p50_ms"] == 500.0


def test_the_status_line_keeps_its_text() -> None:
    snap = Snapshot(rows_per_s=12345.6, queued=7, inflight=2, dead=3, lag_p50_ms=101.2,
                    lag_p99_ms=240.9, workers=2, rows_total=81000)
    assert snap.status_line(3) == (
        "drained 12,346 rows/s | queued 7 | in flight 2 | lag p50 101 ms p99 241 ms | "
        "dead letters 3 | drainers 2/3 | total 81,000")


def test_restart_delays_double_up_to_five_seconds() -> None:
    assert [RESTART_BACKOFF.step(n) for n in range(8)] == [
        0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_over_http() -> None:
    metrics = Metrics()
    metrics.count(Report(0, 5, 5, 2, False, 0, [1.0]))
    metrics.update(Snapshot(rows_per_s=1.0, queued=11, inflight=1, dead=2, lag_p50_ms=3.0,
                            lag_p99_ms=4.0, workers=2, rows_total=5))
    health = Health(alive=2, expected=2, stopping=False)
    server = serve_http(0, metrics.registry, lambda: health)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, body = _get(base + "/metrics")
        assert code == 200
        for name in ("kvfast_rows_drained_total 5.0", "kvfast_dead_lettered_total 2.0",
                     "kvfast_queue_depth 11.0", "kvfast_inflight_batches 1.0",
                     "kvfast_dead_letters 2.0", 'kvfast_drain_lag_ms{quantile="0.99"} 4.0',
                     "kvfast_drainers_alive 2.0"):
            assert name in body, name
        assert _get(base + "/healthz") == (200, "ok: 2/2 drainers\n")
        health = Health(alive=1, expected=2, stopping=False)
        assert _get(base + "/healthz") == (503, "degraded: 1/2 drainers\n")
        health = Health(alive=2, expected=2, stopping=True)
        assert _get(base + "/healthz")[0] == 503
        assert _get(base + "/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
    assert isinstance(metrics.registry, prom.CollectorRegistry)


# -- the pool: who counts toward the crash loop, health while drainers restart ---------------


def _acks_then_dies(settings: kvfast.Settings, index: int, reports: Connection,
                    log_level: int) -> None:
    reports.send(Report(index, 1, 1, 0, False, 0, ()))
    reports.close()
    os._exit(1)


def _dies_at_start(settings: kvfast.Settings, index: int, reports: Connection,
                   log_level: int) -> None:
    os._exit(1)


def _run_pool(pool: Pool, deaths: int) -> bool:
    """Tick the pool as the supervisor does until ``deaths`` drainer deaths (or a crash loop)."""
    deadline = time.monotonic() + 60
    pool.start()
    try:
        while time.monotonic() < deadline:
            pool.receive()
            if pool.check():
                return True
            if sum(len(w.deaths) for w in pool.workers) >= deaths:
                return False
            time.sleep(0.01)
        raise AssertionError("the drainers did not die as often as expected")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        pool.signals = 2
        pool.stop(hard=True)
        for w in pool.workers:
            if w.process is not None:
                w.process.join(10)


def test_drainers_that_acked_are_restarted_however_often_they_die(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each drainer acks a batch, then dies: more deaths than the crash budget allows,
    and still no crash loop; health says degraded, and why (a death before a first
    batch is what counts: see the next test)."""
    monkeypatch.setattr("kvfast.pool.RESTART_BACKOFF", Backoff(base=0.001, cap=0.01,
                                                               jitter=False))
    settings = kvfast.Settings(workers=2)
    pool = Pool(settings, logging.WARNING, target=_acks_then_dies)
    assert not _run_pool(pool, CRASH_BUDGET + 5)
    assert not pool.crash_times
    health = pool.health()
    assert not health.ok and "died" in health.text(), health.text()


def test_drainers_that_die_before_a_first_batch_are_a_crash_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kvfast.pool.RESTART_BACKOFF", Backoff(base=0.001, cap=0.01,
                                                               jitter=False))
    pool = Pool(kvfast.Settings(workers=2), logging.WARNING, target=_dies_at_start)
    assert _run_pool(pool, 10 * CRASH_BUDGET)
    assert len(pool.crash_times) > CRASH_BUDGET


# -- the lease keeper: a renewal refused because of the ack is no loss ------------------------


def test_a_renewal_refused_because_the_batch_was_acked_is_not_a_lost_lease(
    client: kvfast.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The keeper's round runs between the ack (which deletes the in-flight record) and
    the drainer's untrack: the refusal is only suspect, and the untrack clears it
    silently (before: "lost the lease of partition P", 19 times in a clean run).  A
    real takeover is still a loss: told to ``take_lost`` at once, or logged at the
    next round."""
    keeper = LeaseKeeper(client, "me", 5000)  # not started: rounds run by hand
    meta = client.keys.inflight_meta
    acked, taken, later = (Part(p, 7, False, []) for p in (0, 1, 2))
    for part in (acked, taken, later):
        client.redis.hset(meta[part.partition], mapping={"owner": "me", "epoch": 7})
    keeper.track([acked, taken, later])
    client.redis.delete(meta[0])  # acked, not untracked yet
    client.redis.hset(meta[1], mapping={"owner": "other", "epoch": 8})  # taken over
    client.redis.hset(meta[2], mapping={"owner": "other", "epoch": 8})
    with caplog.at_level(logging.WARNING, logger="kvfast.drainer"):
        keeper.renew_once()
        keeper.untrack([acked])
        assert keeper.take_lost([acked, taken]) == {1}
        assert "lost the lease of partition 1" in caplog.text
        assert "partition 2" not in caplog.text  # suspect until the next round
        keeper.renew_once()
        assert keeper.take_lost([later]) == {2}
    assert "lost the lease of partition 0" not in caplog.text, caplog.text
    client.redis.delete(*meta[:3])
