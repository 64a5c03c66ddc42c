"""kvfast on a real Redis Cluster (3 masters, 3 replicas: ``tools/services up cluster``).

The same data path as on one Redis: the client finds out it is on a cluster by
itself; batches are split by partition, one MULTI per partition, each sent to the
node of its slot; claims go to every node at once; the drain reaches PostgreSQL
exactly.  A node that stops answering mid-batch gives ``PartialWrite`` naming the
keys written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from typing import Any

import psycopg
import pytest
import redis
from redis.cluster import RedisCluster

import kvfast
import kvfast.aio
from kvfast import deadletter
from kvfast.cluster import refresh_slot_map
from kvfast.drainer import Drainer
from kvfast.model import TOMBSTONE_FIELD

Conn = psycopg.Connection[Any]


@kvfast.model(table="cl_rides", key="id")
class Ride:
    id: int
    status: str
    fare: int | None = None


@kvfast.model(table="cl_pairs", key=("driver", "rider"))
class Pair:
    driver: int
    rider: str
    n: int


@kvfast.model(table="cl_trips", key="id", indexes=("rider",))
class Trip:
    id: int
    rider: str


def drain(settings: kvfast.Settings) -> int:
    """One drainer, in this process, until nothing is left.  (Imported here: the
    supervisors these tests start import this module, and drainprocs would give
    them the drain tests' models, whose tables do not exist here.)"""
    from drainprocs import drain_in_process

    return drain_in_process(settings)


def keys_per_master(rc: RedisCluster) -> dict[str, int]:
    return {n.name: int(n.redis_connection.dbsize())
            for n in rc.get_primaries() if n.redis_connection is not None}


@pytest.fixture
def tables(pg: Conn) -> Conn:
    kvfast.create_tables(pg, [kvfast.model_info(m) for m in (Ride, Pair, Trip)])
    return pg


def test_the_client_finds_the_cluster_by_itself(cluster_settings: kvfast.Settings) -> None:
    with kvfast.Client(cluster_settings) as client:
        assert isinstance(client.redis, RedisCluster)
        assert client.topology is not None
        slots = client.topology.partition_slots
        assert len(slots) == 8 and len(set(slots)) == 8


def test_writes_reads_and_the_drain_on_a_cluster(cluster_settings: kvfast.Settings,
                                                  rc: RedisCluster, tables: Conn) -> None:
    with kvfast.Repository(Ride, cluster_settings) as repo:
        assert repo.create_many([Ride(i, "new", fare=i) for i in range(500)]) == 500
        repo.update_many({i: {"status": "on trip"} for i in range(0, 500, 7)})
        assert repo.delete_many(list(range(0, 500, 11))) == 46
        repo.create(Ride(1000, "late"))
        # every master holds some of it: the batch really was split by slot
        assert all(n > 0 for n in keys_per_master(rc).values()), keys_per_master(rc)
        got = repo.get_many(range(501))
        want = {i: Ride(i, "on trip" if i % 7 == 0 else "new", fare=i)
                for i in range(500) if i % 11}
        assert {o.id: o for o in got if o is not None} == want
        drain(cluster_settings)
        rows = tables.execute("SELECT id, status, fare FROM cl_rides ORDER BY id").fetchall()
        want[1000] = Ride(1000, "late")
        assert [Ride(*row) for row in rows] == [want[k] for k in sorted(want)]
        # the tombstones went with their drained deletes, on every node
        assert not [k for k in rc.scan_iter(match="*:o:cl_rides:*", target_nodes=rc.PRIMARIES)
                    if rc.hexists(k, TOMBSTONE_FIELD)]
        # the fallback read and the hydrating update once the Redis copies are gone
        for node in rc.get_primaries():
            node.redis_connection.flushall()
        assert repo.get_by_id(3) == want[3]
        repo.update(3, fare=33)
    drain(cluster_settings)
    assert tables.execute("SELECT fare FROM cl_rides WHERE id = 3").fetchone() == (33,)


def test_composite_keys_on_a_cluster(cluster_settings: kvfast.Settings, tables: Conn) -> None:
    with kvfast.Repository(Pair, cluster_settings) as repo:
        repo.create_many([Pair(d, f"r:{i}", i) for d in range(3) for i in range(40)])
        repo.delete((1, "r:5"))
        drain(cluster_settings)
        assert repo.get_by_id((2, "r:7")) == Pair(2, "r:7", 7)
    count = tables.execute("SELECT count(*) FROM cl_pairs").fetchone()
    assert count == (119,)


def test_a_bad_record_writes_nothing_on_any_node(cluster_settings: kvfast.Settings,
                                                 rc: RedisCluster) -> None:
    with kvfast.Repository(Ride, cluster_settings) as repo:
        with pytest.raises(kvfast.ValidationError) as err:
            repo.create_many([*(Ride(i, "ok") for i in range(100)), Ride(7, None)])  # type: ignore[arg-type]
        assert err.value.field == "status"
        with pytest.raises(kvfast.ValidationError) as err:
            repo.create_many([Ride(1, "ok"), Ride("x", "bad key")])  # type: ignore[arg-type]
        assert err.value.field == "id"
    counts = keys_per_master(rc)
    # only the meta hash kvfast writes at its first start-up check
    assert sum(counts.values()) <= 1, counts


def test_a_supervisor_drains_a_cluster(cluster_settings: kvfast.Settings, tables: Conn) -> None:
    from drainprocs import run_supervisor

    with kvfast.Repository(Ride, cluster_settings) as repo:
        repo.create_many([Ride(i, "new") for i in range(2000)])
        repo.update_many({i: {"fare": i} for i in range(0, 2000, 3)})
    code, out = run_supervisor(cluster_settings, "--drain-until-empty", workers=2,
                               models=("test_cluster",), timeout=120)
    assert code == 0, out[-3000:]
    rows = tables.execute("SELECT count(*), count(fare) FROM cl_rides").fetchone()
    assert rows == (2000, 667)


def test_the_dead_letter_tool_counts_on_a_cluster(cluster_settings: kvfast.Settings,
                                                  tables: Conn,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tables.execute("ALTER TABLE cl_rides ADD CONSTRAINT fare_ok CHECK (fare >= 0)")
    with kvfast.Repository(Ride, cluster_settings) as repo:
        repo.create_many([Ride(1, "a", fare=-1), Ride(2, "b", fare=2)])
    drain(cluster_settings)
    args = ["--redis-url", cluster_settings.redis_url,
            "--partitions", str(cluster_settings.partitions)]
    assert deadletter.main([*args, "count"]) == 0
    assert "total: 1" in capsys.readouterr().out
    assert deadletter.main([*args, "list"]) == 0
    assert "cl_rides" in capsys.readouterr().out


def _metrics(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    return {name: float(value) for line in body.splitlines() if line and line[0] != "#"
            for name, value in [line.rsplit(" ", 1)]}


def _health(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_supervisor_reports_a_cluster_backlog(cluster_settings: kvfast.Settings,
                                                  rc: RedisCluster, tables: Conn) -> None:
    """The status line, /metrics and /healthz of a supervisor on a cluster count every
    master's queues, in-flight batches and dead letters: with the table locked
    the queue depth equals what the test counts on every node; once it is
    released, everything is drained but the row PostgreSQL refuses."""
    import socket

    from drainprocs import start_supervisor

    tables.execute("ALTER TABLE cl_rides ADD CONSTRAINT fare_ok CHECK (fare >= 0)")
    with kvfast.Repository(Ride, cluster_settings) as repo:
        repo.create_many([Ride(i, "new", fare=i) for i in range(2000)])
        repo.create(Ride(5000, "bad", fare=-1))
        queues = [repo.client.keys.queues[p] for p in range(cluster_settings.partitions)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def wait_for(check: Any, what: str) -> dict[str, float]:
        deadline = time.monotonic() + 60
        while True:  # a wait-loop guard, not a timing check
            try:
                got = _metrics(port)
                if check(got):
                    return got
            except OSError:
                got = {}
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: {got}\n{sup.output()[-3000:]}")
            time.sleep(0.1)

    assert cluster_settings.pg_dsn
    with psycopg.connect(cluster_settings.pg_dsn) as locker:
        locker.execute("LOCK TABLE cl_rides IN ACCESS EXCLUSIVE MODE")
        with start_supervisor(cluster_settings, "--metrics-port", str(port),
                              "--status-interval", "0.2", workers=2,
                              models=("test_cluster",)) as sup:
            # the drainers claim (partitions in flight) and block on the lock: the
            # backlog stops moving, the metrics then say what every node holds
            def settled(m: dict[str, float]) -> bool:
                nonlocal queued
                queued = sum(int(rc.llen(q)) for q in queues)  # on the node of each queue
                return (m.get("kvfast_inflight_batches", 0) > 0
                        and m.get("kvfast_queue_depth") == queued)

            queued = -1
            got = wait_for(settled, "queue depth as counted on the nodes")
            assert 0 < queued < 2001 and got["kvfast_drainers_alive"] == 2
            inflight = int(got["kvfast_inflight_batches"])
            assert inflight == sum(int(rc.exists(repo.client.keys.inflight_meta[p]))
                                   for p in range(cluster_settings.partitions))
            assert _health(port) == (200, "ok: 2/2 drainers\n")
            locker.rollback()  # the drainers go on
            got = wait_for(lambda m: m.get("kvfast_rows_drained_total") == 2000
                           and m.get("kvfast_dead_letters") == 1
                           and m.get("kvfast_queue_depth") == 0
                           and m.get("kvfast_inflight_batches") == 0, "all drained")
            assert got["kvfast_dead_lettered_total"] == 1
            sup.send(signal.SIGTERM)
            assert sup.wait(60) == 0
            out = sup.output()
    assert f"queued {queued:,} | in flight {inflight}" in out, out[-3000:]
    assert "dead letters 1" in out, out[-3000:]
    assert tables.execute("SELECT count(*) FROM cl_rides").fetchone() == (2000,)


def test_the_async_repository_on_a_cluster(cluster_settings: kvfast.Settings,
                                           rc: RedisCluster, tables: Conn) -> None:
    """kvfast.aio routes as the sync client does: writes split by partition to every
    master, reads and updates by slot, find merged with PostgreSQL; then the drain."""
    async def go() -> tuple[list[Ride | None], list[int]]:
        async with await kvfast.aio.AsyncRepository.open(Ride, cluster_settings) as repo:
            assert await repo.create_many([Ride(i, "new", fare=i) for i in range(300)]) == 300
            await repo.update_many({i: {"status": "on trip"} for i in range(0, 300, 7)})
            assert await repo.delete_many(list(range(0, 300, 11))) == 28
            got = await repo.get_many(range(301))
        async with await kvfast.aio.AsyncRepository.open(Trip, cluster_settings) as trips:
            await trips.create_many([Trip(i, f"r{i % 3}") for i in range(30)])
            found = [t.id for t in await trips.find(rider="r1")]
        return got, found

    got, found = kvfast.aio.run(go())
    assert all(n > 0 for n in keys_per_master(rc).values()), keys_per_master(rc)
    want = {i: Ride(i, "on trip" if i % 7 == 0 else "new", fare=i) for i in range(300) if i % 11}
    assert {o.id: o for o in got if o is not None} == want and got[300] is None
    assert found == list(range(1, 30, 3))
    drain(cluster_settings)
    rows = tables.execute("SELECT id, status, fare FROM cl_rides ORDER BY id").fetchall()
    assert [Ride(*row) for row in rows] == [want[k] for k in sorted(want)]


def test_a_node_that_stops_answering_gives_a_partial_write(
        cluster_settings: kvfast.Settings, rc: RedisCluster, tables: Conn) -> None:
    """SIGSTOP one master for less than the failover timeout: its blocks time out
    (their outcome is unknown), every other node's blocks are written; the error
    names both sets, and what it calls written is in Redis and drains."""
    quick = dataclasses.replace(cluster_settings, redis_socket_timeout=0.5)
    victim = rc.get_primaries()[0]
    pid = int(victim.redis_connection.info("server")["process_id"])
    rides = [Ride(i, "new") for i in range(300)]
    with kvfast.Repository(Ride, quick) as repo:
        repo.get_by_id(0)  # the start-up check, before the node stops
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(kvfast.PartialWrite) as err:
                repo.create_many(rides)
        finally:
            os.kill(pid, signal.SIGCONT)
        written, unknown = set(err.value.written_keys), set(err.value.unknown_keys)
        assert written and unknown and not written & unknown
        assert written | unknown == set(range(300))
        assert f"{len(written)} of 300 keys were written" in str(err.value)
        time.sleep(0.2)
        got = repo.get_many(sorted(written))
        assert all(o is not None for o in got)
    drain(cluster_settings)
    stored = {r[0] for r in tables.execute("SELECT id FROM cl_rides").fetchall()}
    assert written <= stored  # and the unknown ones: whatever the stopped node applied


def test_a_node_that_stops_answering_gives_a_partial_write_on_aio(
        cluster_settings: kvfast.Settings, rc: RedisCluster, tables: Conn) -> None:
    """The same with kvfast.aio: the stopped node's blocks time out on its connection,
    the other nodes' connections answer; ``PartialWrite`` names both sets."""
    quick = dataclasses.replace(cluster_settings, redis_socket_timeout=0.5)
    victim = rc.get_primaries()[0]
    pid = node_pid(victim.redis_connection)
    rides = [Ride(i, "new") for i in range(300)]

    async def go() -> kvfast.PartialWrite:
        async with await kvfast.aio.AsyncRepository.open(Ride, quick) as repo:
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(kvfast.PartialWrite) as err:
                    await repo.create_many(rides)
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0.2)
            # the broken connection is replaced: the node answers again
            assert await repo.create_many([Ride(1000, "after")]) == 1
            written = sorted(err.value.written_keys)
            assert all(o is not None for o in await repo.get_many(written))
            return err.value

    err = kvfast.aio.run(go())
    written, unknown = set(err.written_keys), set(err.unknown_keys)
    assert written and unknown and not written & unknown
    assert written | unknown == set(range(300))
    assert f"{len(written)} of 300 keys were written" in str(err)
    drain(cluster_settings)
    stored = {r[0] for r in tables.execute("SELECT id FROM cl_rides").fetchall()}
    assert written | {1000} <= stored


# -- WAIT: a write that returned survives a failover ---------------------------------------

def test_wait_replicas_confirms_each_write_on_a_cluster(cluster_settings: kvfast.Settings,
                                                        tables: Conn) -> None:
    waiting = dataclasses.replace(cluster_settings, wait_replicas=1, wait_timeout_ms=2000)
    with kvfast.Repository(Ride, waiting) as repo:  # every master has one replica
        assert repo.create_many([Ride(i, "new") for i in range(200)]) == 200
        repo.update_many({i: {"status": "x"} for i in range(0, 200, 2)})
        assert repo.delete_many([1, 3, 5]) == 3
    waiting2 = dataclasses.replace(waiting, wait_replicas=2, wait_timeout_ms=50)
    with kvfast.Repository(Ride, waiting2) as repo, pytest.raises(kvfast.NotReplicated) as err:
        repo.create_many([Ride(i, "two") for i in range(10)])  # only one replica each
    assert sorted(err.value.keys) == list(range(10))
    assert "1 of the 2 replicas asked for" in str(err.value)


def test_wait_replicas_on_aio_on_a_cluster(cluster_settings: kvfast.Settings,
                                           tables: Conn) -> None:
    waiting = dataclasses.replace(cluster_settings, wait_replicas=1, wait_timeout_ms=2000)
    too_many = dataclasses.replace(waiting, wait_replicas=2, wait_timeout_ms=50)

    async def go() -> None:
        async with await kvfast.aio.AsyncRepository.open(Ride, waiting) as repo:
            assert await repo.create_many([Ride(i, "new") for i in range(100)]) == 100
            await repo.update_many({i: {"status": "x"} for i in range(0, 100, 2)})
            assert await repo.delete_many([1, 3]) == 2
        async with await kvfast.aio.AsyncRepository.open(Ride, too_many) as repo:
            with pytest.raises(kvfast.NotReplicated) as err:
                await repo.create_many([Ride(i, "two") for i in range(10)])
            assert sorted(err.value.keys) == list(range(10))
            with pytest.raises(kvfast.NotReplicated) as err:
                await repo.update(4, status="y")
            assert err.value.keys == [4]
            assert "1 of the 2 replicas asked for" in str(err.value)

    kvfast.aio.run(go())


def cluster_ready(rc: RedisCluster | None = None) -> None:
    """Every node of the test cluster up, and ready for a failover: ``tools/services up
    cluster`` restarts a killed node (it rejoins as a replica) and returns once the
    cluster is ok, every slot served and every replica's link up (its full sync
    done).  A master killed while its replica still syncs is not failed over: its
    slots would stay down and every write to them retry for cluster_retry_ms."""
    import subprocess
    from pathlib import Path

    services = Path(__file__).resolve().parent.parent / "tools" / "services"
    out = subprocess.run([str(services), "up", "cluster"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    if rc is not None:
        refresh_slot_map(rc)


def node_pid(node: redis.Redis) -> int:
    return int(node.info("server")["process_id"])


@pytest.mark.slow
def test_a_master_killed_under_load_loses_no_write_that_returned(
        cluster_settings: kvfast.Settings, rc: RedisCluster, tables: Conn) -> None:
    """kill -9 of a master while a producer writes with wait_replicas=1: its replica
    takes over (cluster-node-timeout 2 s); every write that returned is in
    PostgreSQL at the end, with its last returned value."""
    cluster_ready(rc)
    waiting = dataclasses.replace(cluster_settings, wait_replicas=1, wait_timeout_ms=2000,
                                  redis_socket_timeout=1.0)
    victim = rc.get_primaries()[0]
    pid = node_pid(victim.redis_connection)
    returned: dict[int, int] = {}   # key -> the fare of its last write that returned
    failed = 0
    try:
        with kvfast.Repository(Ride, waiting) as repo:
            started = time.monotonic()
            round_no = returned_after_kill = 0
            killed_at = None
            # by the clock, not a count of rounds: 2 s of writes, the kill, 10 s more
            while time.monotonic() < started + 12:
                round_no += 1
                if killed_at is None and time.monotonic() - started > 2:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                batch = [Ride(k, "new", fare=round_no) for k in range(round_no % 5 * 100,
                                                                      round_no % 5 * 100 + 100)]
                try:
                    repo.create_many(batch)
                except kvfast.PartialWrite as exc:
                    failed += 1
                    for k in exc.written_keys:
                        returned[k] = round_no
                    returned_after_kill += bool(killed_at and exc.written_keys)
                    continue
                except (kvfast.RedisUnavailable, kvfast.NotReplicated):
                    failed += 1
                    continue
                for ride in batch:
                    returned[ride.id] = round_no
                returned_after_kill += bool(killed_at)
            assert killed_at is not None
        cluster_ready()
        drain(cluster_settings)
    finally:
        cluster_ready()
    rows = dict(tables.execute("SELECT id, fare FROM cl_rides").fetchall())
    lost = {k: v for k, v in returned.items() if rows.get(k) is None}
    # A key whose later write did not return may hold that later value: never an older one.
    older = {k: (v, rows[k]) for k, v in returned.items() if k in rows and rows[k] < v}
    assert not lost and not older, (len(lost), dict(list(older.items())[:5]), failed)
    print(f"rounds {round_no}, failed {failed}, keys {len(returned)}, "
          f"calls that wrote after the kill {returned_after_kill}")
    assert returned_after_kill > 0  # the producer kept writing after the failover


@pytest.mark.slow
def test_without_wait_a_failover_loses_at_most_the_last_moment_of_writes(
        cluster_settings: kvfast.Settings, rc: RedisCluster, tables: Conn) -> None:
    """The loss window without ``wait_replicas``, measured: kill -9 of a master while a
    producer creates new keys (every write a key of its own, so a lost one is an
    absent row); once its replica has taken over, the producer keeps writing
    until a deadline.  Replication is asynchronous, so writes the master
    acknowledged in its last moments may be lost: none acknowledged more than
    1 s before the kill may be, nor any after it."""
    cluster_ready(rc)
    quick = dataclasses.replace(cluster_settings, redis_socket_timeout=1.0)
    victim = rc.get_primaries()[0]
    pid = node_pid(victim.redis_connection)
    acked: dict[int, float] = {}  # key -> when the call that wrote it returned
    failed = 0
    next_key = 0
    killed_at = recovered_at = None
    try:
        with kvfast.Repository(Ride, quick) as repo:
            repo.get_by_id(0)  # the start-up check, before the kill
            started = time.monotonic()
            deadline = started + 90  # a bound on the test only; it normally ends in ~10 s
            while time.monotonic() < deadline:
                if killed_at is None and time.monotonic() - started > 2:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                batch = [Ride(k, "new") for k in range(next_key, next_key + 64)]
                next_key += 64
                try:
                    repo.create_many(batch)
                    written = [ride.id for ride in batch]
                except kvfast.PartialWrite as exc:
                    written = list(exc.written_keys)
                except kvfast.RedisUnavailable:
                    written = []
                now = time.monotonic()
                if len(written) < len(batch):
                    failed += 1
                for k in written:
                    acked[k] = now
                if killed_at is not None and recovered_at is None and len(written) == len(batch):
                    recovered_at = now  # the replica took over: every node writes again
                if recovered_at is not None and now - recovered_at > 2:
                    break
        assert killed_at is not None and recovered_at is not None, "no failover before the deadline"
        cluster_ready(rc)
        drain(cluster_settings)
    finally:
        cluster_ready()
    stored = {row[0] for row in tables.execute("SELECT id FROM cl_rides").fetchall()}
    lost = {k: killed_at - t for k, t in acked.items() if k not in stored}  # age at the kill
    before = [k for k, t in acked.items() if t <= killed_at]
    last_second = [k for k, t in acked.items() if killed_at - 1 < t <= killed_at]
    print(f"\nloss window without WAIT: {len(acked)} writes acknowledged ({len(before)} before "
          f"the kill), {failed} calls not (fully) written, failover in "
          f"{recovered_at - killed_at:.1f} s; lost {len(lost)}"
          + (f", acknowledged {min(lost.values()):.3f}-{max(lost.values()):.3f} s before the kill"
             if lost else ""))
    assert len(acked) > len(before) > 0  # writes acknowledged before and after the failover
    # only writes of the last moment before the kill, never older, never later
    assert all(0 <= age <= 1.0 for age in lost.values()), sorted(lost.values())[-5:]
    assert len(lost) <= len(last_second)


@pytest.mark.slow
def test_aio_rides_out_a_master_killed_under_load(
        cluster_settings: kvfast.Settings, rc: RedisCluster, tables: Conn) -> None:
    """kill -9 of a master while kvfast.aio writes new keys with wait_replicas=1: the
    writes to its slots wait for the failover (refused connections re-sent, the
    slot map re-read) and go on; every write that returned is in PostgreSQL.
    (The promoted replica has no replica of its own until the killed node
    rejoins: its writes are applied and raise ``NotReplicated``, not counted as
    returned, but they show that the failover was followed.)"""
    cluster_ready(rc)
    waiting = dataclasses.replace(cluster_settings, wait_replicas=1, wait_timeout_ms=200,
                                  redis_socket_timeout=1.0)
    pid = node_pid(rc.get_primaries()[0].redis_connection)

    async def go() -> tuple[set[int], int, bool]:
        acked: set[int] = set()
        failed = 0
        killed = recovered = None
        async with await kvfast.aio.AsyncRepository.open(Ride, waiting) as repo:
            started = time.monotonic()
            next_key = 0
            while time.monotonic() < started + 90:  # a bound on the test only
                if killed is None and time.monotonic() - started > 2:
                    os.kill(pid, signal.SIGKILL)
                    killed = time.monotonic()
                batch = [Ride(k, "new") for k in range(next_key, next_key + 64)]
                next_key += 64
                served = True  # every node applied its part (replicated or not)
                try:
                    await repo.create_many(batch)
                    written = [ride.id for ride in batch]
                except kvfast.NotReplicated as exc:
                    written = [k for k in (r.id for r in batch) if k not in set(exc.keys)]
                except kvfast.PartialWrite as exc:
                    written, served = list(exc.written_keys), False
                except kvfast.RedisUnavailable:
                    written, served = [], False
                if len(written) < len(batch):
                    failed += 1
                acked.update(written)
                now = time.monotonic()
                if killed is not None and recovered is None and served:
                    recovered = now
                if recovered is not None and now - recovered > 2:
                    break
        return acked, failed, recovered is not None

    try:
        acked, failed, recovered = kvfast.aio.run(go())
        assert recovered, "no failover before the deadline"
        cluster_ready(rc)
        drain(cluster_settings)
    finally:
        cluster_ready()
    stored = {row[0] for row in tables.execute("SELECT id FROM cl_rides").fetchall()}
    print(f"\naio under failover: {len(acked)} writes returned, {failed} calls not (fully) "
          f"written, {len(acked - stored)} lost")
    assert acked and acked <= stored


def test_a_slot_down_for_good_fails_within_the_retry_budget(
        cluster_settings: kvfast.Settings, rc: RedisCluster, tables: Conn) -> None:
    """A master killed while its replica is stopped (no failover possible): a write to
    its slots stops re-sending once ``cluster_retry_ms`` is spent, with
    ``PartialWrite`` (the other nodes' keys written, the dead node's not: its
    connections were refused, nothing was sent) or, once the cluster itself
    says CLUSTERDOWN, ``RedisUnavailable``; either says how many attempts were made."""
    import re

    cluster_ready(rc)
    victim = rc.get_primaries()[0]
    replica_port = int(victim.redis_connection.info("replication")["slave0"]["port"])
    with redis.Redis(port=replica_port) as replica:
        replica_pid = node_pid(replica)
    pid = node_pid(victim.redis_connection)
    rides = [Ride(i, "new") for i in range(200)]
    attempts: dict[int, list[int]] = {}
    try:
        with kvfast.Repository(Ride, cluster_settings) as repo:
            repo.get_by_id(0)  # the start-up check, before the kill
            on_victim = {r.id for r in rides if rc.nodes_manager.get_node_from_slot(
                rc.keyslot(repo.producer.locate(r.id)[2])).name == victim.name}
            assert 0 < len(on_victim) < len(rides)
            os.kill(replica_pid, signal.SIGSTOP)
            os.kill(pid, signal.SIGKILL)
            # The first call finds the pooled connection to the killed node: its send
            # went into the socket before the reset came, so its outcome is unknown.
            repo.client.topology.retry_ms = 0  # type: ignore[union-attr]
            with pytest.raises((kvfast.PartialWrite, kvfast.RedisUnavailable)):
                repo.create_many(rides)
            for budget in (0, 300):
                repo.client.topology.retry_ms = budget  # type: ignore[union-attr]
                with pytest.raises((kvfast.PartialWrite, kvfast.RedisUnavailable)) as err:
                    repo.create_many(rides)
                if isinstance(err.value, kvfast.PartialWrite):
                    assert not err.value.unknown_keys  # refused connections: nothing sent
                    assert set(err.value.written_keys) == {r.id for r in rides} - on_victim
                attempts[budget] = [int(n) for n in re.findall(r"after (\d+) attempts",
                                                               str(err.value))]
                assert f"cluster_retry_ms={budget}" in str(err.value)
    finally:
        os.kill(replica_pid, signal.SIGCONT)  # it takes over; the killed node rejoins
        cluster_ready()
    # no retry without a budget; with 300 ms, the pauses 10+50+100 ms fit, 250 more do not
    assert attempts[0] == [1], attempts
    assert attempts[300] and all(2 <= n <= 4 for n in attempts[300]), attempts


def test_find_on_a_cluster(cluster_settings: kvfast.Settings, rc: RedisCluster,
                           tables: Conn) -> None:
    """Index sets are written per slot; find routes its SINTERs and reads by slot and
    merges PostgreSQL's rows exactly as on one Redis."""
    pg = tables
    with kvfast.Repository(Trip, cluster_settings) as repo:
        repo.create_many([Trip(i, f"r{i % 3}") for i in range(60)])
        sets = [k for k in rc.scan_iter(match="*:x:cl_trips:*", target_nodes=rc.PRIMARIES)]
        assert len({rc.keyslot(k) for k in sets}) > 3  # sets of many slots, on every node
        drain(cluster_settings)
        repo.update(4, rider="r9")       # moved, not drained
        repo.delete(7)                   # deleted, not drained
        pg.execute("INSERT INTO cl_trips VALUES (100, 'r1')")  # only in PostgreSQL
        want = sorted([i for i in range(60) if i % 3 == 1 and i not in (4, 7)] + [100])
        assert [t.id for t in repo.find(rider="r1")] == want
        assert [t.id for t in repo.find(rider="r9")] == [4]
    drain(cluster_settings)
    assert pg.execute("SELECT count(*) FROM cl_trips WHERE rider = 'r9'").fetchone() == (1,)


def _reshard(src: str, dst: str, slots: int) -> None:
    import subprocess

    out = subprocess.run(
        ["redis-cli", "--cluster", "reshard", src.replace("localhost", "127.0.0.1"),
         "--cluster-from", _node_id(src), "--cluster-to", _node_id(dst),
         "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "100"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def _node_id(name: str) -> str:
    import redis as _redis

    host, port = name.rsplit(":", 1)
    with _redis.Redis(host=host, port=int(port)) as node:
        return str(node.execute_command("CLUSTER", "MYID").decode())


@pytest.mark.slow
def test_slots_resharded_under_load_lose_and_reorder_nothing(
        cluster_settings: kvfast.Settings, rc: RedisCluster, tables: Conn) -> None:
    """``redis-cli --cluster reshard`` moves 4,000 slots (most partitions of one
    master) while a producer writes and a drainer drains: both follow the slots
    without a restart; at the end PostgreSQL holds every key's last value."""
    import threading

    cluster_ready(rc)
    masters = [n.name for n in rc.get_primaries()]
    src, dst = masters[0], masters[1]
    stop = threading.Event()
    last: dict[int, int] = {}
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with kvfast.Repository(Ride, cluster_settings) as repo:
                round_no = 0
                while not stop.is_set():
                    round_no += 1
                    batch = [Ride(k, "new", fare=round_no) for k in range(0, 600, 1)]
                    repo.create_many(batch)
                    for ride in batch:
                        last[ride.id] = round_no
                    repo.update_many({k: {"fare": round_no * 10} for k in range(0, 600, 7)})
                    for k in range(0, 600, 7):
                        last[k] = round_no * 10
        except BaseException as exc:
            errors.append(exc)

    def drain_loop() -> None:
        try:
            drainer = Drainer(cluster_settings)
            try:
                while not stop.is_set():
                    claim = drainer.claim()
                    if claim is not None:
                        drainer.process(claim)
                    else:
                        time.sleep(0.02)
            finally:
                drainer.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce), threading.Thread(target=drain_loop)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        _reshard(src, dst, 4000)
        time.sleep(0.5)
        _reshard(dst, src, 4000)  # and back: the other tests expect the even layout
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    drain(cluster_settings)
    rows = dict(tables.execute("SELECT id, fare FROM cl_rides").fetchall())
    assert rows == last


def test_two_supervisors_share_one_cluster(cluster_settings: kvfast.Settings,
                                           tables: Conn) -> None:
    """Two supervisors drain the same cluster at once: each takes a share, together
    exactly once (the claims lease each partition to one drainer at a time)."""
    import re

    from drainprocs import start_supervisor

    with kvfast.Repository(Ride, cluster_settings) as repo:
        for start in range(0, 6000, 2000):
            repo.create_many([Ride(i, "new", fare=i) for i in range(start, start + 2000)])
    sups = [start_supervisor(cluster_settings, "--drain-until-empty", workers=2,
                             models=("test_cluster",)) for _ in range(2)]
    outs = []
    for sup in sups:
        with sup:
            assert sup.wait(120) == 0, sup.output()[-3000:]
            outs.append(sup.output())
    shares = [int(m.group(1)) for out in outs
              for m in [re.search(r"stopped: (\d+) rows drained", out)] if m]
    assert tables.execute("SELECT count(*), sum(fare) FROM cl_rides").fetchone() == (
        6000, sum(range(6000)))
    assert len(shares) == 2 and sum(shares) == 6000, shares  # each reports its own share


def test_the_demo_runs_on_a_cluster(cluster_settings: kvfast.Settings, tables: Conn) -> None:
    """tools/demo.py (producers, a supervisor, the Redis/PostgreSQL comparison over every
    master) against the cluster: everything drained, PostgreSQL equals Redis."""
    import subprocess
    import sys
    from pathlib import Path

    assert cluster_settings.pg_dsn
    demo = Path(__file__).resolve().parent.parent / "tools" / "demo.py"
    env = dict(os.environ, KVFAST_REDIS_URL=cluster_settings.redis_url,
               KVFAST_PG_DSN=cluster_settings.pg_dsn)
    out = subprocess.run([sys.executable, str(demo), "--writes", "4000", "--producers", "1",
                          "--workers", "2"], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "result              OK: PostgreSQL equals Redis" in out.stdout, out.stdout[-3000:]
    assert "dead letters        0" in out.stdout
