"""Drainer processes that die, freeze, or are stopped with their supervisor.

1. kill -9 of random drainers, again and again, during a 200,000-write load.
2. A drainer frozen (SIGSTOP) past its lease: another drainer takes its batch over,
   and when the frozen one resumes (SIGCONT) its commit is fenced off.
8. SIGTERM to the supervisor during the load, then a new supervisor: nothing in
   flight is lost or applied twice in a way that changes the result.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import busy_partitions, inflight_meta_key, wait_stopped
from drainkeys import tag

import kvfast

from .checks import fence_epochs, final_check, log_lines, report, stats_json
from .load import Load, create_load_tables
from .servers import FaultServers
from .supervise import stop_supervisor, supervised_load, supervisor, wait_drained, wait_for

# The supervisor gives up after more than 10 drainer deaths within 60 s (its
# crash-loop guard, supervisor.CRASH_BUDGET): stay below it.
KILLS_PER_MINUTE = 8


@pytest.mark.slow
def test_drainers_killed_repeatedly_during_200k_writes(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    """kill -9 of one or two random drainers every 1.5-3.5 s (at most 8 a minute, under
    the supervisor's crash-loop guard) while two producers write 200,000+ entries and
    while the backlog drains.  The supervisor restarts every one, the batches they
    held are handed out again once their lease ran out, and the result is exact:
    PostgreSQL == Redis and every queued entry acked once."""
    create_load_tables(fpg)
    rng = random.Random(1)
    stats_path = tmp_path / "stats.json"
    kills: list[float] = []
    victims: list[int] = []
    started = time.monotonic()
    with (
        supervisor(fsettings, "--stats-json", str(stats_path), "--status-interval", "2",
                   workers=3) as sup,
        # ~30 s of load (2 x 3,400 entries/s) on any machine: time for ~10 kills.
        Load(fsettings, 2, 101_000, seed=1, keys=2000, rate_each=3400) as load,
    ):
        sup.wait_drainers(3)
        # Kill while the producers write and while the backlog drains.
        while not (load.done() and _queued(fr, fsettings) < 5000):
            time.sleep(rng.uniform(1.5, 3.5))
            now = time.monotonic()
            if len([t for t in kills if t > now - 60]) >= KILLS_PER_MINUTE:
                continue
            live = sup.wait_drainers(3, exclude=victims)
            for pid in rng.sample(live, 2 if rng.random() < 0.25 else 1):
                os.kill(pid, signal.SIGKILL)
                victims.append(pid)
                kills.append(time.monotonic())
            assert sup.proc.poll() is None, sup.output()[-3000:]
        produced = load.result()
        recovered = wait_drained(fr, fsettings, sup, timeout=240)
        out = stop_supervisor(sup)
    elapsed = time.monotonic() - started
    stats = stats_json(stats_path)
    assert produced["entries"] >= 200_000
    assert len(kills) >= 6, "the load ended before the drainers were killed repeatedly"
    # Every kill was seen and answered with a restart; none tripped the crash guard.
    assert len(log_lines(out, "exited with -9")) == len(kills), out[-3000:]
    assert "drainers died" not in out
    # Killed mid-batch: their batches were handed out again after the lease ran out.
    assert stats["retaken"] >= 1, stats
    figures = final_check(fr, fpg, fsettings, produced=produced["entries"])
    assert figures["dead"] == 0
    report("1 kill -9 drainers", writes=produced["entries"], kills=len(kills),
           retaken=stats["retaken"], rows=figures["rows"], dead=figures["dead"],
           drain_after_load_s=recovered, total_s=elapsed)


def _queued(r: redis.Redis, settings: kvfast.Settings) -> int:
    pipe = r.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.llen(f"{tag(settings, p)}:q")
    return sum(pipe.execute())


# -- 2. a drainer frozen past its lease ---------------------------------------------------------


def _held_batch(r: redis.Redis, settings: kvfast.Settings, pid: int) -> tuple[int, int] | None:
    """(partition, epoch) of the batch the drainer with ``pid`` holds in flight, if any."""
    needle = f":{pid}:".encode()
    for p in range(settings.partitions):
        owner, epoch = r.hmget(inflight_meta_key(settings, p), "owner", "epoch")
        if owner is not None and needle in owner and epoch is not None:
            return p, int(epoch)
    return None


def _pg_sessions_of(pg: psycopg.Connection[Any], pid: int, pg_port: int) -> list[str]:
    """The pg_stat_activity states of the PostgreSQL sessions held by process ``pid``."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                cols = line.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == pg_port:
                    ports.append(int(local.rsplit(":", 1)[1], 16))
    if not ports:
        return []
    rows = pg.execute("SELECT state FROM pg_stat_activity WHERE client_port = ANY(%s)",
                      (ports,)).fetchall()
    return [str(state) for (state,) in rows]


@pytest.mark.slow
def test_frozen_drainer_loses_its_batch_and_its_commit_is_fenced_off(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any],
    fsettings: kvfast.Settings, tmp_path: Path,
) -> None:
    """SIGSTOP a drainer that holds a batch and has not started its transaction (so
    the test knows its commit is still to come); once the lease ran out another
    drainer takes the batch over and commits it; SIGCONT: the resumed drainer's
    transaction is refused by the fence row (StaleEpoch), it does not ack, and
    the batch is applied exactly once as far as the result goes."""
    create_load_tables(fpg)
    rng = random.Random(2)
    stats_path = tmp_path / "stats.json"
    with supervised_load(fsettings, stats_path, 2, 10**9, seed=2, keys=1000,
                         stop_file=str(tmp_path / "stop"), rate_each=3000) as (sup, load):
        wait_for(lambda: fr.exists(*[inflight_meta_key(fsettings, p)
                                     for p in range(fsettings.partitions)]) > 0, 60,
                 "a batch in flight", lambda: sup.output()[-3000:])
        frozen: tuple[int, int, int] | None = None
        attempts = 0
        while frozen is None:
            attempts += 1
            assert attempts < 400, "never caught a drainer between claim and transaction"
            pid = rng.choice(sup.wait_drainers(3))
            os.kill(pid, signal.SIGSTOP)
            wait_stopped(pid)
            time.sleep(0.1)  # an ack it had sent reaches Redis meanwhile
            held = _held_batch(fr, fsettings, pid)
            if held is not None:
                p, epoch = held
                fence = fence_epochs(fpg, fsettings).get(p, 0)
                states = _pg_sessions_of(fpg, pid, fault_servers.pg_port)
                if fence < epoch and all(s == "idle" for s in states):
                    frozen = (pid, p, epoch)
                    break
            os.kill(pid, signal.SIGCONT)
            time.sleep(rng.uniform(0.02, 0.2))
        pid, p, epoch = frozen
        frozen_at = time.monotonic()
        # Another drainer takes the batch over once the lease expired, and commits it.
        wait_for(lambda: int(fr.hget(inflight_meta_key(fsettings, p), "epoch") or 0) != epoch,
                 30, f"partition {p} to be taken over", lambda: sup.output()[-3000:])
        taken_over = time.monotonic() - frozen_at
        wait_for(lambda: fence_epochs(fpg, fsettings).get(p, 0) > epoch, 30,
                 f"the new owner of partition {p} to commit", lambda: sup.output()[-3000:])
        fences_before = fence_epochs(fpg, fsettings)
        seen = len(sup.output())
        os.kill(pid, signal.SIGCONT)
        fenced = f"partition {p} epoch {epoch} is stale"
        lost = f"lost the lease of partition {p}"
        wait_for(lambda: fenced in sup.output()[seen:] or lost in sup.output()[seen:], 30,
                 "the resumed drainer to give its batch up", lambda: sup.output()[-3000:])
        load.stop()
        produced = load.result()
        wait_drained(fr, fsettings, sup)
        out = stop_supervisor(sup)
    stats = stats_json(stats_path)
    assert stats["stale"] >= 1 and stats["retaken"] >= 1, stats
    assert "exited with" not in out
    fences_after = fence_epochs(fpg, fsettings)
    assert fences_after[p] > epoch and all(fences_after[q] >= e for q, e in fences_before.items())
    figures = final_check(fr, fpg, fsettings, produced=produced["entries"])
    report("2 SIGSTOP past the lease", writes=produced["entries"], freeze_attempts=attempts,
           partition=p, frozen_epoch=epoch, fence_after=fences_after[p],
           taken_over_after_s=taken_over, stale=stats["stale"], retaken=stats["retaken"],
           fence_line=any(fenced in line for line in out.splitlines()), dead=figures["dead"])


