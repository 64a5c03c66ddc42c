"""The connections one process holds: Redis (with the scripts) and, lazily, PostgreSQL.

Several repositories can share one ``Client``.  Driver errors are translated
into the ``KvfastError`` tree by ``kvfast.drivers`` (passwords redacted); packed
batches travel on a pooled redis-py socket and their replies are read by
``kvfast.resp``.

The client finds out by itself whether the URL names a Redis Cluster node (its
first use asks ``INFO cluster``).  On a cluster ``redis`` is a redis-py
``RedisCluster`` (whose pipelines route each command by slot) and ``topology``
routes kvfast's own packed payloads: ``execute_units`` sends each unit to the
node serving its slot, one payload per node, all nodes at once (``kvfast.cluster``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import psycopg
import redis
from redis import ConnectionPool
from redis.cluster import RedisCluster

from kvfast import memory, meta
from kvfast.cluster import Topology, Unit, is_cluster
from kvfast.cluster import redirected as _redirected
from kvfast.drivers import pg_connect_kwargs, pg_errors, redis_errors
from kvfast.errors import KvfastError, RedisFull, WriteOutcomeUnknown
from kvfast.holds import parse_holds
from kvfast.keys import Keys
from kvfast.replicas import check_wait, wait_command
from kvfast.resp import (
    DISCARD,
    Piece,
    read_replies,
    reply_exception,
    unavailable_reply,
)
from kvfast.scripts import Call, EvalBatch, SendUnits, routed_eval_plan
from kvfast.settings import Settings, redact

# pg_errors and redis_errors live in kvfast.drivers; they stay importable from here.
__all__ = ["Client", "cluster_client", "connect_pg", "pg_errors", "redis_client", "redis_errors"]



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


def _timeouts(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_keepalive": True,
    }


def redis_client(settings: Settings) -> redis.Redis:
    """The redis-py client of one Redis, with kvfast's timeouts (no I/O yet)."""
    return redis.Redis.from_url(settings.redis_url, health_check_interval=30,
                                **_timeouts(settings))


def cluster_client(settings: Settings) -> RedisCluster:
    """redis-py's cluster client (it reads the slot map from the node in the URL)."""
    with redis_errors(settings):
        return RedisCluster.from_url(settings.redis_url, **_timeouts(settings))


#: A connection a thread leased is used again without asking the pool if its last
#: use was this recent; older, it goes back and the pool hands one out with its
#: checks (redis-py's health check PINGs a connection idle for 30 s).
_LEASE_IDLE_S = 1.0


class _Lease:
    """The pooled connection one thread keeps between its sends (``Client._take``).

    redis-py's ``get_connection`` + ``release`` cost ~20 us per call here (a lock,
    a poll of the socket for stray data, its metrics hooks): a sixth of a one-
    record ``create``.  kvfast reads every reply of what it sends, or disconnects,
    so a connection it used a moment ago holds nothing stray.  The lease goes back
    to the pool when the thread ends (its thread-local dies) or the client closes.
    """

    __slots__ = ("busy", "conn", "pid", "poll", "pool", "sock", "used")

    def __init__(self, pool: ConnectionPool, conn: Any) -> None:
        self.pool = pool
        self.conn = conn
        self.pid = os.getpid()
        self.used = 0.0
        self.busy = True
        self.sock = getattr(conn, "_sock", None)
        self.poll = select.poll()
        if self.sock is not None:
            self.poll.register(self.sock, select.POLLIN)

    def fresh(self, pool: ConnectionPool) -> bool:
        """Usable as it is: this process's, this pool's, used a moment ago, the same
        socket, and nothing to read on it (Redis closed it, e.g. a restart: the
        pool then reconnects, as redis-py's own check makes it)."""
        return (self.pool is pool and self.pid == os.getpid()
                and time.monotonic() - self.used < _LEASE_IDLE_S
                and self.sock is not None and getattr(self.conn, "_sock", None) is self.sock
                and not self.poll.poll(0))

    def __del__(self) -> None:
        if self.pid == os.getpid() and not self.busy:  # a forked child's copy stays
            with contextlib.suppress(Exception):
                self.pool.release(self.conn)


def busy_is_redirect(reply: Any) -> bool:
    """TRYAGAIN / CLUSTERDOWN are "cannot serve now" and redirections at once: the
    cluster router sends the unit again instead of failing the call."""
    return _redirected([reply])


