"""Frozen settings, built in code, from ``KVFAST_*`` variables or from flags.

``Settings`` is what every part of kvfast needs (where the servers are, how the
queues are laid out and drained); ``SupervisorOptions`` holds what only
``python -m kvfast.supervisor`` uses.  Each field declares its variable, flag,
help text and expected form once, as ``opt()`` metadata (``kvfast.options``):
``from_env()``, ``from_args()``, the command-line options and the README's
settings table (``settings_table()``, checked by a test) all come from there.
A bad value is a ``ConfigError`` that names the variable or flag and the value,
never a password.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from kvfast.errors import ConfigError
from kvfast.options import Declared, markdown_table, opt, redact

__all__ = ["Settings", "SupervisorOptions", "redact", "settings_table"]

# The number of partitions bounds drain parallelism (one batch in flight per
# partition) and costs one empty list per partition; 64 keeps 8 drainers busy.
DEFAULT_PARTITIONS = 64
# 2,000-row batches: COPY + upsert pays ~0.5 ms fixed cost per transaction
# (1,000-row transactions reach 250k rows/s, 5,000-row ones 390k).
DEFAULT_BATCH_SIZE = 2000
DEFAULT_DRAIN_INTERVAL_MS = 100
# A lease short enough that a dead drainer's batch is re-applied within seconds,
# renewed every lease/3 while the drainer works or waits for PostgreSQL.
DEFAULT_LEASE_MS = 5000

# A reply slower than this is treated as lost (WriteOutcomeUnknown for a request
# already sent).  redis-py has no socket timeout of its own; 10 s is well past any
# pipelined batch here (a 5,000-record create_many takes ~20 ms) and past a
# LOADING restart's first replies, and short enough that a stalled server is seen.
DEFAULT_REDIS_SOCKET_TIMEOUT_S = 10.0
DEFAULT_REDIS_CONNECT_TIMEOUT_S = 5.0
# libpq takes whole seconds (and treats 1 as 2).
DEFAULT_PG_CONNECT_TIMEOUT_S = 10

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _integer(raw: str) -> int:
    return int(raw.strip(), 10)


def _number(raw: str) -> float:
    return float(raw.strip())


def _in_range(low: float, high: float, kind: str = "an integer") -> dict[str, Any]:
    """``opt()`` arguments of a number between ``low`` and ``high``."""
    expected = f"{kind} from {low:g} to {high:g}"
    integral = kind.startswith("an integer")

    def check(name: str, value: Any) -> None:
        ok_type = type(value) is int or (not integral and type(value) is float)
        if not ok_type or not low <= value <= high:
            raise ConfigError(f"{name}={value!r}: expected {expected}")

    return {"expected": expected, "parse": _integer if integral else _number, "check": check}


def _url(*schemes: str) -> dict[str, Any]:
    expected = "a URL starting with " + " or ".join(f"{s}://" for s in schemes)

    def check(name: str, value: Any) -> None:
        _check_url(value, name, schemes)

    return {"expected": expected, "check": check, "secret": True}


def _check_namespace(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _NAMESPACE_RE.match(value):
        raise ConfigError(f"{name}={value!r}: use 1-64 letters, digits, '_', '.' or '-'")


def _check_dsn(name: str, dsn: Any) -> None:
    """Parse the DSN as libpq will, so a typo fails at start-up, not at first drain."""
    from psycopg import ProgrammingError, conninfo

    if dsn is None:
        return
    if "://" in dsn:
        _check_url(dsn, name, ("postgresql", "postgres"))
    try:
        conninfo.conninfo_to_dict(dsn)
    except ProgrammingError:
        raise ConfigError(f"{name}={redact(dsn)!r}: not a valid PostgreSQL DSN") from None


def _check_url(url: str, name: str, schemes: tuple[str, ...]) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in schemes:
        raise ConfigError(
            f"{name}={redact(url)!r}: expected a URL starting with "
            + " or ".join(f"{s}://" for s in schemes)
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings(Declared):
    """Where the servers are and how kvfast uses them.

    ``redis_url`` accepts ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs,
    with ``user:password@`` where needed; ``pg_dsn`` is any libpq DSN or URL, or
    ``None`` for a Redis-only repository (no read fallback, no drain).
    """

    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata=opt(
        "redis://, rediss:// (TLS) or unix:// URL, with user:password@ if needed",
        env="KVFAST_REDIS_URL", flag="--redis-url", metavar="URL",
        **_url("redis", "rediss", "unix")))
    redis_socket_timeout: float = field(default=DEFAULT_REDIS_SOCKET_TIMEOUT_S, metadata=opt(
        "seconds to wait for a Redis reply; a write sent but not answered in time raises "
        "WriteOutcomeUnknown (it may have been applied)",
        env="KVFAST_REDIS_SOCKET_TIMEOUT", flag="--redis-socket-timeout", metavar="S",
        **_in_range(0.01, 3600, "a number of seconds")))
    redis_connect_timeout: float = field(default=DEFAULT_REDIS_CONNECT_TIMEOUT_S, metadata=opt(
        "seconds to wait for a Redis connection",
        env="KVFAST_REDIS_CONNECT_TIMEOUT", flag="--redis-connect-timeout", metavar="S",
        **_in_range(0.01, 3600, "a number of seconds")))
    wait_replicas: int = field(default=0, metadata=opt(
        "replicas every write waits for (Redis WAIT) before it returns; 0: none.  With 1, "
        "a write that returned survives its master's failover (replication is asynchronous)",
        env="KVFAST_WAIT_REPLICAS", flag="--wait-replicas", metavar="N", **_in_range(0, 64)))
    wait_timeout_ms: int = field(default=1000, metadata=opt(
        "milliseconds a write waits for its replicas; past it the write raises NotReplicated",
        env="KVFAST_WAIT_TIMEOUT_MS", flag="--wait-timeout-ms", metavar="MS",
        **_in_range(1, 600_000)))
    cluster_retry_ms: int = field(default=20_000, metadata=opt(
        "Redis Cluster: milliseconds a write or claim keeps re-sending to a slot that is "
        "redirected or whose master refuses connections (a failover, a resharding) before "
        "it raises RedisUnavailable (PartialWrite if other nodes took their part); keep it "
        "above cluster-node-timeout plus an election",
        env="KVFAST_CLUSTER_RETRY_MS", flag="--cluster-retry-ms", metavar="MS",
        **_in_range(0, 3_600_000, "an integer (milliseconds)")))
    pg_dsn: str | None = field(default=None, metadata=opt(
        "PostgreSQL DSN or URL; without it reads do not fall back and nothing drains",
        env="KVFAST_PG_DSN", flag="--pg-dsn", metavar="DSN", expected="a PostgreSQL DSN",
        check=_check_dsn, secret=True))
    pg_connect_timeout: int = field(default=DEFAULT_PG_CONNECT_TIMEOUT_S, metadata=opt(
        "seconds to wait for a PostgreSQL connection (libpq's connect_timeout)",
        env="KVFAST_PG_CONNECT_TIMEOUT", flag="--pg-connect-timeout", metavar="S",
        **_in_range(1, 3600, "an integer (seconds)")))
    partitions: int = field(default=DEFAULT_PARTITIONS, metadata=opt(
        "queue partitions; recorded in Redis, a different value later is an error",
        env="KVFAST_PARTITIONS", flag="--partitions", metavar="N", **_in_range(1, 16384)))
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata=opt(
        "max entries per batch (one PostgreSQL transaction)",
        env="KVFAST_BATCH_SIZE", flag="--batch-size", metavar="N", **_in_range(1, 1_000_000)))
    drain_interval_ms: int = field(default=DEFAULT_DRAIN_INTERVAL_MS, metadata=opt(
        "drainer sleep when nothing is queued",
        env="KVFAST_DRAIN_INTERVAL_MS", flag="--drain-interval-ms", metavar="MS",
        **_in_range(1, 3_600_000, "an integer (milliseconds)")))
    workers: int = field(default_factory=_cpu_count, metadata=opt(
        "drainer processes",
        env="KVFAST_WORKERS", flag="--workers", metavar="N", default_text="CPU count",
        **_in_range(1, 1024)))
    lease_ms: int = field(default=DEFAULT_LEASE_MS, metadata=opt(
        "lease of an in-flight batch (renewed every lease/3 while its drainer works)",
        env="KVFAST_LEASE_MS", flag="--lease-ms", metavar="MS",
        **_in_range(100, 3_600_000, "an integer (milliseconds)")))
    namespace: str = field(default="kvfast", metadata=opt(
        "prefix of every Redis key",
        env="KVFAST_NAMESPACE", flag="--namespace", metavar="NAME",
        expected="1-64 letters, digits, '_', '.' or '-'", check=_check_namespace))


def _modules(raw: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def _check_modules(name: str, value: Any) -> None:
    if not value or not all(isinstance(m, str) and m for m in value):
        raise ConfigError(f"{name}={value!r}: expected one or more module names")


def _check_level(name: str, value: Any) -> None:
    if not isinstance(value, str) or value.upper() not in _LOG_LEVELS:
        raise ConfigError(f"{name}={value!r}: use DEBUG, INFO, WARNING or ERROR")


@dataclass(frozen=True, kw_only=True, repr=False)
class SupervisorOptions(Declared):
    """What only ``python -m kvfast.supervisor`` uses, declared like ``Settings``."""

    models: tuple[str, ...] = field(default=("kvfast.demo",), metadata=opt(
        "modules to import for their models (repeatable, or comma-separated)",
        env="KVFAST_MODELS", flag="--models", metavar="MODULE", repeat=True,
        expected="comma-separated module names", parse=_modules, check=_check_modules))
    create_tables: bool = field(default=False, metadata=opt(
        "create missing tables from the models at start; without it a missing or "
        "mismatched table stops start-up (exit 2)", flag="--create-tables"))
    drain_until_empty: bool = field(default=False, metadata=opt(
        "exit 0 once nothing is queued and nothing is in flight", flag="--drain-until-empty"))
    status_interval: float = field(default=5.0, metadata=opt(
        "seconds between status lines (stderr; plain log lines off a terminal)",
        env="KVFAST_STATUS_INTERVAL", flag="--status-interval", metavar="S",
        **_in_range(0.01, 86_400, "a number of seconds")))
    metrics_port: int = field(default=0, metadata=opt(
        "serve Prometheus /metrics and /healthz on 127.0.0.1:PORT",
        env="KVFAST_METRICS_PORT", flag="--metrics-port", metavar="PORT",
        default_text="0 = off", **_in_range(0, 65535)))
    stats_json: str | None = field(default=None, metadata=opt(
        "write the run's totals and drain-lag quantiles to PATH at exit",
        flag="--stats-json", metavar="PATH", default_text="off"))
    log_level: str = field(default="INFO", metadata=opt(
        "DEBUG, INFO, WARNING or ERROR",
        env="KVFAST_LOG_LEVEL", flag="--log-level", metavar="LEVEL",
        expected="DEBUG, INFO, WARNING or ERROR", check=_check_level))

    @property
    def level(self) -> int:
        """``log_level`` as a ``logging`` level number."""
        return int(getattr(logging, self.log_level.upper()))


def settings_table() -> str:
    """The README's settings table, from the fields' metadata."""
    return markdown_table(Settings, SupervisorOptions)
