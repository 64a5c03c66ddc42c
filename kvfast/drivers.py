"""Where redis-py and psycopg enter kvfast: one error translation table, connect options.

Each table maps driver exception classes to a kvfast leaf, most specific first
(the first row that matches wins: httpx's ``HTTPCORE_EXC_MAP`` is the model).
``redis_errors`` / ``pg_errors`` apply them around sync and async code alike
(a context manager translates whatever the block raises, awaited or not).  The
original exception stays in ``__cause__``; passwords are scrubbed from every
message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import psycopg
import redis

from kvfast.errors import (
    AuthenticationFailed,
    KvfastError,
    PostgresQueryError,
    PostgresUnavailable,
    RedisCommandError,
    RedisFull,
    RedisUnavailable,
    SchemaMismatch,
)
from kvfast.resp import AUTH_PREFIXES, UNAVAILABLE_PREFIXES
from kvfast.settings import Settings, redact

__all__ = [
    "PG_EXC_MAP",
    "REDIS_EXC_MAP",
    "pg_connect_kwargs",
    "pg_errors",
    "redis_errors",
    "scrub",
]

#: (driver error, url) → the kvfast error to raise; ``text`` is the scrubbed message
Make = Callable[[BaseException, str, str], KvfastError]


def _redis_auth(exc: BaseException, text: str, where: str) -> KvfastError:
    return AuthenticationFailed(f"Redis at {where} refused the credentials: {text} "
                                "(check the user and password in the Redis URL)")


def _redis_reply(exc: BaseException, text: str, where: str) -> KvfastError:
    # redis-py raises LOADING as a ConnectionError (BusyLoadingError) but READONLY,
    # MASTERDOWN … as ResponseError: the reply's prefix decides, as on the raw path.
    if str(exc).startswith(UNAVAILABLE_PREFIXES):
        return RedisUnavailable(f"Redis at {where} cannot serve: {text}")
    if str(exc).startswith(AUTH_PREFIXES):
        return _redis_auth(exc, text, where)
    return RedisCommandError(f"Redis refused a command: {text}")


#: redis-py and the raw socket path, most specific first
REDIS_EXC_MAP: tuple[tuple[tuple[type[BaseException], ...], Make], ...] = (
    # WRONGPASS, NOAUTH, "invalid password": a ConnectionError subclass in redis-py,
    # but no amount of retrying fixes a wrong password.
    ((redis.AuthenticationError,), _redis_auth),
    ((redis.ConnectionError, redis.TimeoutError, OSError, hiredis.ProtocolError),
     lambda exc, text, where: RedisUnavailable(f"Redis at {where} is unavailable: {text}")),
    # redis-py strips the "OOM" prefix off the message: the class says it.
    ((redis.exceptions.OutOfMemoryError,),
     lambda exc, text, where: RedisFull(f"Redis at {where} is full: {text}")),
    ((redis.ResponseError,), _redis_reply),
    ((redis.RedisError,),  # any other refusal (auth, a bad reply)
     lambda exc, text, where: RedisCommandError(f"Redis refused a command: {text}")),
)

#: SQLSTATE class 28 (invalid_authorization_specification, invalid_password) and the
#: libpq texts of a refused log-in, which come without a SQLSTATE before 3.2
_PG_AUTH_STATES = ("28000", "28P01")
_PG_AUTH_TEXTS = ("password authentication failed", "no password supplied",
                  "role \"", "pg_hba.conf rejects", "SCRAM authentication")


def _pg_operational(exc: BaseException, text: str, where: str) -> KvfastError:
    state = getattr(exc, "sqlstate", None)
    if state in _PG_AUTH_STATES or any(t in text for t in _PG_AUTH_TEXTS):
        return AuthenticationFailed(f"PostgreSQL at {where} refused the log-in: {text} "
                                    "(check the user and password in the DSN)")
    return PostgresUnavailable(f"PostgreSQL at {where} is unavailable: {text}")


#: psycopg, most specific first
PG_EXC_MAP: tuple[tuple[tuple[type[BaseException], ...], Make], ...] = (
    # OperationalError: the server is away or dropped us; InterfaceError: the
    # connection object is closed or broken (a killed backend seen mid-call).
    ((psycopg.OperationalError, psycopg.InterfaceError), _pg_operational),
    ((psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn),
     lambda exc, text, where: SchemaMismatch(
         f"PostgreSQL: {text} (create the tables with kvfast.create_tables() or the "
         "supervisor's --create-tables)")),
    ((psycopg.Error,),
     lambda exc, text, where: PostgresQueryError(f"PostgreSQL refused a query: {text}")),
)


@contextlib.contextmanager
def map_exceptions(
    table: tuple[tuple[tuple[type[BaseException], ...], Make], ...], url: str | None
) -> Iterator[None]:
    """Translate what the block raises by ``table`` (kvfast errors pass through)."""
    try:
        yield
    except KvfastError:
        raise
    except Exception as exc:
        for classes, make in table:
            if isinstance(exc, classes):
                text = scrub(str(exc), password(url))
                raise make(exc, text, redact(url or "")) from exc
        raise


def redis_errors(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Translate redis-py / socket errors into RedisUnavailable or RedisCommandError."""
    return map_exceptions(REDIS_EXC_MAP, settings.redis_url)


