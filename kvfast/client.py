"""The connections one process holds: Redis (with the scripts) and, lazily, PostgreSQL.

Several repositories can share one ``Client``.  Driver errors are translated
here into the ``KvfastError`` tree, with passwords redacted from the messages.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import hiredis
import psycopg
import redis

from kvfast.errors import (
    KvfastError,
    LayoutMismatch,
    PartitionMismatch,
    PostgresUnavailable,
    RedisUnavailable,
    SchemaMismatch,
)
from kvfast.keys import LAYOUT_VERSION, Keys
from kvfast.producer import Piece
from kvfast.scripts import EvalBatch, unavailable_reply
from kvfast.settings import Settings, redact

__all__ = ["Client", "pg_errors", "redis_errors"]

_REDIS_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
_RECV_SIZE = 1 << 16
_DISCARD = hiredis.pack_command(("DISCARD",))


def _scrub(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def redis_errors(settings: Settings) -> Iterator[None]:
    """Translate redis-py connection errors into RedisUnavailable (cause kept)."""
    try:
        yield
    except _REDIS_CONNECTION_ERRORS as exc:
        message = _scrub(str(exc), (_password(settings.redis_url),))
        raise RedisUnavailable(
            f"Redis at {redact(settings.redis_url)} is unavailable: {message}"
        ) from exc
    except redis.RedisError as exc:  # an error reply (WRONGTYPE, NOPERM, OOM …)
        message = _scrub(str(exc), (_password(settings.redis_url),))
        raise KvfastError(f"Redis refused a command: {message}") from exc


@contextlib.contextmanager
def pg_errors(settings: Settings) -> Iterator[None]:
    """Translate psycopg connection errors into PostgresUnavailable (cause kept)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        message = _scrub(str(exc), (_password(settings.pg_dsn),))
        raise PostgresUnavailable(
            f"PostgreSQL at {redact(settings.pg_dsn)} is unavailable: {message}"
        ) from exc
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
        raise SchemaMismatch(
            f"PostgreSQL: {_scrub(str(exc), (_password(settings.pg_dsn),))} (create the "
            "tables with kvfast.create_tables() or the supervisor's --create-tables)"
        ) from exc
    except psycopg.Error as exc:
        message = _scrub(str(exc), (_password(settings.pg_dsn),))
        raise KvfastError(f"PostgreSQL refused a query: {message}") from exc


def _password(url: str | None) -> str | None:
    if not url:
        return None
    if "://" in url:
        from urllib.parse import unquote, urlsplit

        try:
            password = urlsplit(url).password
        except ValueError:
            return None
        return unquote(password) if password else None
    try:
        return psycopg.conninfo.conninfo_to_dict(url).get("password")  # type: ignore[return-value]
    except psycopg.ProgrammingError:
        return None


def _read_replies(sock: socket.socket, nreplies: int) -> list[Any]:
    reader = hiredis.Reader()
    replies: list[Any] = []
    gets = reader.gets
    append = replies.append
    while len(replies) < nreplies:
        data = sock.recv(_RECV_SIZE)
        if not data:
            raise redis.ConnectionError("Redis closed the connection")
        reader.feed(data)
        reply = gets()
        while reply is not False:
            append(reply)
            reply = gets()
    return replies


def _execute_slow(conn: Any, payload: bytes, nreplies: int) -> list[Any]:
    conn.send_packed_command([payload])
    replies: list[Any] = []
    for _ in range(nreplies):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


