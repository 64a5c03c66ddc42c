"""The supervisor's Prometheus metrics and its ``/metrics`` + ``/healthz`` HTTP server.

The server knows nothing of the supervisor: it is given the registry to expose
and a callable that returns the current ``Health``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client as prom

from kvfast.stats import Health, Report, Snapshot

__all__ = ["Metrics", "serve_http"]


class Metrics:
    """Prometheus metrics of the supervisor (aggregated from its drainers)."""

    def __init__(self) -> None:
        # A registry of its own: no process/platform collectors, and tests can
        # build several supervisors in one process.
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
        self.held = prom.Gauge("kvfast_held_entries",
                               "Entries waiting in held lists (a table that cannot be applied)",
                               ["table"], registry=r)
        self._held_tables: set[str] = set()

    def count(self, report: Report) -> None:
        self.rows.inc(report.applied)
        self.dead_new.inc(report.dead)

    def update(self, snap: Snapshot) -> None:
        self.queued.set(snap.queued)
        self.inflight.set(snap.inflight)
        self.dead.set(snap.dead)
        self.lag.labels("0.5").set(snap.lag_p50_ms)
        self.lag.labels("0.99").set(snap.lag_p99_ms)
        self.workers.set(snap.workers)
        for table in self._held_tables - set(snap.held):
            self.held.labels(table).set(0)
        for table, (n, _) in snap.held.items():
            self.held.labels(table).set(n)
        self._held_tables |= set(snap.held)


def serve_http(port: int, registry: prom.CollectorRegistry,
               health: Callable[[], Health]) -> ThreadingHTTPServer:
    """Serve ``/metrics`` (``registry``) and ``/healthz`` (200 ok / 503 degraded) on
    127.0.0.1:``port`` from a daemon thread; ``shutdown()`` the result to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._reply(200, prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                h = health()
                self._reply(200 if h.ok else 503, h.text().encode(), "text/plain")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every few seconds is not worth a log line

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="kvfast-http", daemon=True).start()
    return server
