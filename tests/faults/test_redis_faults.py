"""Redis restarted under the producers and the drainers (scenario 5).

Redis is kvfast's first store: a write is acknowledged once Redis applied it, and
it is as durable as Redis makes it.  What a restart can lose:

* **No persistence** (``appendonly no``, no RDB save points; the default of
  ``tools/services``' development server): everything not yet drained.  The
  objects, the queues and the in-flight batches live only in memory, so a crash
  or restart loses every write still queued (at most the queue depth: with the
  default 100 ms drain interval and a keeping-up drainer, typically well under a
  second of writes; during a PostgreSQL outage, the whole outage's writes) and
  every object whose TTL-less copy was the only one (all of Redis, in fact:
  reads fall back to PostgreSQL for the drained ones).  The drainers' epoch
  counters start again at 1; ``rebase.lua`` moves them past PostgreSQL's fence.
* **AOF with ``appendfsync everysec``**: Redis write()s every command to the AOF
  before it replies, and fsyncs once a second.  A clean ``SHUTDOWN`` fsyncs
  first: nothing is lost (``test_redis_shut_down_and_restarted_mid_drain``).  A
  crash of the redis-server process alone (kill -9, OOM killer) loses nothing
  acknowledged either: the data is in the OS page cache.  An OS crash or power
  loss loses the last ~1 s (up to 2 s when the disk lags) of writes: producer
  writes acknowledged in that second, and the drainers' claims and acks of that
  second, which are redone (``test_redis_crash_loses_the_last_second...``).  A
  lost producer write may already have been drained: PostgreSQL then has a row
  (or a value) Redis no longer has.
* **AOF with ``appendfsync always``**: nothing acknowledged is lost, at a large
  cost in write throughput.

Producers get ``kvfast.RedisUnavailable`` while Redis is away and retry; the
drainers retry with backoff by themselves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import (
    inflight_key,
    inflight_meta_key,
    keys_in_partition,
    pg_objects,
    queue_key,
    ride,
)
from drainkeys import tag
from drainmodels import DRide

import kvfast
from kvfast.drainer import Drainer

from .checks import (
    dead_docs,
    drained_counter,
    drainer_deaths,
    entry_of,
    final_check,
    log_lines,
    report,
    stats_json,
)
from .load import Load, create_load_tables
from .servers import AOF_REDIS_PORT, FaultServers, RedisProcess, fault_settings
from .supervise import (
    stop_supervisor,
    supervised_load,
    supervisor,
    wait_drain_started,
    wait_drained,
    wait_for,
)

AOF = ("--appendonly", "yes", "--appendfsync", "everysec")


def _queued(r: redis.Redis, settings: kvfast.Settings) -> int:
    pipe = r.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.llen(queue_key(settings, p))
    return sum(pipe.execute())


@pytest.mark.slow
def test_redis_shut_down_and_restarted_mid_drain(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """SHUTDOWN (AOF flushed) and a restart 3 s later, while two producers write and
    three drainers drain: producers retry on RedisUnavailable, drainers reconnect,
    the scripts are reloaded (NOSCRIPT), and the result converges exactly."""
    create_load_tables(fpg)
    server = RedisProcess(AOF_REDIS_PORT, tmp_path / "redis", *AOF)
    server.start()
    settings = fault_settings(fault_servers, redis_url=server.url)
    stats_path = tmp_path / "stats.json"
    r = server.client()
    try:
        with supervised_load(settings, stats_path, 2, 10**9, seed=5, keys=1000,
                             stop_file=str(tmp_path / "stop"), rate_each=3000) as (sup, load):
            wait_drain_started(r, settings, sup, 8_000)
            assert not load.done()
            down_at = time.monotonic()
            server.shutdown()
            r.close()
            time.sleep(3.0)
            server.start()
            outage = time.monotonic() - down_at
            before = drained_counter(r, settings)
            resumed = wait_for(lambda: drained_counter(r, settings) > before, 60,
                               "the drain to resume", lambda: sup.output()[-3000:])
            time.sleep(2.0)  # the producers go on writing after the restart
            load.stop()
            produced = load.result()
            caught_up = wait_drained(r, settings, sup)
            assert sup.proc.poll() is None
            out = stop_supervisor(sup)
        assert produced["retries"] > 0, "the producers never saw Redis go away"
        deaths, loading_deaths, keepers_lost = drainer_deaths(out)
        assert deaths + keepers_lost <= loading_deaths, out[-3000:]
        stats = stats_json(stats_path)
        figures = final_check(r, fpg, settings, produced=produced["entries"],
                              uncertain=produced["uncertain"])
        assert figures["dead"] == 0
    finally:
        r.close()
        server.stop()
    report("5a Redis SHUTDOWN + restart (AOF)", writes=produced["entries"], outage_s=outage,
           producer_retries=produced["retries"], loading_errors=produced["loading_errors"],
           uncertain_entries=produced["uncertain"], drainer_deaths_by_loading=deaths,
           keeper_threads_lost=keepers_lost,
           resumed_after_s=resumed, drained_after_restart_s=caught_up,
           retaken=stats["retaken"], rows=figures["rows"])


def _incr_aof(server: RedisProcess) -> Path:
    """The AOF file Redis appends to (Redis 7 multi-part AOF: the newest *.incr.aof)."""
    files = sorted((server.dir / "appendonlydir").glob("*.incr.aof"),
                   key=lambda f: int(f.name.split(".")[-3]))
    assert files, f"no incr AOF in {server.dir}"
    return files[-1]


@pytest.mark.slow
def test_redis_crash_loses_the_last_second_of_drain_state(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """An OS crash under Redis (AOF, fsync every second): the drain state of the
    last second never reached the disk.  Simulated by killing redis-server
    (kill -9) and cutting its AOF back to its size one second earlier, in the
    middle of the drain of a backlog written (and fsynced) before.  The claims and
    acks of that second are lost: their batches come back (in flight with an
    expired lease, or in the queue), epochs already seen by PostgreSQL's fence are
    handed out again and moved past it (rebase.lua), and what Redis persisted is
    drained exactly once as far as the counters go, with PostgreSQL == Redis."""
    create_load_tables(fpg)
    server = RedisProcess(AOF_REDIS_PORT, tmp_path / "redis", *AOF,
                          "--auto-aof-rewrite-percentage", "0")
    server.start()
    settings = fault_settings(fault_servers, redis_url=server.url)
    stats_path = tmp_path / "stats.json"
    r = server.client()
    try:
        with Load(settings, 2, 30_000, seed=55, keys=1000) as load:
            produced = load.result()
        time.sleep(2.5)  # everysec: every acknowledged write is on disk now
        total = produced["entries"]
        with supervisor(settings, "--stats-json", str(stats_path), "--batch-size", "500",
                        workers=2) as sup:
            sup.wait_drainers(2)
            wait_for(lambda: drained_counter(r, settings) > total // 4, 120,
                     "a quarter of the backlog to drain", lambda: sup.output()[-3000:])
            aof = _incr_aof(server)
            synced_size = aof.stat().st_size
            drained_synced = drained_counter(r, settings)
            # The crash comes up to a second later (sooner if half the backlog is done).
            synced_at = time.monotonic()
            while (time.monotonic() - synced_at < 1.0
                   and drained_counter(r, settings) < total // 2):
                time.sleep(0.02)
            drained_at_crash = drained_counter(r, settings)
            assert _queued(r, settings) > 0, "the backlog drained before the crash"
            down_at = time.monotonic()
            server.kill()
            r.close()
            lost_bytes = aof.stat().st_size - synced_size
            with aof.open("r+b") as fh:  # the page cache's unsynced tail is gone
                fh.truncate(synced_size)
            server.start()
            outage = time.monotonic() - down_at
            drained_after_restart = drained_counter(r, settings)
            caught_up = wait_drained(r, settings, sup)
            out = stop_supervisor(sup)
        assert drained_after_restart < drained_at_crash, "the crash lost no drain progress"
        deaths, loading_deaths, keepers_lost = drainer_deaths(out)
        assert deaths + keepers_lost <= loading_deaths, out[-3000:]
        stats = stats_json(stats_path)
        figures = final_check(r, fpg, settings, produced=total)
        # Batches replayed after the rollback can hold an update of a row that a
        # later entry (applied before the crash) deleted: PostgreSQL no longer has
        # the row, so that update is dead-lettered.  The final data is right (the
        # delete is replayed too); these dead letters are spurious, and only these.
        replayed = dead_docs(r, settings)
        for doc in replayed:
            assert doc["error"] == "update of a row that is not in PostgreSQL", doc
            assert entry_of(doc)["o"] == "u", doc
    finally:
        r.close()
        server.stop()
    report("5b Redis OS-crash (AOF everysec, last 1 s lost)", writes=total, outage_s=outage,
           aof_bytes_lost=lost_bytes, drained_synced=drained_synced,
           drained_at_crash=drained_at_crash, drained_after_restart=drained_after_restart,
           acks_lost=drained_at_crash - drained_after_restart,
           rebases=len(log_lines(out, "Redis was reset?")), retaken=stats["retaken"],
           stale=stats["stale"], spurious_dead=len(replayed), drainer_deaths_by_loading=deaths,
           keeper_threads_lost=keepers_lost,
           drained_after_restart_s=caught_up,
           rows=figures["rows"])


def test_redis_still_loading_is_reported_as_unavailable(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A restarted Redis answers ``LOADING`` until its data set is in memory.  That is
    Redis being unavailable for a moment, like a refused connection: producers
    and drainers must get ``RedisUnavailable`` (the error producers retry on and
    drainers back off on), not a bare ``KvfastError`` that reads like a refused
    command (and that a drainer does not catch: it dies).

    Fails today for create/update/delete and the drainer's claim: their replies
    come back through kvfast's own reply parser (``Client.execute``), and
    ``WriteBuilder.check_block_replies`` / ``scripts.EvalBatch.take`` turn every
    error reply, LOADING included, into ``KvfastError``.
    """
    server = RedisProcess(AOF_REDIS_PORT, tmp_path / "redis", *AOF)
    server.start()
    settings = fault_settings(fault_servers, redis_url=server.url, pg_dsn=None)
    admin = server.client()
    try:
        drainer = Drainer(settings)
        with kvfast.Repository(DRide, settings) as rides:
            rides.create_many(ride(k) for k in range(1, 301))
            drainer.client.check_partitions()  # a drainer that was running before
            _rewrite_aof(admin)  # the data set goes into the AOF's RDB base ...
            admin.close()
            server.shutdown()
            # ... which the restarted Redis loads slowly (20 ms a key, ~6 s), answering
            # LOADING meanwhile (it serves clients every KB it loads).
            server.start("--key-load-delay", "20000",
                         "--loading-process-events-interval-bytes", "1024", wait=False)
            probe = server.client()
            try:
                wait_for(lambda: _loading(probe), 10, "Redis to be loading")
                outcomes: dict[str, str] = {}
                for name, call in (
                    ("create", lambda: rides.create(ride(1000))),
                    ("update", lambda: rides.update(1, counter=5)),
                    ("delete", lambda: rides.delete(2)),
                    ("get_by_id", lambda: rides.get_by_id(3)),
                    ("drainer claim", drainer.claim),
                ):
                    try:
                        call()
                        outcomes[name] = "no error"
                    except kvfast.KvfastError as exc:
                        outcomes[name] = type(exc).__name__
                still_loading = _loading(probe)
            finally:
                probe.close()
                drainer.close()
        assert still_loading, "Redis finished loading before the calls: inconclusive"
        assert outcomes == dict.fromkeys(outcomes, "RedisUnavailable"), outcomes
    finally:
        admin.close()
        server.stop()