def pg_errors(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """Translate psycopg errors into PostgresUnavailable, SchemaMismatch or PostgresQueryError."""
    return map_exceptions(PG_EXC_MAP, settings.pg_dsn)


def pg_connect_kwargs(settings: Settings, *, autocommit: bool = True) -> dict[str, Any]:
    """The one set of connect options, for psycopg.connect and AsyncConnection.connect.

    UTC, so timestamptz values come back as UTC datetimes; a connect timeout
    (``settings.pg_connect_timeout``), so an unreachable server is an error rather
    than a hang.  The DSN's own ``options`` (``-c search_path=atlas_app``) are
    kept, and so is ``PGOPTIONS`` from the environment when the DSN has none (libpq's
    own rule, which psycopg's ``options=`` keyword would otherwise override): kvfast's
    come after them, so only ``timezone`` is kvfast's to decide.
    """
    if not settings.pg_dsn:
        raise PostgresUnavailable("no PostgreSQL DSN configured (KVFAST_PG_DSN / pg_dsn)")
    return {
        "conninfo": settings.pg_dsn,
        "autocommit": autocommit,
        "options": _options(settings.pg_dsn, _KVFAST_OPTIONS),
        "application_name": "kvfast",
        "connect_timeout": settings.pg_connect_timeout,
    }


#: what kvfast sets on every connection (psycopg's ``options=`` keyword replaces the
#: DSN's, so ``_options`` joins the two)
_KVFAST_OPTIONS = "-c timezone=UTC"


def _options(dsn: str, ours: str) -> str:
    """The DSN's ``options`` (else ``PGOPTIONS``) followed by ``ours`` (a later ``-c``
    wins in PostgreSQL)."""
    try:
        theirs = psycopg.conninfo.conninfo_to_dict(dsn).get("options")
    except psycopg.ProgrammingError:
        return ours  # a malformed DSN: psycopg.connect says what is wrong with it
    if not theirs:
        theirs = os.environ.get("PGOPTIONS")
    return f"{theirs} {ours}" if theirs else ours


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def password(url: str | None) -> str | None:
    """The password in a URL or a libpq conninfo string, to scrub from messages."""
    if not url:
        return None
    if "://" in url:
        try:
            secret = urlsplit(url).password
        except ValueError:
            return None
        return unquote(secret) if secret else None
    try:
        return psycopg.conninfo.conninfo_to_dict(url).get("password")  # type: ignore[return-value]
    except psycopg.ProgrammingError:
        return None
