"""``python -m kvfast.supervisor``: fork N drainers, keep them alive, report, stop cleanly.

This module is the command line, the start-up checks and the main loop; the
parts live beside it:

* ``kvfast.worker`` — a drainer process (entry after fork, report sender);
* ``kvfast.pool`` — fork, restart with backoff, crash loop, stop signals;
* ``kvfast.stats`` — batch reports, totals, drain-lag quantiles, status line;
* ``kvfast.metrics`` — Prometheus ``/metrics`` and ``/healthz``.

Every few seconds a status line (rows/s, queue depth, in flight, lag, dead
letters) goes to stderr; ``--drain-until-empty`` exits 0 once nothing is queued
and nothing is in flight.  Flags and variables: ``kvfast.settings``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import setproctitle

from kvfast import impl
from kvfast.client import Client, connect_pg, pg_errors
from kvfast.errors import ConfigError, ConnectionFailed, KvfastError, SchemaMismatch
from kvfast.indexmeta import check_recorded
from kvfast.metrics import Metrics, serve_http
from kvfast.model import ModelInfo, registered_models
from kvfast.pool import Pool
from kvfast.schema import check_tables, create_tables
from kvfast.settings import Settings, SupervisorOptions
from kvfast.stats import Health, Snapshot, Stats
from kvfast.sweep import SWEEP_INTERVAL_S, IndexSweeper
from kvfast.worker import supervisor_title

__all__ = [
    "RET_CONFIG", "RET_CRASHLOOP", "RET_KILLED", "RET_OK", "RET_UNAVAILABLE", "Supervisor",
    "build_parser", "main",
]

log = logging.getLogger("kvfast.supervisor")

# Named exit codes (dramatiq's cli.py does the same).
RET_OK = 0  # stopped cleanly, or --drain-until-empty finished
RET_KILLED = 1  # drainers killed without finishing their batch (second signal, or stuck a lease)
RET_CONFIG = 2  # bad flag/variable, or tables that do not match their models
RET_CRASHLOOP = 3  # drainers kept dying: see the log for the cause
RET_UNAVAILABLE = 4  # Redis or PostgreSQL unreachable at start-up

STARTUP_TIMEOUT_S = 30.0
# pg_advisory_lock key held around the start-up DDL, so supervisors started together
# do not race CREATE TABLE IF NOT EXISTS (which fails with a unique violation on
# pg_type_typname_nsp_index when two sessions create one table at once): "kvfast".
DDL_LOCK_KEY = int.from_bytes(b"kvfast", "big")
# The loop's tick: how soon a report, a dead drainer or a signal is acted on.
TICK_S = 0.1


class Supervisor:
    """The main loop: a pool of drainers, their statistics, status lines, metrics."""

    def __init__(self, settings: Settings, options: SupervisorOptions | None = None,
                 *, pool: Pool | None = None, models: Sequence[ModelInfo] = ()) -> None:
        self.settings = settings
        self.options = options if options is not None else SupervisorOptions()
        self.pool = pool if pool is not None else Pool(settings, self.options.level)
        self.stats = Stats()
        self.metrics = Metrics()
        self.client = Client(settings)
        self.tty = sys.stderr.isatty()
        self._last_held: Snapshot | None = None
        #: prunes the index sets of TTL'd models (kvfast.sweep); None when there are none
        sweeper = IndexSweeper(self.client, models)
        self.sweeper = sweeper if sweeper.models else None

    def health(self) -> Health:
        health = self.pool.health()
        held = self._last_held.held_reasons() if self._last_held is not None else ()
        if held:
            health = dataclasses.replace(health, reasons=(*health.reasons, *held))
        return health

    def collect(self) -> None:
        for report in self.pool.receive():
            self.stats.count(report)
            self.metrics.count(report)

    def snapshot(self, *, new_window: bool = True) -> Snapshot:
        """Queue depth etc. from Redis, rates and lag over the current window.

        ``new_window=False`` (the emptiness check of --drain-until-empty, every
        0.1 s) leaves the window running so the next status line covers it all.
        """
        queued, inflight, dead = self.client.backlog()
        held = self.client.holds()
        rate, p50, p99 = self.stats.window(restart=new_window)
        snap = Snapshot(rows_per_s=rate, queued=queued, inflight=inflight, dead=dead,
                        lag_p50_ms=p50, lag_p99_ms=p99, workers=len(self.pool.alive()),
                        rows_total=self.stats.rows, held=held)
        self.metrics.update(snap)
        self._last_held = snap
        return snap

    def _print_status(self, snap: Snapshot) -> None:
        line = snap.status_line(self.pool.size)
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        else:
            log.info("%s", line)

    def run(self) -> int:
        self.pool.start()
        interval = self.options.status_interval
        until_empty = self.options.drain_until_empty
        next_status = time.monotonic() + interval
        next_sweep = time.monotonic()
        empty_checks = 0
        try:
            while True:
                time.sleep(TICK_S)
                self.collect()
                if self.pool.check():
                    self.pool.stop(hard=False)
                    self.pool.wait(10.0)
                    return RET_CRASHLOOP
                if self.pool.signals:
                    self.pool.enforce_grace()
                    if not self.pool.alive():
                        self.collect()
                        self._final_status()
                        clean = self.pool.signals == 1 and not self.pool.killed_stuck
                        return RET_OK if clean else RET_KILLED
                    continue
                now = time.monotonic()
                if self.sweeper is not None and now >= next_sweep:
                    next_sweep = self._sweep_step(now, next_sweep)
                if until_empty or now >= next_status:
                    try:
                        snap = self.snapshot(new_window=now >= next_status)
                    except Exception as exc:  # Redis away: keep supervising, say so
                        log.warning("status unavailable: %s", exc)
                        continue
                    if now >= next_status:
                        self._print_status(snap)
                        next_status = now + interval
                    if until_empty:
                        # Twice in a row, 0.1 s apart: an entry pushed between the
                        # LLEN and EXISTS reads of one snapshot is not missed.  Held
                        # entries are undrained writes too: a table that stays
                        # broken keeps the supervisor running (the status line
                        # and /healthz name it).
                        empty = snap.queued == 0 and snap.inflight == 0 and not snap.held
                        empty_checks = empty_checks + 1 if empty else 0
                        if empty_checks >= 2:
                            self.pool.finish()
        finally:
            if self.tty:
                sys.stderr.write("\n")

    def _sweep_step(self, now: float, due: float) -> float:
        """Some index sets swept (kvfast.sweep); when the next step is due."""
        assert self.sweeper is not None
        try:
            if not self.sweeper.step():
                return due
        except KvfastError as exc:  # Redis away: the next pass retries
            log.warning("index sweep stopped: %s", exc)
        return now + SWEEP_INTERVAL_S

    def report(self) -> dict[str, float]:
        return self.stats.report()

    def _final_status(self) -> None:
        if self.options.stats_json:
            with open(self.options.stats_json, "w") as fh:
                json.dump(self.report(), fh)
        with contextlib.suppress(Exception):
            snap = self.snapshot()
            log.info(
                "stopped: %d rows drained in %d batches, %d dead letters, queue %d, in flight "
                "%d, held %d", self.stats.rows, self.stats.batches, snap.dead, snap.queued,
                snap.inflight, snap.held_entries,
            )


# -- command line and start-up checks --------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kvfast.supervisor",
        description="Drain kvfast's Redis queues into PostgreSQL with a pool of drainer "
        "processes. Most flags can also come from their KVFAST_* variable; the flag wins.",
    )
    Settings.add_arguments(p)
    SupervisorOptions.add_arguments(p)
    return p


def _import_models(modules: Sequence[str]) -> list[ModelInfo]:
    for name in modules:
        try:
            importlib.import_module(name)
        except SyntaxError as exc:
            raise ConfigError(f"--models {name!r}: {exc.filename}, line {exc.lineno}: "
                              f"{exc.msg}") from None
        except ImportError as exc:
            raise ConfigError(f"--models {name!r}: cannot import: {exc}") from exc
    models = registered_models()
    if not models:
        raise ConfigError(f"--models {', '.join(modules)}: no kvfast models registered")
    return models


def _startup_checks(settings: Settings, models: list[ModelInfo], create: bool) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with Client(settings) as client:
                client.check_partitions()
                check_recorded(client, models, "python -m kvfast.reindex --models "
                               + ",".join(sorted({m.cls.__module__ for m in models})))
            with pg_errors(settings), connect_pg(settings) as conn, _ddl_lock(conn):
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


@contextlib.contextmanager
def _ddl_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One supervisor at a time runs the start-up DDL (a session-level advisory lock)."""
    conn.execute("SELECT pg_advisory_lock(%s)", (DDL_LOCK_KEY,))
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (DDL_LOCK_KEY,))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = SupervisorOptions.from_args(args)
    except ConfigError as exc:  # before logging is set up: the level may be the bad value
        print(f"kvfast.supervisor: {exc}", file=sys.stderr)
        return RET_CONFIG
    logging.basicConfig(level=options.level,
                        format="%(asctime)s supervisor %(levelname)s %(message)s")
    try:
        settings = Settings.from_args(args)
        setproctitle.setproctitle(supervisor_title(settings.namespace))
        if not settings.pg_dsn:
            raise ConfigError("no PostgreSQL DSN: pass --pg-dsn or set KVFAST_PG_DSN")
        models = _import_models(options.models)
        _startup_checks(settings, models, options.create_tables)
    except (ConfigError, SchemaMismatch) as exc:  # AuthenticationFailed too: never retried
        log.error("%s", exc)
        return RET_CONFIG
    except ConnectionFailed as exc:
        log.error("%s", exc)
        return RET_UNAVAILABLE
    except KvfastError as exc:
        log.error("%s", exc)
        return RET_CONFIG
    log.info("draining %s into PostgreSQL with %d drainers (%s; %s implementation)",
             ", ".join(m.table for m in models), settings.workers, settings, impl.IMPL)
    sup = Supervisor(settings, options, models=models)
    server = (serve_http(options.metrics_port, sup.metrics.registry, sup.health)
              if options.metrics_port else None)
    try:
        return sup.run()
    finally:
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