class Client:
    """Redis client + Lua scripts + key layout, and an optional PostgreSQL connection."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.keys = Keys(self.settings.namespace, self.settings.partitions)
        self._redis: redis.Redis | None = None
        self._topology: Topology | None = None
        self._pg: psycopg.Connection[Any] | None = None
        self._partitions_checked = False
        self._leases = threading.local()

    @property
    def redis(self) -> redis.Redis:
        """The redis-py client: a ``RedisCluster`` on a cluster (same command methods;
        its pipelines route by slot), found out on first use."""
        if self._redis is None:
            self._connect()
            assert self._redis is not None
        return self._redis

    @property
    def topology(self) -> Topology | None:
        """The slot map on a Redis Cluster, None on one Redis (found out on first use)."""
        if self._redis is None:
            self._connect()
        return self._topology

    def _connect(self) -> None:
        plain = redis_client(self.settings)
        try:
            with redis_errors(self.settings):
                cluster = is_cluster(plain)
        except BaseException:
            plain.close()
            raise
        if not cluster:
            self._redis = plain
            return
        plain.close()
        node = cluster_client(self.settings)
        self._topology = Topology(node, self.keys.tags, self.settings.cluster_retry_ms)
        # RedisCluster is not a redis.Redis subclass, but it has the same command
        # methods and pipeline(): everything kvfast calls on ``redis``.
        self._redis = cast(redis.Redis, node)

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
        pool = self._pool_of(self.keys.meta)
        try:
            payload, nreplies = next(plan)
            while True:
                payload, nreplies = plan.send(
                    self._send([Piece(payload, nreplies, 0, False)], pool)[0])
        except StopIteration:
            pass
        self._partitions_checked = True

    def _pool_of(self, key: str) -> ConnectionPool:
        """The connection pool of the node serving ``key`` (the only one on one Redis)."""
        conn = self.redis
        if self.topology is None:
            return conn.connection_pool
        return self.topology.pool_of_slot(self.topology.slot_of_key(key))

    def full(self, exc: RedisFull) -> RedisFull:
        """``exc`` with the backlog that waits for the drain in its message (best effort)."""
        try:
            backlog: memory.Backlog | None
            if self.topology is not None:  # a payload over every partition spans slots
                queued, _, dead = self.backlog()
                backlog = memory.Backlog(queued, None, dead, None, None)
            else:
                payload, nreplies = meta.backlog_payload(self.keys)
                backlog = meta.backlog_from(
                    self._send([Piece(payload, nreplies, 0, False)])[0])
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

    def _take(self, pool: ConnectionPool) -> tuple[Any, _Lease | None]:
        """A connection of ``pool``: the thread's lease when it is fresh (``_Lease``);
        on a cluster's node pools, or re-entered, the pool's own."""
        if self.topology is not None:
            return pool.get_connection(), None
        leases = self._leases
        lease: _Lease | None = getattr(leases, "lease", None)
        if lease is not None:
            if lease.busy:
                return pool.get_connection(), None
            if lease.fresh(pool):
                lease.busy = True
                return lease.conn, lease
            leases.lease = None  # back to the pool by __del__ (a forked copy is left)
        conn = pool.get_connection()
        lease = leases.lease = _Lease(pool, conn)
        return conn, lease

    @staticmethod
    def _give(pool: ConnectionPool, conn: Any, lease: _Lease | None) -> None:
        if lease is None:
            pool.release(conn)
        else:
            lease.used = time.monotonic()
            lease.busy = False

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
        if self.topology is not None:
            raise RuntimeError("execute_pieces on a Redis Cluster: use execute_units")
        return self._send(itertools.chain((first,), it))

    def _send(self, pieces: Iterable[Piece],
              pool: ConnectionPool | None = None) -> tuple[list[Any], int]:
        """``execute_pieces`` without the start-up check (on ``pool``'s node)."""
        if pool is None:
            pool = self.redis.connection_pool
        with redis_errors(self.settings):
            conn, lease = self._take(pool)
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
                    conn.disconnect()
                    if not started:
                        raise
                    raise self._outcome_unknown(exc) from exc
            except KvfastError:
                raise
            except BaseException:
                conn.disconnect()
                raise
            finally:
                self._give(pool, conn, lease)
        self._raise_busy(replies, "a batch")
        return replies, records

    def _raise_busy(self, replies: list[Any], what: str) -> None:
        """RedisUnavailable for a "cannot serve now" reply (LOADING, READONLY …)."""
        busy = unavailable_reply(replies)
        if busy is not None:
            raise reply_exception(busy, what, redact(self.settings.redis_url))

    def _outcome_unknown(self, exc: BaseException) -> WriteOutcomeUnknown:
        what = ("no reply within the socket timeout "
                f"({self.settings.redis_socket_timeout:g} s)"
                if isinstance(exc, TimeoutError) else f"connection lost: {exc}")
        return WriteOutcomeUnknown(
            f"Redis at {redact(self.settings.redis_url)}: {what} after the request was "
            "sent; it may have been applied")

    def eval_many(self, script: str, calls: Sequence[Call],
                  wait_keys: Sequence[Any] | None = None) -> list[Any]:
        """Pipelined EVALSHA calls in one round trip (SCRIPT LOAD on NOSCRIPT).

        On a cluster each call goes to the node of its first key's slot (every
        kvfast script keeps its keys in one partition, or on one node).
        ``wait_keys`` (the application's key of each call): the calls are writes,
        ``wait_replicas`` applies (``NotReplicated`` names the keys concerned)."""
        if not calls:
            return []
        batch = EvalBatch(script, calls)
        tail = self.wait_command if wait_keys is not None else b""
        try:
            if self.topology is not None:
                self.check_partitions()  # as execute() does on one Redis
                self._eval_routed(batch, wait_keys)
                return batch.results
            while True:
                replies = self.execute(batch.payload() + tail, len(batch.pending) + bool(tail))
                waited = replies.pop() if tail else None
                if not batch.take(replies):
                    break
                self.execute(batch.load_command, 1)
        except RedisFull as exc:
            raise self.full(exc) from exc.__cause__
        if tail:
            self.check_wait(waited, lambda: list(wait_keys or []), f"{script}.lua")
        return batch.results

    def _eval_routed(self, batch: EvalBatch, wait_keys: Sequence[Any] | None) -> None:
        """``scripts.routed_eval_plan`` performed with blocking calls."""
        topology = self.topology
        assert topology is not None
        plan = routed_eval_plan(batch, topology.slot_of_key, self.settings, wait_keys)
        try:
            step = next(plan)
            while True:
                if isinstance(step, SendUnits):
                    step = plan.send(self.execute_units(step.units, step.wait))
                    continue
                for pool in topology.primary_pools():
                    self._send([Piece(step.command, 1, 0, False)], pool)
                step = plan.send(None)
        except StopIteration:
            pass

    def execute_units(self, units: Sequence[Unit], wait: bool = False) -> list[list[Any]]:
        """Each unit's replies (cluster only); the first failure is raised."""
        results = self.send_units(units, wait)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return cast(list[list[Any]], results)

    def send_units(self, units: Sequence[Unit],
                   wait: bool = False) -> list[list[Any] | BaseException]:
        """Each unit's replies, or the error of the node it went to (cluster only):
        the caller tells written from not written (``PartialWrite``).  ``wait``: each
        node's payload ends with ``WAIT`` (``wait_command``), whose reply ends the
        replies of each of its units."""
        assert self.topology is not None, "send_units is for a Redis Cluster"
        tail = self.wait_command if wait else b""
        with redis_errors(self.settings):
            return self.topology.run(units, self.send_many, tail)

    @property
    def wait_command(self) -> bytes:
        """``WAIT`` for ``wait_replicas`` (``kvfast.replicas``), or nothing."""
        return wait_command(self.settings)

    def check_wait(self, reply: Any, keys: Callable[[], list[Any]], what: str) -> None:
        """``NotReplicated`` when ``reply`` (to ``wait_command``) counts too few replicas."""
        check_wait(self.settings, reply, keys, what)

    def send_many(
        self, jobs: list[tuple[ConnectionPool, bytes, int]]
    ) -> list[list[Any] | BaseException]:
        """Send every job's payload to its node first, then read every node's replies:
        one round trip however many nodes.  A node's failure is its result (an
        exception): ``RedisUnavailable`` when nothing was sent, ``WriteOutcomeUnknown``
        once it may have been."""
        out: list[list[Any] | BaseException | None] = [None] * len(jobs)
        held: list[tuple[int, ConnectionPool, Any]] = []
        try:
            for i, (pool, payload, _) in enumerate(jobs):
                try:
                    with redis_errors(self.settings):
                        conn = pool.get_connection()
                except KvfastError as exc:
                    out[i] = exc
                    continue
                held.append((i, pool, conn))
                try:
                    getattr(conn, "_sock", None).sendall(payload)  # type: ignore[union-attr]
                except (OSError, AttributeError) as exc:
                    conn.disconnect()  # type: ignore[no-untyped-call]
                    out[i] = self._outcome_unknown(exc)
            for i, _, conn in held:
                if out[i] is not None:
                    continue
                try:
                    replies = read_replies(conn._sock, jobs[i][2])
                except (OSError, ConnectionError) as exc:
                    conn.disconnect()
                    out[i] = self._outcome_unknown(exc)
                    continue
                busy = unavailable_reply(replies)
                out[i] = replies if busy is None or busy_is_redirect(busy) else reply_exception(
                    busy, "a batch", redact(self.settings.redis_url))
        finally:
            for _, pool, conn in held:
                pool.release(conn)
        return [r for r in out if r is not None]

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
        self._leases = threading.local()  # every thread's lease back to the pool
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        conn, self._redis, self._topology = self._redis, None, None
        if conn is None:
            return
        conn.close()
        if isinstance(conn, redis.Redis):
            conn.connection_pool.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
