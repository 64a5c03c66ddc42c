"""Every error kvfast raises, under one root.

    KvfastError
    ├── ConfigError                bad setting, environment variable or flag
    │   ├── PartitionMismatch      the Redis data was written with another partition count
    │   ├── LayoutMismatch         the Redis data was written with another key layout
    │   └── AuthenticationFailed   a server refused the credentials (wrong password, user)
    ├── ModelError                 a model class that kvfast cannot map to a table
    ├── SchemaMismatch             a PostgreSQL table that does not match its model
    ├── ValidationError            a value the producer refuses before writing anything
    ├── NotFound                   update of a key that exists in neither store
    ├── DecodeError                a queue entry or hash that cannot be decoded
    ├── RedisCommandError          Redis refused a command (WRONGTYPE, NOPERM, a script error)
    │   └── RedisFull              Redis is at maxmemory (OOM): nothing of the call was written
    ├── PartialWrite               a batch only partly written (Redis Cluster; never on one Redis)
    ├── PostgresQueryError         PostgreSQL refused a query (not a connection problem)
    └── ConnectionFailed           a server could not be reached (the driver error is the cause)
        ├── RedisUnavailable       also a reply saying "cannot serve now" (LOADING, READONLY …)
        │   └── WriteOutcomeUnknown  sent, but no reply came: the request may have been applied
        └── PostgresUnavailable

Driver exceptions are translated where they enter kvfast (``raise X(...) from exc``),
by the one table in ``kvfast.drivers`` (error replies read off kvfast's own
sockets by ``kvfast.resp.reply_exception``), so callers catch one tree and still
see the original in ``__cause__``.  No message built here ever contains a
password: URLs pass through ``settings.redact`` first.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "ConnectionFailed",
    "DecodeError",
    "KvfastError",
    "LayoutMismatch",
    "ModelError",
    "NotFound",
    "PartialWrite",
    "PartitionMismatch",
    "PostgresQueryError",
    "PostgresUnavailable",
    "RedisCommandError",
    "RedisFull",
    "RedisUnavailable",
    "SchemaMismatch",
    "ValidationError",
    "WriteOutcomeUnknown",
]

_MAX_VALUE_REPR = 80


def short_repr(value: Any) -> str:
    """A repr that stays readable in an error line even for a 10 MB string."""
    text = repr(value)
    if len(text) > _MAX_VALUE_REPR:
        text = text[: _MAX_VALUE_REPR - 3] + "..."
    return text


class KvfastError(Exception):
    """Root of every error kvfast raises."""


class ConfigError(KvfastError, ValueError):
    """A setting, environment variable or command-line flag has a bad value."""


class PartitionMismatch(ConfigError):
    """Redis already holds data written with a different partition count."""


class LayoutMismatch(ConfigError):
    """Redis holds data written with another version of kvfast's key layout."""


class ModelError(KvfastError, TypeError):
    """A model declaration kvfast cannot map to PostgreSQL (names the field)."""


class SchemaMismatch(KvfastError):
    """An existing PostgreSQL table does not match its model."""


class ValidationError(KvfastError, ValueError):
    """A value refused at the producer, before anything was written.

    ``model``, ``field`` and ``value`` name exactly what was refused.
    """

    def __init__(self, model: str, field: str, value: Any, reason: str) -> None:
        self.model = model
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{model}.{field} = {short_repr(value)}: {reason}")


class NotFound(KvfastError, LookupError):
    """The key exists neither in Redis nor in PostgreSQL (or it was deleted)."""

    def __init__(self, model: str, keys: list[Any]) -> None:
        self.model = model
        self.keys = keys
        shown = ", ".join(short_repr(k) for k in keys[:10])
        more = f" (and {len(keys) - 10} more)" if len(keys) > 10 else ""
        super().__init__(f"{model}: no object with key {shown}{more}")


class DecodeError(KvfastError, ValueError):
    """Bytes from Redis (a queue entry or an object hash) that do not decode."""


class RedisCommandError(KvfastError):
    """Redis refused a command: an error reply that retrying will not cure by itself."""


class RedisFull(RedisCommandError):
    """Redis refused a write because it is at ``maxmemory`` (an ``OOM`` reply).

    Nothing of the refused call was written.  The drain frees memory (its
    scripts run when Redis is full), so the same call succeeds again once it has:
    the message names the backlog waiting for it.
    """


class PartialWrite(KvfastError):
    """A batch of which only part was written; ``written_keys`` names exactly which.

    Never raised on one Redis, where every batch is one MULTI/EXEC.  On a Redis
    Cluster a batch is one MULTI/EXEC per partition, sent to several nodes; when
    one node fails the others' blocks stay written.
    """

    def __init__(self, message: str, written_keys: list[Any],
                 unknown_keys: list[Any] | None = None) -> None:
        self.written_keys = written_keys
        #: keys whose node took the request and then failed: written or not
        self.unknown_keys = unknown_keys or []
        super().__init__(message)


class PostgresQueryError(KvfastError):
    """PostgreSQL refused a query for a reason other than the connection."""


class ConnectionFailed(KvfastError, ConnectionError):
    """A server could not be reached or dropped the connection."""


class RedisUnavailable(ConnectionFailed):
    """Redis could not be reached or dropped the connection."""


class PostgresUnavailable(ConnectionFailed):
    """PostgreSQL could not be reached or dropped the connection."""


class AuthenticationFailed(ConfigError):
    """Redis or PostgreSQL refused the credentials: retrying will not help, fix the settings."""


class NotReplicated(KvfastError):
    """A write Redis applied but fewer replicas than ``wait_replicas`` confirmed in
    ``wait_timeout_ms``: it is in the master's memory, and a failover now could lose it.
    ``keys`` names the writes concerned (an application may write them again: a
    create or an update of the same values is safe to repeat)."""

    def __init__(self, message: str, keys: list[Any]) -> None:
        self.keys = keys
        super().__init__(message)


class WriteOutcomeUnknown(RedisUnavailable):
    """The request reached the socket but its reply never came (timeout, connection lost).

    Redis may have applied it: retry only what is safe to apply twice, or read back.
    """
