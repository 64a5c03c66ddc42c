"""The connections one process holds: Redis (with the scripts) and, lazily, PostgreSQL.

Several repositories can share one ``Client``.  Driver errors are translated
into the ``KvfastError`` tree by ``kvfast.drivers`` (passwords redacted); packed
batches travel on a pooled redis-py socket and their replies are read by
``kvfast.resp``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
import redis

from kvfast import memory, meta
from kvfast.drivers import pg_connect_kwargs, pg_errors, redis_errors
from kvfast.errors import KvfastError, RedisFull, WriteOutcomeUnknown
from kvfast.holds import parse_holds
from kvfast.keys import Keys
from kvfast.resp import DISCARD, Piece, read_replies, reply_exception, unavailable_reply
from kvfast.scripts import Call, EvalBatch
from kvfast.settings import Settings, redact

# pg_errors and redis_errors live in kvfast.drivers; they stay importable from here.
__all__ = ["Client", "connect_pg", "pg_errors", "redis_errors"]

T = TypeVar("T")


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
    kwargs = pg_connect_kwargs(settings, autocommit=autocommit)
    with pg_errors(settings):
        return psycopg.connect(**kwargs)


class Client:
    """Redis client + Lua scripts + key layout, and an optional PostgreSQL connection."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.keys = Keys(self.settings.namespace, self.settings.partitions)
        self.redis = redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=self.settings.redis_socket_timeout,
            socket_connect_timeout=self.settings.redis_connect_timeout,
            socket_keepalive=True,
            health_check_interval=30,
        )
        self._pg: psycopg.Connection[Any] | None = None
        self._partitions_checked = False

    def __repr__(self) -> str:
        return f"<kvfast.Client {self.settings!r}>"

    def check_partitions(self) -> None:
        """The start-up check, once: eviction policy, then partition count and layout.

        See ``kvfast.meta`` (the plan shared with the asyncio client): it only
        reads when the meta hash exists, so it passes on a Redis at maxmemory.
        """
        if self._partitions_checked:
            return
        plan = meta.check_plan(self.settings, self.keys)
        try:
            payload, nreplies = next(plan)
            while True:
                payload, nreplies = plan.send(self._send([Piece(payload, nreplies, 0, False)])[0])
        except StopIteration:
            pass
        self._partitions_checked = True

    def full(self, exc: RedisFull) -> RedisFull:
        """``exc`` with the backlog that waits for the drain in its message (best effort)."""
        try:
            payload, nreplies = meta.backlog_payload(self.keys)
            backlog = meta.backlog_from(self._send([Piece(payload, nreplies, 0, False)])[0])
        except KvfastError:
            backlog = None
        return RedisFull(memory.full_message(str(exc), backlog))

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

        Error replies come back as values (hiredis.ReplyError), not raised,
        except "cannot serve now" replies (RedisUnavailable).  Replies are
        parsed by ``resp.read_replies``, a hiredis Reader fed from the socket.
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

        Once any byte of the batch went out, a lost connection or a reply that
        does not come within ``redis_socket_timeout`` is ``WriteOutcomeUnknown``:
        Redis may have applied the batch (or part of it, for a batch of several
        MULTI blocks).
        """
        # The first piece is encoded before Redis is touched at all: a small batch
        # with a bad record fails without even the partition-layout check.
        it = iter(pieces)
        first = next(it, None)
        if first is None:
            return [], 0
        self.check_partitions()
        return self._send(itertools.chain((first,), it))

    def _send(self, pieces: Iterable[Piece]) -> tuple[list[Any], int]:
        """``execute_pieces`` without the start-up check."""
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
                started = False
                try:
                    try:
                        for piece in pieces:
                            records += piece.records
                            if held or piece.ends_block:
                                held.append(piece.payload)
                                held_replies += piece.nreplies
                            else:
                                started = True
                                sock.sendall(piece.payload)
                                sent += piece.nreplies
                    except KvfastError:
                        if sent:
                            sock.sendall(DISCARD)
                            read_replies(sock, sent + 1)
                        raise
                    if held:
                        started = True
                        sock.sendall(b"".join(held))
                    replies = read_replies(sock, sent + held_replies)
                except (OSError, ConnectionError) as exc:
                    conn.disconnect()  # type: ignore[no-untyped-call]
                    if not started:
                        raise
                    raise self._outcome_unknown(exc) from exc
            except KvfastError:
                raise
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)
        self._raise_busy(replies, "a batch")
        return replies, records

    def _raise_busy(self, replies: list[Any], what: str) -> None:
        """RedisUnavailable for a "cannot serve now" reply (LOADING, READONLY …)."""
        busy = unavailable_reply(replies)
        if busy is not None:
            raise reply_exception(busy, what, redact(self.settings.redis_url))

    def execute_during(self, payload: bytes, nreplies: int,
                       during: Callable[[], T]) -> tuple[list[Any], T]:
        """``execute`` of read-only commands with ``during()`` run between sending them
        and reading their replies: a PostgreSQL query overlapped with the Redis round
        trip (``kvfast.find``)."""
        self.check_partitions()
        pool = self.redis.connection_pool
        with redis_errors(self.settings):
            conn = pool.get_connection()
            try:
                sock = getattr(conn, "_sock", None)
                if sock is None:  # pragma: no cover - redis-py internals changed
                    return _execute_slow(conn, payload, nreplies), during()
                sock.sendall(payload)
                result = during()
                replies = read_replies(sock, nreplies)
            except BaseException:
                # replies unread (during() failed) or the socket broke: never reuse it
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)
        self._raise_busy(replies, "a read")
        return replies, result

    def _outcome_unknown(self, exc: BaseException) -> WriteOutcomeUnknown:
        what = ("no reply within the socket timeout "
                f"({self.settings.redis_socket_timeout:g} s)"
                if isinstance(exc, TimeoutError) else f"connection lost: {exc}")
        return WriteOutcomeUnknown(
            f"Redis at {redact(self.settings.redis_url)}: {what} after the request was "
            "sent; it may have been applied")

    def eval_many(self, script: str, calls: Sequence[Call]) -> list[Any]:
        """Pipelined EVALSHA calls in one round trip (SCRIPT LOAD on NOSCRIPT)."""
        if not calls:
            return []
        batch = EvalBatch(script, calls)
        try:
            while batch.take(self.execute(batch.payload(), len(batch.pending))):
                self.execute(batch.load_command, 1)
        except RedisFull as exc:
            raise self.full(exc) from exc.__cause__
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

    def holds(self) -> dict[str, tuple[int, str]]:
        """Held tables (kvfast.holds), all partitions: table → (entries waiting, why).

        Two pipelined round trips, the second only when something is held.
        """
        keys = self.keys
        with redis_errors(self.settings):
            pipe = self.redis.pipeline(transaction=False)
            for p in range(keys.partitions):
                pipe.hgetall(keys.holds[p])
            found: list[tuple[int, str, str]] = []
            for p, raw in enumerate(pipe.execute()):
                for table, hold in parse_holds(
                        [x for pair in raw.items() for x in pair])[0].items():
                    found.append((p, table, hold.reason))
            if not found:
                return {}
            pipe = self.redis.pipeline(transaction=False)
            for p, table, _ in found:
                pipe.llen(keys.held(p, table))
            lengths = pipe.execute()
        out: dict[str, tuple[int, str]] = {}
        for (_, table, reason), n in zip(found, lengths, strict=True):
            before = out.get(table, (0, reason))[0]
            out[table] = (before + int(n), reason)
        return out

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