# -- 8. SIGTERM to the supervisor, then a new one ------------------------------------------------


@pytest.mark.slow
def test_supervisor_stopped_and_restarted_during_the_load(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    """Four supervisors one after the other while two producers write: three warm
    stops (SIGTERM: every batch in flight is finished and acked, nothing is left
    in flight) and one hard stop (SIGTERM twice: drainers killed mid-batch; the
    next supervisor takes their batches over once the lease ran out)."""
    create_load_tables(fpg)
    cycles: list[dict[str, Any]] = []
    orphans: dict[int, bytes | None] = {}  # partition -> epoch left in flight by the hard stop
    with Load(fsettings, 2, 10**9, seed=8, keys=1000, stop_file=str(tmp_path / "stop"),
              rate_each=3000) as load:
        for cycle in range(4):
            hard = cycle == 2
            before = _drained(fr, fsettings)
            with supervisor(fsettings, workers=3) as sup:
                sup.wait_drainers(3)
                wait_for(lambda b=before: _drained(fr, fsettings) > b + 2000, 120,
                         "progress", lambda s=sup: s.output()[-3000:])
                # The hard stop's batches are taken over once their lease ran out.
                wait_for(lambda: all(fr.hget(inflight_meta_key(fsettings, p), "epoch") != e
                                     for p, e in orphans.items()), 60,
                         "the batches left in flight to be taken over",
                         lambda s=sup: s.output()[-3000:])
                orphans.clear()
                if hard:
                    # Hold the drainers inside their transactions (a table lock), so
                    # the second signal kills them with their batches in flight.
                    with psycopg.connect(fsettings.pg_dsn or "") as locker:
                        locker.execute("LOCK TABLE d_rides IN ACCESS EXCLUSIVE MODE")
                        wait_for(lambda: _lock_waiters(fpg) > 0, 60, "a drainer in a lock wait",
                                 lambda s=sup: s.output()[-3000:])
                        sup.send(signal.SIGTERM)
                        time.sleep(0.5)
                        sup.send(signal.SIGTERM)
                        code = sup.wait(60)
                        locker.rollback()
                    out = sup.output()
                    assert code == 1 and "second signal" in out, out[-3000:]
                else:
                    out = stop_supervisor(sup)
            busy = busy_partitions(fr, fsettings)
            left = len(busy["inflight_meta"])
            if hard:
                assert left >= 1, "the hard stop left no batch in flight"
                orphans.update({p: fr.hget(inflight_meta_key(fsettings, p), "epoch")
                                for p in busy["inflight_meta"]})
            else:
                assert not busy["inflight"] and not busy["inflight_meta"], (busy, out[-3000:])
                assert "finishing the batches in flight" in out and "stopped:" in out
            cycles.append({"cycle": cycle, "hard": hard, "inflight_left": left,
                           "drained": _drained(fr, fsettings) - before})
            assert not load.done(), "the load ended before the last restart"
        load.stop()
        produced = load.result()
    # The last supervisor drains what is left, taking over the hard stop's batches.
    with supervisor(fsettings, "--drain-until-empty", workers=3) as sup:
        code = sup.wait(240)
        assert code == 0, sup.output()[-3000:]
    figures = final_check(fr, fpg, fsettings, produced=produced["entries"])
    assert figures["dead"] == 0
    report("8 SIGTERM and restart", writes=produced["entries"], cycles=len(cycles),
           inflight_left_by_hard_stop=cycles[2]["inflight_left"], rows=figures["rows"])


def _lock_waiters(pg: psycopg.Connection[Any]) -> int:
    row = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kvfast' "
                     "AND wait_event_type = 'Lock'").fetchone()
    return int(row[0]) if row else 0


def _drained(r: redis.Redis, settings: kvfast.Settings) -> int:
    pipe = r.pipeline(transaction=False)
    for p in range(settings.partitions):
        pipe.hget(f"{tag(settings, p)}:s", "drained")
    return sum(int(x or 0) for x in pipe.execute())