@pytest.mark.slow
def test_running_drainers_survive_a_redis_that_is_still_loading(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Redis restarts and takes ~8 s to load its data set (a big production Redis
    takes longer); a supervisor that was running meanwhile must back off and
    carry on, not lose its drainers.

    Fails today: every drainer dies on the LOADING reply (``EvalBatch.take``
    raises ``KvfastError``, which ``Drainer.run`` does not catch), is restarted
    and dies again while the load lasts (after 10 deaths in 60 s the supervisor
    gives up: exit 3, "drainers died"); a lease keeper thread that meets LOADING
    dies silently (``claims.LeaseKeeper.run`` catches only connection errors) and its
    drainer's leases are never renewed again.
    """
    create_load_tables(fpg)
    server = RedisProcess(AOF_REDIS_PORT, tmp_path / "redis", *AOF)
    server.start()
    settings = fault_settings(fault_servers, redis_url=server.url)
    admin = server.client()
    try:
        with kvfast.Repository(DRide, settings) as rides:
            rides.create_many(ride(k) for k in range(1, 401))
        with supervisor(settings, workers=3) as sup:
            sup.wait_drainers(3)
            wait_drained(admin, settings, sup)
            _rewrite_aof(admin)
            admin.close()
            server.shutdown()
            server.start("--key-load-delay", "20000",
                         "--loading-process-events-interval-bytes", "1024", wait=False)
            server.wait_ready(60)
            admin = server.client()
            with kvfast.Repository(DRide, settings) as rides:
                rides.update(1, counter=99)
            wait_for(lambda: sup.proc.poll() is not None or
                     fpg.execute("SELECT counter FROM d_rides WHERE id = 1").fetchone() == (99,),
                     60, "the drain after the restart", lambda: sup.output()[-3000:])
            assert sup.proc.poll() is None, f"the supervisor gave up:\n{sup.output()[-3000:]}"
            out = stop_supervisor(sup)
        deaths = log_lines(out, "exited with")
        assert not deaths, deaths
        # Nor may a drainer's lease keeper thread die (its leases would lapse silently).
        assert "Exception in thread" not in out, out[-3000:]
    finally:
        admin.close()
        server.stop()


def _rewrite_aof(admin: redis.Redis) -> None:
    """BGREWRITEAOF, and wait until it is done (after the one a fresh AOF starts with)."""

    def idle() -> bool:
        info = admin.info("persistence")
        return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]

    wait_for(idle, 30, "the first AOF rewrite")
    before = admin.info("persistence")["aof_rewrites"]
    admin.bgrewriteaof()
    wait_for(lambda: idle() and admin.info("persistence")["aof_rewrites"] > before, 30,
             "the AOF rewrite")


def _loading(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.BusyLoadingError:
        return True
    except redis.ConnectionError:
        return False
    return False


def test_a_claim_redis_lost_cannot_overwrite_newer_rows(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings
) -> None:
    """Drainer A claims a batch; Redis crashes before that claim reached its AOF
    (everysec) and restarts without it: the batch is back in the queue and the
    partition's epoch counter is back where it was.  Newer writes follow; drainer B
    claims old + new entries (with the epoch A got: the counter replays) and commits
    them.  A, slower, then commits the old batch it still holds.  The fence must
    refuse A (it no longer owns the batch): otherwise PostgreSQL goes back to the
    older values while Redis keeps the newer ones, for good.

    Fails today: the fence accepts an epoch equal to the stored one
    (``pgcopy.Applier._fence``: ``WHERE epoch <= EXCLUDED.epoch``), and nothing
    checks, under the fence row lock, that Redis still records the committing
    drainer as the batch's owner.
    """
    kvfast.create_tables(fpg, [kvfast.model_info(DRide)])
    p = 0
    keys = keys_in_partition(fsettings, DRide, p, 20)
    names = [queue_key(fsettings, p), inflight_key(fsettings, p),
             inflight_meta_key(fsettings, p), f"{tag(fsettings, p)}:e"]
    with kvfast.Repository(DRide, fsettings) as rides:
        rides.create_many(ride(k, counter=1) for k in keys)
        on_disk = {name: fr.dump(name) for name in names}  # the AOF ends here
        a, b = Drainer(fsettings), Drainer(fsettings)
        try:
            claim_a = a.claim()
            assert claim_a is not None and [x.partition for x in claim_a.parts] == [p]
            # Crash and restart from the AOF: A's claim never happened.
            fr.delete(*names)
            for name, dumped in on_disk.items():
                if dumped is not None:
                    fr.restore(name, 0, dumped)
            rides.update_many({k: {"counter": 2} for k in keys})
            claim_b = b.claim()
            assert claim_b is not None and [x.partition for x in claim_b.parts] == [p]
            assert b.process(claim_b).acked
            assert {o.counter for o in pg_objects(fpg, DRide).values()} == {2}
            late = a.process(claim_a)
        finally:
            a.close()
            b.close()
    assert not late.acked
    counters = {o.counter for o in pg_objects(fpg, DRide).values()}
    assert counters == {2}, (
        f"drainer A (epoch {claim_a.epoch}, claim lost by Redis) overwrote the newer rows "
        f"drainer B (epoch {claim_b.epoch}) had committed: PostgreSQL counters {counters}, "
        "Redis has 2"
    )
