"""Redis Cluster: which node serves a partition, and sending to several nodes at once.

kvfast's keys are laid out per partition (``{ns:p}`` is every key's hash tag), so
each partition is one slot and every script and MULTI block already touches one
slot.  What a cluster adds is routing: a batch is split by partition, the
partitions are grouped by the node that serves their slot, and each node gets
one pipelined payload, all nodes at once (send to every node, then read every
node): one round trip for the whole batch.

redis-py's ``RedisCluster`` keeps the slot map (it is what ``Client.redis`` is on
a cluster, so ordinary pipelines route themselves); kvfast sends its own packed
payloads on the raw sockets of that map's per-node connection pools, as it does
on one Redis.  A unit whose reply is a redirection (``MOVED``: the slot moved;
``ASK``/``TRYAGAIN``: it is moving; ``CLUSTERDOWN``: a failover is under way)
was not applied - a MULTI block with such a reply aborts at EXEC, a script never
ran - so the map is refreshed and the unit sent again, to its new node.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis import ConnectionPool
from redis.cluster import RedisCluster
from redis.crc import key_slot

from kvfast.errors import RedisUnavailable, WriteOutcomeUnknown
from kvfast.resp import REPLY_ERRORS

__all__ = ["REDIRECT_PREFIXES", "Retry", "RoutePlan", "Routing", "SendJobs", "Topology", "Unit",
           "is_cluster", "redirected", "refresh_slot_map", "route_plan"]

#: replies that mean "not applied here, ask the slot map again"
REDIRECT_PREFIXES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
#: the pause before each new attempt at a redirected or unreachable unit (then the
#: last one again), until ``cluster_retry_ms`` is spent
_PAUSE_S = (0.01, 0.05, 0.1, 0.25, 0.5)


def is_cluster(conn: redis.Redis) -> bool:
    """Whether the server ``conn`` talks to runs in cluster mode.

    A user whose ACL refuses INFO is taken to be on one Redis: the start-up
    check then says what that user lacks (kvfast needs INFO to read the
    eviction policy anyway), and a cluster would answer MOVED, a clear error."""
    try:
        info = conn.info("cluster")
    except redis.ResponseError:
        return False
    return bool(info.get("cluster_enabled"))


def redirected(replies: Sequence[Any]) -> bool:
    """Whether any reply (or any reply inside an EXEC array) is a redirection."""
    for reply in replies:
        if isinstance(reply, REPLY_ERRORS):
            text = str(reply)
            if text.startswith(REDIRECT_PREFIXES) or (
                    text.startswith("EXECABORT") and "MOVED" in text):
                return True
        elif isinstance(reply, list) and redirected(reply):
            return True
    return False


def refresh_slot_map(cluster: RedisCluster) -> None:
    """``cluster``'s slot map read again.  redis-py's ``initialize()`` replaces every
    node object and leaves the old ones' connections open: a long-running drainer
    that refreshes after each failover or resharding would leak sockets, so the
    replaced nodes' pools are closed here."""
    manager = cluster.nodes_manager
    old = dict(manager.nodes_cache)
    manager.initialize()
    for name, node in old.items():
        if manager.nodes_cache.get(name) is not node and node.redis_connection is not None:
            node.redis_connection.connection_pool.disconnect()


@dataclass(slots=True)
class Unit:
    """What must reach one slot whole: a MULTI block, or pipelined scripts of one slot."""

    slot: int
    payload: bytes
    nreplies: int


@dataclass(frozen=True, slots=True)
class SendJobs:
    """Send each payload to its node (``host:port``), all at once; send back one
    result per job: its replies, or the exception that node's send raised
    (``RedisUnavailable`` when nothing was sent, ``WriteOutcomeUnknown`` once it may
    have been)."""

    jobs: list[tuple[str, bytes, int]]


@dataclass(frozen=True, slots=True)
class Retry:
    """Sleep ``pause_s``, then read the slot map again (a failure to read it is
    ignored: the next attempt tells); send back None."""

    pause_s: float


RouteStep = SendJobs | Retry
RoutePlan = Generator[RouteStep, Any, list[list[Any] | BaseException]]