def connect_pg(settings: Settings, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A PostgreSQL connection in UTC (timestamptz values come back as UTC datetimes)."""
    if not settings.pg_dsn:
        raise PostgresUnavailable("no PostgreSQL DSN configured (KVFAST_PG_DSN / pg_dsn)")
    with pg_errors(settings):
        conn = psycopg.connect(
            settings.pg_dsn,
            autocommit=autocommit,
            options="-c timezone=UTC",
            application_name="kvfast",
            connect_timeout=10,
        )
    return conn


class Client:
    """Redis client + Lua scripts + key layout, and an optional PostgreSQL connection."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.keys = Keys(self.settings.namespace, self.settings.partitions)
        self.redis = redis.Redis.from_url(
            self.settings.redis_url,
            socket_connect_timeout=10,
            socket_keepalive=True,
            health_check_interval=30,
        )
        self._pg: psycopg.Connection[Any] | None = None
        self._partitions_checked = False

    def __repr__(self) -> str:
        return f"<kvfast.Client {self.settings!r}>"

    def check_partitions(self) -> None:
        """Record the partition count on first use; refuse a different one later.

        Objects are found by ``crc32(key) % partitions``: reading with another
        count would silently miss every object, so it is a start-up error.
        """
        if self._partitions_checked:
            return
        want = self.settings.partitions
        with redis_errors(self.settings):
            pipe = self.redis.pipeline(transaction=True)
            pipe.hsetnx(self.keys.meta, "partitions", want)
            pipe.hsetnx(self.keys.meta, "layout", LAYOUT_VERSION)
            pipe.hmget(self.keys.meta, ["partitions", "layout"])
            _, _, (have, layout) = pipe.execute()
        if int(have) != want:
            raise PartitionMismatch(
                f"namespace {self.settings.namespace!r} in Redis was written with "
                f"partitions={int(have)}, but this process uses partitions={want}; "
                "set KVFAST_PARTITIONS to the recorded value"
            )
        if int(layout) != LAYOUT_VERSION:
            raise LayoutMismatch(
                f"namespace {self.settings.namespace!r} in Redis uses key layout "
                f"{int(layout)}, this kvfast uses layout {LAYOUT_VERSION}: drain it with the "
                "kvfast version that wrote it first"
            )
        self._partitions_checked = True

    @property
    def has_pg(self) -> bool:
        return bool(self.settings.pg_dsn)

    def pg(self) -> psycopg.Connection[Any]:
        """The shared autocommit PostgreSQL connection (reconnects after a failure)."""
        if self._pg is None or self._pg.closed or self._pg.broken:
            self._pg = connect_pg(self.settings)
        return self._pg

    def execute(self, payload: bytes, nreplies: int) -> list[Any]:
        """Send one packed buffer on a pooled connection; return every reply.

        Error replies come back as values (hiredis.ReplyError), not raised.
        Replies are parsed by a hiredis Reader fed straight from the socket:
        redis-py's read_response() costs ~2 µs of Python per reply, more than
        Redis spends executing most commands.
        """
        return self.execute_pieces([Piece(payload, nreplies, 0, False)])[0]

    def execute_pieces(self, pieces: Iterable[Piece]) -> tuple[list[Any], int]:
        """Send a batch while it is being encoded; return (every reply, records).

        The pieces of the first MULTI block go out as they are produced, so
        Redis parses them while the producer encodes the next records; the
        piece that ends that block (its EXEC) and everything after it are held
        until the iterator is exhausted, i.e. until every record has been
        validated.  If encoding fails, DISCARD drops what Redis has queued:
        nothing of the batch is written, and the error propagates.
        """
        # The first piece is encoded before Redis is touched at all: a small batch
        # with a bad record fails without even the partition-layout check.
        it = iter(pieces)
        first = next(it, None)
        if first is None:
            return [], 0
        pieces = itertools.chain((first,), it)
        self.check_partitions()
        pool = self.redis.connection_pool
        with redis_errors(self.settings):
            conn = pool.get_connection()
            try:
                sock = getattr(conn, "_sock", None)
                if sock is None:  # pragma: no cover - redis-py internals changed
                    whole = list(pieces)
                    return (_execute_slow(conn, b"".join(p.payload for p in whole),
                                          sum(p.nreplies for p in whole)),
                            sum(p.records for p in whole))
                sent = records = 0
                held: list[bytes] = []
                held_replies = 0
                try:
                    for piece in pieces:
                        records += piece.records
                        if held or piece.ends_block:
                            held.append(piece.payload)
                            held_replies += piece.nreplies
                        else:
                            sock.sendall(piece.payload)
                            sent += piece.nreplies
                except KvfastError:
                    if sent:
                        sock.sendall(_DISCARD)
                        _read_replies(sock, sent + 1)
                    raise
                if held:
                    sock.sendall(b"".join(held))
                replies = _read_replies(sock, sent + held_replies)
            except KvfastError:
                raise
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)
        busy = unavailable_reply(replies)
        if busy is not None:
            where = redact(self.settings.redis_url)
            raise RedisUnavailable(f"Redis at {where} cannot serve: {busy}")
        return replies, records

    def eval_many(self, script: str, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        """Pipelined EVALSHA calls in one round trip (SCRIPT LOAD on NOSCRIPT)."""
        if not calls:
            return []
        batch = EvalBatch(script, calls)
        while batch.take(self.execute(batch.payload(), len(batch.pending))):
            self.execute(batch.load_command, 1)
        return batch.results

    def evalsha(self, script: str, keys: list[Any], args: list[Any]) -> Any:
        return self.eval_many(script, [(keys, args)])[0]

    def backlog(self) -> tuple[int, int, int]:
        """(entries queued, partitions with a batch in flight, dead letters), all partitions."""
        keys = self.keys
        with redis_errors(self.settings):
            pipe = self.redis.pipeline(transaction=False)
            for p in range(keys.partitions):
                pipe.llen(keys.queues[p])
                pipe.exists(keys.inflight_meta[p])
                pipe.llen(keys.dead[p])
            raw = pipe.execute()
        return sum(raw[0::3]), sum(raw[1::3]), sum(raw[2::3])

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        self.redis.close()
        self.redis.connection_pool.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
