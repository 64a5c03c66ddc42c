"""``python -m kvfast.supervisor``: fork N drainers, keep them alive, report, stop cleanly.

* Drainers are forked with an explicit ``fork`` context; each opens its own Redis
  and PostgreSQL connections in the child.  Signals are blocked around the fork
  so a child never runs the parent's handlers.
* A drainer that dies is restarted after a backoff; more than ``CRASH_BUDGET``
  deaths within ``CRASH_WINDOW_S`` stops the supervisor (exit ``RET_CRASHLOOP``).
* First SIGTERM/SIGINT: every drainer finishes and acks its batch, then exits
  (warm stop).  Second: drainers are killed at once (exit ``RET_KILLED``).
* Every few seconds a status line (rows/s, queue depth, in flight, lag, dead
  letters) goes to stderr; ``--metrics-port`` serves Prometheus ``/metrics`` and
  a ``/healthz`` endpoint.
* ``--drain-until-empty`` exits 0 once nothing is queued and nothing is in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import multiprocessing
import multiprocessing.process
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client as prom

from kvfast.client import Client, connect_pg, pg_errors
from kvfast.errors import ConfigError, ConnectionFailed, KvfastError, SchemaMismatch
from kvfast.model import ModelInfo, registered_models
from kvfast.schema import check_tables, create_tables
from kvfast.settings import Settings

__all__ = ["RET_CONFIG", "RET_CRASHLOOP", "RET_KILLED", "RET_OK", "RET_UNAVAILABLE", "main"]

log = logging.getLogger("kvfast.supervisor")

# Named exit codes (dramatiq's cli.py does the same).
RET_OK = 0  # stopped cleanly, or --drain-until-empty finished
RET_KILLED = 1  # second signal: drainers killed without finishing their batch
RET_CONFIG = 2  # bad flag/variable, or tables that do not match their models
RET_CRASHLOOP = 3  # drainers kept dying: see the log for the cause
RET_UNAVAILABLE = 4  # Redis or PostgreSQL unreachable at start-up

CRASH_BUDGET = 10
CRASH_WINDOW_S = 60.0
RESTART_BACKOFF_S = (0.1, 5.0)
STARTUP_TIMEOUT_S = 30.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# -- the drainer process ---------------------------------------------------------


def _drainer_main(settings: Settings, index: int, reports: Any, log_level: int) -> None:
    """Entry point of a forked drainer process.

    ``reports`` is this drainer's own pipe to the supervisor.  A shared
    multiprocessing.Queue would not do: a drainer killed with -9 while holding
    the queue's write lock would block every other drainer's next report.
    Reports go through a bounded in-process queue and a sender thread, so a slow
    supervisor drops statistics instead of stalling the drain.
    """
    stop = threading.Event()
    outbox: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=1000)

    def sender() -> None:
        while True:
            item = outbox.get()
            try:
                reports.send(item)
            except (OSError, ValueError):
                return

    threading.Thread(target=sender, name="kvfast-reports", daemon=True).start()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    # SIGINT from a terminal reaches the whole process group: the supervisor
    # decides what it means and forwards SIGTERM, so children ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    # force: the forked child inherits the supervisor's configured root logger.
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s drainer-{index} %(levelname)s %(message)s",
        force=True,
    )
    from kvfast.drainer import BatchReport, Drainer

    drainer = Drainer(settings, should_stop=stop.is_set)

    def on_batch(rep: BatchReport) -> None:
        with contextlib.suppress(queue.Full):
            outbox.put_nowait((index, rep.entries, rep.applied, rep.dead, rep.retaken,
                               rep.stale, rep.lag_ms))

    try:
        drainer.run(on_batch)
    finally:
        drainer.close()
        # Let the sender flush the last reports (the batch totals of a warm stop).
        deadline = time.monotonic() + 2.0
        while not outbox.empty() and time.monotonic() < deadline:
            time.sleep(0.01)


# -- the supervisor ------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess | None = None
    #: the supervisor's read end of this drainer's report pipe
    reports: Any = None
    restart_at: float = 0.0
    crashes: int = 0


@dataclass
class _Stats:
    rows: int = 0
    dead: int = 0
    batches: int = 0
    retaken: int = 0
    stale: int = 0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    #: every lag sample of the run (bounded), for the final report
    all_lags: deque[float] = field(default_factory=lambda: deque(maxlen=500_000))
    first_batch: float = 0.0
    last_batch: float = 0.0
    window_rows: int = 0
    window_start: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, settings: Settings, *, workers: int, drain_until_empty: bool,
                 status_interval: float, log_level: int, stats_json: str | None = None) -> None:
        self.stats_json = stats_json
        self.settings = settings
        self.n_workers = workers
        self.drain_until_empty = drain_until_empty
        self.status_interval = status_interval
        self.log_level = log_level
        self.ctx = multiprocessing.get_context("fork")
        self.workers = [_Worker(i) for i in range(workers)]
        self.stats = _Stats()
        self.crash_times: deque[float] = deque()
        self.signals = 0
        self.client = Client(settings)
        self.last_status: dict[str, float] = {}
        self.tty = sys.stderr.isatty()
        self._metrics = _Metrics()

    # -- processes -----------------------------------------------------------------

    def _spawn(self, w: _Worker) -> None:
        # Block the stop signals across fork: the child unblocks them after it
        # installed its own handlers, so a signal never runs the parent's code.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        if w.reports is not None:
            w.reports.close()
        w.reports, child_end = self.ctx.Pipe(duplex=False)
        try:
            w.process = self.ctx.Process(
                target=_drainer_main,
                args=(self.settings, w.index, child_end, self.log_level),
                name=f"kvfast-drainer-{w.index}",
                daemon=False,
            )
            w.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            child_end.close()
        log.info("drainer %d started (pid %s)", w.index, w.process.pid)

    def _check_workers(self) -> int | None:
        now = time.monotonic()
        for w in self.workers:
            p = w.process
            if p is not None and not p.is_alive():
                code = p.exitcode
                p.join()
                w.process = None
                if self.signals:
                    continue
                w.crashes += 1
                self.crash_times.append(now)
                delay = min(RESTART_BACKOFF_S[1], RESTART_BACKOFF_S[0] * 2 ** (w.crashes - 1))
                w.restart_at = now + delay
                log.warning("drainer %d exited with %s; restarting in %.1fs", w.index, code, delay)
            if w.process is None and not self.signals and now >= w.restart_at:
                self._spawn(w)
        while self.crash_times and self.crash_times[0] < now - CRASH_WINDOW_S:
            self.crash_times.popleft()
        if len(self.crash_times) > CRASH_BUDGET:
            log.error(
                "drainers died %d times in %.0fs: stopping (fix the cause shown above)",
                len(self.crash_times), CRASH_WINDOW_S,
            )
            return RET_CRASHLOOP
        return None

    def _alive(self) -> list[multiprocessing.process.BaseProcess]:
        return [w.process for w in self.workers if w.process is not None and w.process.is_alive()]

    def _stop_all(self, hard: bool) -> None:
        for p in self._alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid or 0, signal.SIGKILL if hard else signal.SIGTERM)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        if self.signals == 1:
            log.warning("%s: finishing the batches in flight, then stopping "
                        "(signal again to stop at once)", signal.Signals(signum).name)
            self._stop_all(hard=False)
        else:
            log.warning("second signal: killing the drainers now")
            self._stop_all(hard=True)

    # -- reporting -------------------------------------------------------------------

    def _collect(self) -> None:
        for w in self.workers:
            while w.reports is not None:
                try:
                    if not w.reports.poll():
                        break
                    self._count(w.reports.recv())
                except (EOFError, OSError):
                    break

    def _count(self, report: tuple[Any, ...]) -> None:
        s = self.stats
        _, _entries, applied, dead, retaken, stale, lags = report
        s.batches += 1
        s.rows += applied
        s.window_rows += applied
        s.dead += dead
        s.retaken += int(retaken)
        s.stale += int(stale)
        s.lags.extend(lags)
        s.all_lags.extend(lags)
        s.last_batch = time.time()
        if not s.first_batch:
            s.first_batch = s.last_batch
        self._metrics.rows.inc(applied)
        self._metrics.dead_new.inc(dead)

    def snapshot(self, *, new_window: bool = True) -> dict[str, float]:
        """Queue depth etc. from Redis, rates and lag over the current window.

        ``new_window=False`` (the emptiness check of --drain-until-empty, every
        0.1 s) leaves the window running so the next status line covers it all.
        """
        queued, inflight, dead = self.client.backlog()
        lags = sorted(self.stats.lags)
        now = time.monotonic()
        elapsed = max(1e-6, now - self.stats.window_start)
        snap = {
            "rows_per_s": self.stats.window_rows / elapsed,
            "queued": float(queued),
            "inflight": float(inflight),
            "dead": float(dead),
            "lag_p50_ms": _quantile(lags, 0.50),
            "lag_p99_ms": _quantile(lags, 0.99),
            "workers": float(len(self._alive())),
            "rows_total": float(self.stats.rows),
        }
        if new_window:
            self.stats.window_rows = 0
            self.stats.window_start = now
            self.stats.lags.clear()
        self.last_status = snap
        self._metrics.update(snap)
        return snap

    def _print_status(self, snap: dict[str, float]) -> None:
        line = (
            f"drained {snap['rows_per_s']:,.0f} rows/s | queued {snap['queued']:,.0f} | "
            f"in flight {snap['inflight']:.0f} | lag p50 {snap['lag_p50_ms']:.0f} ms "
            f"p99 {snap['lag_p99_ms']:.0f} ms | dead letters {snap['dead']:,.0f} | "
            f"drainers {snap['workers']:.0f}/{self.n_workers} | total {snap['rows_total']:,.0f}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        else:
            log.info("%s", line)

    # -- main loop -----------------------------------------------------------------

    def run(self) -> int:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        for w in self.workers:
            self._spawn(w)
        next_status = time.monotonic() + self.status_interval
        empty_checks = 0
        try:
            while True:
                time.sleep(0.1)
                self._collect()
                code = self._check_workers()
                if code is not None:
                    self._stop_all(hard=False)
                    self._wait_children(10.0)
                    return code
                if self.signals:
                    if not self._alive():
                        self._collect()
                        self._final_status()
                        return RET_OK if self.signals == 1 else RET_KILLED
                    continue
                now = time.monotonic()
                if self.drain_until_empty or now >= next_status:
                    try:
                        snap = self.snapshot(new_window=now >= next_status)
                    except Exception as exc:  # Redis away: keep supervising, say so
                        log.warning("status unavailable: %s", exc)
                        continue
                    if now >= next_status:
                        self._print_status(snap)
                        next_status = now + self.status_interval
                    if self.drain_until_empty:
                        # Twice in a row, 0.1 s apart: an entry pushed between the
                        # LLEN and EXISTS reads of one snapshot is not missed.
                        empty = snap["queued"] == 0 and snap["inflight"] == 0
                        empty_checks = empty_checks + 1 if empty else 0
                        if empty_checks >= 2:
                            self.signals = 1
                            self._stop_all(hard=False)
        finally:
            if self.tty:
                sys.stderr.write("\n")

    def _wait_children(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self._alive():
            p.join(max(0.0, deadline - time.monotonic()))
        self._stop_all(hard=True)

    def report(self) -> dict[str, float]:
        s = self.stats
        lags = sorted(s.all_lags)
        return {
            "rows": s.rows, "dead_lettered": s.dead, "batches": s.batches,
            "retaken": s.retaken, "stale": s.stale,
            "first_batch_at": s.first_batch, "last_batch_at": s.last_batch,
            "lag_p50_ms": _quantile(lags, 0.50), "lag_p99_ms": _quantile(lags, 0.99),
            "lag_samples": len(lags),
        }

    def _final_status(self) -> None:
        if self.stats_json:
            with open(self.stats_json, "w") as fh:
                json.dump(self.report(), fh)
        with contextlib.suppress(Exception):
            snap = self.snapshot()
            log.info(
                "stopped: %d rows drained in %d batches, %d dead letters, queue %d, in flight %d",
                self.stats.rows, self.stats.batches, int(snap["dead"]), int(snap["queued"]),
                int(snap["inflight"]),
            )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class _Metrics:
    """Prometheus metrics of the supervisor (aggregated from its drainers)."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.rows = prom.Counter("kvfast_rows_drained", "Queue entries applied to PostgreSQL",
                                 registry=r)
        self.dead_new = prom.Counter("kvfast_dead_lettered", "Entries moved to dead letters",
                                     registry=r)
        self.queued = prom.Gauge("kvfast_queue_depth", "Entries waiting in Redis", registry=r)
        self.inflight = prom.Gauge("kvfast_inflight_batches", "Batches in flight", registry=r)
        self.dead = prom.Gauge("kvfast_dead_letters", "Entries in dead-letter lists", registry=r)
        self.lag = prom.Gauge("kvfast_drain_lag_ms", "Write-to-commit lag", ["quantile"],
                              registry=r)
        self.workers = prom.Gauge("kvfast_drainers_alive", "Drainer processes alive", registry=r)
        self.healthy = True

    def update(self, snap: dict[str, float]) -> None:
        self.queued.set(snap["queued"])
        self.inflight.set(snap["inflight"])
        self.dead.set(snap["dead"])
        self.lag.labels("0.5").set(snap["lag_p50_ms"])
        self.lag.labels("0.99").set(snap["lag_p99_ms"])
        self.workers.set(snap["workers"])


