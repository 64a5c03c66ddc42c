"""One frozen ``Settings`` object, built in code or from ``KVFAST_*`` variables.

Command-line flags (the supervisor) are applied on top of ``from_env()`` with
``dataclasses.replace``; a bad value is a ``ConfigError`` that names the variable
or flag and the value, never a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kvfast.errors import ConfigError

__all__ = ["Settings", "redact"]

# The number of partitions bounds drain parallelism (one batch in flight per
# partition) and costs one empty list per partition; 64 keeps 8 drainers busy.
DEFAULT_PARTITIONS = 64
# 2,000-row batches: COPY + upsert pays ~0.5 ms fixed cost per transaction
# (DESIGN.md: 1,000-row transactions reach 250k rows/s, 5,000-row ones 390k).
DEFAULT_BATCH_SIZE = 2000
DEFAULT_DRAIN_INTERVAL_MS = 100
# A lease short enough that a dead drainer's batch is re-applied within seconds,
# renewed every lease/3 while the drainer works or waits for PostgreSQL.
DEFAULT_LEASE_MS = 5000

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def redact(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (URL and key=value DSN forms)."""
    if not url:
        return ""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return "<unparsable url>"
        # libpq and redis-py also take the password as a query parameter.
        query = re.sub(r"(?i)((?:^|&)(?:ssl)?password=)[^&]*", r"\1***", parts.query)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            try:
                port = parts.port
            except ValueError:
                port = None
            netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(?i)((?:ssl)?password\s*=\s*)('([^'\\]|\\.)*'|\S+)", r"\1***", url)


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where the servers are and how kvfast uses them.

    ``redis_url`` accepts ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs,
    with ``user:password@`` where needed; ``pg_dsn`` is any libpq DSN or URL, or
    ``None`` for a Redis-only repository (no read fallback, no drain).
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    pg_dsn: str | None = None
    partitions: int = DEFAULT_PARTITIONS
    batch_size: int = DEFAULT_BATCH_SIZE
    drain_interval_ms: int = DEFAULT_DRAIN_INTERVAL_MS
    workers: int = field(default_factory=_cpu_count)
    lease_ms: int = DEFAULT_LEASE_MS
    namespace: str = "kvfast"

    def __post_init__(self) -> None:
        _check_url(self.redis_url, "redis_url", ("redis", "rediss", "unix"))
        if self.pg_dsn is not None:
            _check_dsn(self.pg_dsn)
        _check_range("partitions", self.partitions, 1, 16384)
        _check_range("batch_size", self.batch_size, 1, 1_000_000)
        _check_range("drain_interval_ms", self.drain_interval_ms, 1, 3_600_000)
        _check_range("workers", self.workers, 1, 1024)
        _check_range("lease_ms", self.lease_ms, 100, 3_600_000)
        if not _NAMESPACE_RE.match(self.namespace):
            raise ConfigError(
                f"namespace={self.namespace!r}: use 1-64 letters, digits, '_', '.' or '-'"
            )

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("redis_url", "pg_dsn") and value is not None:
                value = redact(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``KVFAST_*`` variables; keyword ``overrides`` win.

        A variable that is set but malformed raises ``ConfigError`` naming it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var, parse in _ENV:
            if overrides.get(name) is not None:
                continue  # a flag wins: its variable is not even parsed
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError:
                shown = redact(raw) if name in ("redis_url", "pg_dsn") else raw
                raise ConfigError(f"{var}={shown!r}: expected {_EXPECTED[name]}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ConfigError as exc:
            # Name the variable the bad value came from, not just the field.
            for name, var, _ in _ENV:
                if str(exc).startswith(f"{name}=") and overrides.get(name) is None and var in env:
                    raise ConfigError(f"{var}: {exc}") from None
            raise


def _positive_int(raw: str) -> int:
    return int(raw.strip(), 10)


_ENV: list[tuple[str, str, Callable[[str], Any]]] = [
    ("redis_url", "KVFAST_REDIS_URL", str),
    ("pg_dsn", "KVFAST_PG_DSN", str),
    ("partitions", "KVFAST_PARTITIONS", _positive_int),
    ("batch_size", "KVFAST_BATCH_SIZE", _positive_int),
    ("drain_interval_ms", "KVFAST_DRAIN_INTERVAL_MS", _positive_int),
    ("workers", "KVFAST_WORKERS", _positive_int),
    ("lease_ms", "KVFAST_LEASE_MS", _positive_int),
    ("namespace", "KVFAST_NAMESPACE", str),
]
_EXPECTED = {
    "redis_url": "a redis://, rediss:// or unix:// URL",
    "pg_dsn": "a PostgreSQL DSN",
    "partitions": "an integer",
    "batch_size": "an integer",
    "drain_interval_ms": "an integer (milliseconds)",
    "workers": "an integer",
    "lease_ms": "an integer (milliseconds)",
    "namespace": "a name",
}


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{name}={value!r}: expected an integer from {low} to {high}")


def _check_dsn(dsn: str) -> None:
    """Parse the DSN as libpq will, so a typo fails at start-up, not at first drain."""
    from psycopg import ProgrammingError, conninfo

    if "://" in dsn:
        _check_url(dsn, "pg_dsn", ("postgresql", "postgres"))
    try:
        conninfo.conninfo_to_dict(dsn)
    except ProgrammingError:
        raise ConfigError(f"pg_dsn={redact(dsn)!r}: not a valid PostgreSQL DSN") from None


def _check_url(url: str, name: str, schemes: tuple[str, ...]) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in schemes:
        raise ConfigError(
            f"{name}={redact(url)!r}: expected a URL starting with "
            + " or ".join(f"{s}://" for s in schemes)
        )