def route_plan(units: Sequence[Unit], node_of_slot: Callable[[int], str], tail: bytes,
               retry_ms: int) -> RoutePlan:
    """Every unit's replies, in order, one pipelined payload per node per round.

    The routing of ``Client`` and ``AsyncClient`` (psycopg's shape, as in
    ``kvfast.core``): this plan decides, the shell performs ``SendJobs`` and
    ``Retry`` with blocking calls or awaited.  ``node_of_slot`` reads the
    shell's current slot map (a ``Retry`` refreshes it).

    A unit whose replies are a redirection is sent again after a refresh of the
    slot map; a node that failed after the send (``WriteOutcomeUnknown``) gives
    that exception for each of its units, so the caller can tell what was
    written from what was not.  A node that refused the connection before
    anything was sent is retried the same way, so a failover is ridden out.
    Retries stop once the next pause would end past ``retry_ms`` after the first
    send: the units still pending then get a ``RedisUnavailable`` that says how
    many attempts were made (a master down and not failed over, its replica
    down too, is not waited for forever).

    ``tail`` (one command, e.g. ``WAIT``) ends each node's payload; its reply
    is appended to the replies of every unit of that node.
    """
    extra = 1 if tail else 0
    out: list[list[Any] | BaseException | None] = [None] * len(units)
    last: dict[int, Any] = {}  # unit -> its last redirect reply or node error
    pending = list(range(len(units)))
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        by_node: dict[str, list[int]] = {}
        for i in pending:
            by_node.setdefault(node_of_slot(units[i].slot), []).append(i)
        groups = list(by_node.items())
        results = yield SendJobs([
            (node, b"".join([*(units[i].payload for i in idx), tail]),
             sum(units[i].nreplies for i in idx) + extra)
            for node, idx in groups])
        again: list[int] = []
        for (_, idx), result in zip(groups, results, strict=True):
            if isinstance(result, BaseException):
                for i in idx:
                    out[i] = result
                # Nothing was sent (the node refused the connection: it died
                # and its replica is taking over): safe to send again.
                if not isinstance(result, WriteOutcomeUnknown):
                    again += idx
                    last.update(dict.fromkeys(idx, result))
                continue
            at = 0
            for i in idx:
                n = units[i].nreplies
                replies = result[at:at + n]
                at += n
                if extra:
                    replies.append(result[-1])
                if redirected(replies):
                    again.append(i)
                    last[i] = next((r for r in replies if isinstance(r, REPLY_ERRORS)), None)
                else:
                    out[i] = replies
        if not again:
            break
        pause = _PAUSE_S[min(attempt - 1, len(_PAUSE_S) - 1)]
        spent = time.monotonic() - started
        if spent + pause > retry_ms / 1000:
            for i in again:
                exc = RedisUnavailable(
                    f"Redis Cluster: slot {units[i].slot} still unreachable or redirected "
                    f"after {attempt} attempts in {spent:.2f} s (cluster_retry_ms={retry_ms}: "
                    f"a failover or a resharding that did not end in time): {last.get(i)}")
                cause = last.get(i)
                if isinstance(cause, BaseException):
                    exc.__cause__ = cause
                out[i] = exc
            break
        yield Retry(pause)
        pending = again
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


#: sends payloads to several nodes at once: ``[(pool, payload, nreplies)]`` →
#: one reply list per payload, or the exception that node's send raised
SendMany = Callable[[list[tuple[ConnectionPool, bytes, int]]], list[list[Any] | BaseException]]


class Routing:
    """What the sync and the asyncio slot maps share: the partitions' slots."""

    def __init__(self, tags: Sequence[str], retry_ms: int) -> None:
        #: the slot of each partition (every key of partition p has tag tags[p])
        self.partition_slots = [key_slot(tag.encode()) for tag in tags]
        self.retry_ms = retry_ms

    @staticmethod
    def slot_of_key(key: str | bytes) -> int:
        return key_slot(key.encode() if isinstance(key, str) else key)


class Topology(Routing):
    """The slot map of one cluster (kept by redis-py) and the partitions' slots."""

    def __init__(self, cluster: RedisCluster, tags: Sequence[str],
                 retry_ms: int = 20_000) -> None:
        super().__init__(tags, retry_ms)
        self.cluster = cluster

    def node_of_slot(self, slot: int) -> str:
        name: str = self.cluster.nodes_manager.get_node_from_slot(slot).name
        return name

    def pool_of_node(self, name: str) -> ConnectionPool:
        node = self.cluster.nodes_manager.nodes_cache.get(name)
        conn = None if node is None else node.redis_connection
        if conn is None:  # pragma: no cover - redis-py creates it with the node
            raise RedisUnavailable(f"Redis Cluster: no connection to node {name}")
        pool: ConnectionPool = conn.connection_pool
        return pool

    def pool_of_slot(self, slot: int) -> ConnectionPool:
        return self.pool_of_node(self.node_of_slot(slot))

    def primary_pools(self) -> list[ConnectionPool]:
        """The connection pool of every master."""
        nodes = self.cluster.get_primaries()  # type: ignore[no-untyped-call]
        return [n.redis_connection.connection_pool for n in nodes
                if n.redis_connection is not None]

    def refresh(self) -> None:
        """Re-read the slot map (after a redirection or a node failure)."""
        refresh_slot_map(self.cluster)

    def run(self, units: Sequence[Unit], send_many: SendMany,
            tail: bytes = b"") -> list[list[Any] | BaseException]:
        """``route_plan`` performed with blocking calls (``send_many`` sends)."""
        plan = route_plan(units, self.node_of_slot, tail, self.retry_ms)
        try:
            step = next(plan)
            while True:
                if isinstance(step, SendJobs):
                    sent = send_many([(self.pool_of_node(node), payload, n)
                                      for node, payload, n in step.jobs])
                    step = plan.send(sent)
                    continue
                time.sleep(step.pause_s)
                # every node unreachable for now: the next attempt tells
                with contextlib.suppress(redis.RedisError, OSError):
                    self.refresh()
                step = plan.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