def _serve_http(sup: Supervisor, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body = prom.generate_latest(sup._metrics.registry)
                self._reply(200, body, prom.CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                alive = len(sup._alive())
                ok = alive == sup.n_workers and not sup.signals
                text = f"{'ok' if ok else 'degraded'}: {alive}/{sup.n_workers} drainers\n"
                self._reply(200 if ok else 503, text.encode(), "text/plain")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="kvfast-http", daemon=True).start()
    return server


# -- command line ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kvfast.supervisor",
        description="Drain kvfast's Redis queues into PostgreSQL with a pool of drainer "
        "processes. Every flag can also come from its KVFAST_* variable; the flag wins.",
    )
    p.add_argument("--models", action="append", metavar="MODULE",
                   help="import MODULE to register its models (repeatable; "
                   "default: kvfast.demo; env KVFAST_MODELS, comma-separated)")
    p.add_argument("--workers", type=int, help="drainer processes (env KVFAST_WORKERS; "
                   "default: number of CPUs)")
    p.add_argument("--batch-size", type=int, help="max entries per batch and transaction "
                   "(env KVFAST_BATCH_SIZE; default 2000)")
    p.add_argument("--drain-interval-ms", type=int, help="sleep when no work is queued "
                   "(env KVFAST_DRAIN_INTERVAL_MS; default 100)")
    p.add_argument("--partitions", type=int, help="queue partitions; fixed once data exists "
                   "(env KVFAST_PARTITIONS; default 64)")
    p.add_argument("--lease-ms", type=int, help="lease of an in-flight batch, renewed while "
                   "its drainer works (env KVFAST_LEASE_MS; default 5000)")
    p.add_argument("--namespace", help="Redis key namespace (env KVFAST_NAMESPACE; "
                   "default kvfast)")
    p.add_argument("--redis-url", help="redis://, rediss:// or unix:// URL "
                   "(env KVFAST_REDIS_URL)")
    p.add_argument("--pg-dsn", help="PostgreSQL DSN (env KVFAST_PG_DSN)")
    p.add_argument("--create-tables", action="store_true",
                   help="create missing tables from the models at start (without it, a "
                   "missing or mismatched table is an error at start-up)")
    p.add_argument("--drain-until-empty", action="store_true",
                   help="exit 0 once nothing is queued and nothing is in flight")
    p.add_argument("--status-interval", type=float, default=5.0,
                   help="seconds between status lines (default 5)")
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get(
                   "KVFAST_METRICS_PORT", "0") or 0),
                   help="serve Prometheus /metrics and /healthz on 127.0.0.1:PORT "
                   "(env KVFAST_METRICS_PORT; default 0 = off)")
    p.add_argument("--stats-json", metavar="PATH",
                   help="write the run's totals and drain-lag quantiles to PATH at exit")
    p.add_argument("--log-level", default=os.environ.get("KVFAST_LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO, WARNING or ERROR (env KVFAST_LOG_LEVEL; default INFO)")
    return p


def _import_models(modules: list[str]) -> list[ModelInfo]:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"--models {name!r}: cannot import: {exc}") from exc
    models = registered_models()
    if not models:
        raise ConfigError(f"--models {modules}: no kvfast models registered")
    return models


def _startup_checks(settings: Settings, models: list[ModelInfo], create: bool) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with Client(settings) as client:
                client.check_partitions()
            with pg_errors(settings), connect_pg(settings) as conn:
                if create:
                    create_tables(conn, models)
                else:
                    # kvfast's own fence table is always created; the model tables
                    # only with --create-tables.
                    create_tables(conn, [])
                    check_tables(conn, models)
            return
        except ConnectionFailed as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s; retrying", exc)
            time.sleep(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"kvfast.supervisor: --log-level {args.log_level!r}: use DEBUG, INFO, "
              "WARNING or ERROR", file=sys.stderr)
        return RET_CONFIG
    logging.basicConfig(level=level, format="%(asctime)s supervisor %(levelname)s %(message)s")
    try:
        settings = Settings.from_env(
            redis_url=args.redis_url, pg_dsn=args.pg_dsn, partitions=args.partitions,
            batch_size=args.batch_size, drain_interval_ms=args.drain_interval_ms,
            workers=args.workers, lease_ms=args.lease_ms, namespace=args.namespace,
        )
        if not settings.pg_dsn:
            raise ConfigError("no PostgreSQL DSN: pass --pg-dsn or set KVFAST_PG_DSN")
        modules = args.models or [
            m.strip() for m in os.environ.get("KVFAST_MODELS", "kvfast.demo").split(",")
            if m.strip()
        ]
        models = _import_models(modules)
        _startup_checks(settings, models, args.create_tables)
    except (ConfigError, SchemaMismatch) as exc:
        log.error("%s", exc)
        return RET_CONFIG
    except ConnectionFailed as exc:
        log.error("%s", exc)
        return RET_UNAVAILABLE
    except KvfastError as exc:
        log.error("%s", exc)
        return RET_CONFIG
    log.info("draining %s into PostgreSQL with %d drainers (%s)",
             ", ".join(m.table for m in models), settings.workers, settings)
    sup = Supervisor(settings, workers=settings.workers, drain_until_empty=args.drain_until_empty,
                     status_interval=args.status_interval, log_level=level,
                     stats_json=args.stats_json)
    server = _serve_http(sup, args.metrics_port) if args.metrics_port else None
    try:
        return sup.run()
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
