"""The supervisor's processes under an operator's or the kernel's hand (issue 14, items 6-8).

1. kill -9 of the supervisor under load: its drainers (found by their process
   title) are gone within a lease, a new supervisor runs exactly its own drainers
   and drains everything.
2. kill -9 of drainers every 1-2 s, well over the crash budget: drainers that had
   acked batches are restarted, the supervisor keeps going, /healthz says
   degraded meanwhile.  A drainer that dies before its first batch (a Redis user
   without the right to run scripts) still ends in the crash-loop exit.
3. SIGTERM while the drainers cannot finish (a lock held on a table): the
   supervisor stops within about a lease; the batches they held are taken over
   by the next supervisor and nothing is lost.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import kvfast
from kvfast.supervisor import RET_CONFIG, RET_CRASHLOOP, RET_KILLED

from .checks import final_check, log_lines, report, stats_json
from .load import Load, create_load_tables
from .servers import FaultServers
from .supervise import stop_supervisor, supervised_load, supervisor, wait_drained, wait_for


def titled(needle: str) -> dict[int, str]:
    """{pid: process title} of the live processes whose title contains ``needle``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        title = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        if needle in title and state != "Z":
            found[int(entry.name)] = title
    return found


def drainer_titles(namespace: str, supervisor_pid: int | None = None) -> dict[int, str]:
    pids = titled("kvfast drainer ")
    want = f"ns={namespace} "
    owner = f"supervisor={supervisor_pid}" if supervisor_pid is not None else ""
    return {p: t for p, t in pids.items() if want in t + " " and owner in t}


def _ns(fsettings: kvfast.Settings, name: str) -> kvfast.Settings:
    # A namespace of its own: process titles are counted machine-wide.
    return dataclasses.replace(fsettings, namespace=f"{name}{os.getpid()}")


# -- 1. the supervisor killed -----------------------------------------------------------------


def test_supervisor_killed_takes_its_drainers_with_it(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    """kill -9 of the supervisor while two producers write: its drainers exit (they
    were re-parented to pid 1 and kept draining before: 8 drainers where 6 should
    run), a new supervisor runs exactly its own ``--workers`` drainers, and it
    drains everything."""
    create_load_tables(fpg)
    settings = _ns(fsettings, "pk")
    ns = ["--namespace", settings.namespace]
    with supervised_load(settings, tmp_path / "s1.json", 2, 15_000, seed=71, workers=3,
                         flags=ns, rate_each=3000) as (sup, load):
        own = drainer_titles(settings.namespace, sup.pid)
        assert len(own) == 3, own
        assert all(t.startswith("kvfast drainer ") for t in own.values()), own
        assert titled(f"kvfast supervisor ns={settings.namespace}").keys() == {sup.pid}
        time.sleep(1.0)  # drainers mid-batch
        os.kill(sup.pid, signal.SIGKILL)
        sup.proc.wait(30)
        gone_s = wait_for(lambda: not drainer_titles(settings.namespace, sup.pid), 30,
                          "the dead supervisor's drainers to exit",
                          lambda: f"{drainer_titles(settings.namespace)}\n"
                                  f"{sup.output()[-3000:]}")
        produced = load.result()
        killed_out = sup.output()
    with supervisor(settings, *ns, workers=2) as sup2:
        sup2.wait_drainers(2)
        recovered = wait_drained(fr, settings, sup2, timeout=180)
        # Only the new supervisor's drainers run in this namespace.
        mine = drainer_titles(settings.namespace)
        assert set(mine) == set(drainer_titles(settings.namespace, sup2.pid)), mine
        assert len(mine) == 2, mine
        stop_supervisor(sup2)
    assert "supervisor" in killed_out
    figures = final_check(fr, fpg, settings, produced=produced["entries"])
    report("7 kill -9 supervisor", writes=produced["entries"], drainers_gone_s=gone_s,
           recovered_s=recovered, rows=figures["rows"], lease_s=settings.lease_ms / 1000)


def test_drainers_stuck_when_their_supervisor_dies_exit_within_a_lease(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any],
    fsettings: kvfast.Settings
) -> None:
    """The drainers wait on a lock the test holds (they cannot finish their batch) when
    their supervisor is killed: they exit anyway, about a lease later (their watchdog
    kills them), while the lock is still held; the next supervisor takes their batches
    over once the lock is gone."""
    create_load_tables(fpg)
    settings = _ns(fsettings, "ps")
    ns = ["--namespace", settings.namespace]
    with supervisor(settings, *ns, workers=2) as sup:
        sup.wait_drainers(2)
        with psycopg.connect(fault_servers.pg_dsn) as locker:
            locker.execute("LOCK TABLE d_rides, d_drivers, bookings, drivers, rides "
                           "IN ACCESS EXCLUSIVE MODE")
            with Load(settings, 1, 2000, seed=93) as load:
                produced = load.result()
            wait_for(lambda: _waiting_on_lock(fpg) > 0, 60, "a drainer to wait on the lock",
                     lambda: sup.output()[-3000:])
            assert len(drainer_titles(settings.namespace, sup.pid)) == 2
            os.kill(sup.pid, signal.SIGKILL)
            sup.proc.wait(30)
            gone_s = wait_for(lambda: not drainer_titles(settings.namespace, sup.pid), 60,
                              "the stuck drainers to exit", lambda: sup.output()[-3000:])
            assert not locker.closed  # still held: they were killed, not released
            locker.rollback()
        out = sup.output()
    assert log_lines(out, "is gone"), out[-3000:]
    with supervisor(settings, *ns, workers=2) as sup2:
        sup2.wait_drainers(2)
        recovered = wait_drained(fr, settings, sup2)
        stop_supervisor(sup2)
    figures = final_check(fr, fpg, settings, produced=produced["entries"])
    report("7 kill -9 supervisor, drainers stuck", writes=produced["entries"],
           drainers_gone_s=gone_s, lease_s=settings.lease_ms / 1000, recovered_s=recovered,
           rows=figures["rows"])


# -- 2. drainers killed again and again -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.slow
def test_drainers_killed_every_second_do_not_stop_the_supervisor(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    """kill -9 of a drainer every 1-2 s, 20 times (twice the crash budget of 10 deaths in
    60 s, which stopped the supervisor with exit 3 before): each was restarted, the
    supervisor kept draining, /healthz answered 503 with the reason while they
    restarted, and the result is exact."""
    create_load_tables(fpg)
    rng = random.Random(8)
    port = _free_port()
    kills: list[float] = []
    seen: dict[int, float] = {}
    degraded: list[str] = []
    started = time.monotonic()
    # The load runs until every kill is done (a stop file): killed drainers were at work.
    with supervised_load(fsettings, tmp_path / "stats.json", 2, 10**7, seed=81, workers=3,
                         flags=["--metrics-port", str(port)], rate_each=2000,
                         stop_file=str(tmp_path / "stop")) as (sup, load):
        assert _healthz(port)[0] == 200
        while len(kills) < 20:
            time.sleep(rng.uniform(1.0, 2.0))
            now = time.monotonic()
            live = sup.wait_drainers(3)
            for pid in live:
                seen.setdefault(pid, now)
            # An OOM killer's victims: drainers at work (up for half a second: past
            # their first batch under this load), not ones still starting.
            victims = [pid for pid in live if now - seen[pid] > 0.5]
            if not victims:
                continue
            os.kill(rng.choice(victims), signal.SIGKILL)
            kills.append(now)
            code, body = _healthz(port)
            if code == 503:
                degraded.append(body)
            assert sup.proc.poll() is None, sup.output()[-3000:]
        load.stop()
        produced = load.result()
        recovered = wait_drained(fr, fsettings, sup, timeout=240)
        out = stop_supervisor(sup)
    stats = stats_json(tmp_path / "stats.json")
    assert len(log_lines(out, "exited with -9")) == len(kills), out[-3000:]
    assert "drainers died" not in out, out[-3000:]
    assert degraded and any("died" in b for b in degraded), degraded
    figures = final_check(fr, fpg, fsettings, produced=produced["entries"])
    report("8 kill -9 drainers x20", writes=produced["entries"], kills=len(kills),
           degraded_answers=len(degraded), retaken=stats["retaken"], rows=figures["rows"],
           drain_after_load_s=recovered, total_s=time.monotonic() - started)


def test_drainers_that_die_before_their_first_batch_are_a_crash_loop(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any],
    fsettings: kvfast.Settings
) -> None:
    """A Redis user that may read and write but not run scripts: the supervisor's start-up
    checks pass, every drainer dies at its first claim (NOPERM), and the supervisor
    exits RET_CRASHLOOP rather than restarting them forever."""
    create_load_tables(fpg)
    user, password = "kvfast_noscript", "No-scr1pt-pw"
    fr.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", "~*", "&*",
                       "+@all", "-@scripting")
    try:
        host_port = fault_servers.redis_url.split("://", 1)[1].split("/", 1)[0]
        settings = dataclasses.replace(
            fsettings, redis_url=f"redis://{user}:{password}@{host_port}/0")
        with supervisor(settings, workers=3) as sup:
            code = sup.wait(120)
            out = sup.output()
    finally:
        fr.execute_command("ACL", "DELUSER", user)
    assert code == RET_CRASHLOOP, out[-3000:]
    assert "before its first batch" in out and "NOPERM" in out, out[-3000:]
    assert code != RET_CONFIG


# -- 3. SIGTERM while the drainers cannot finish ---------------------------------------------


def test_sigterm_stops_the_supervisor_within_a_lease_when_drainers_are_stuck(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any],
    fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    """A test session holds ACCESS EXCLUSIVE on every load table, so the drainers' batches
    wait on the lock; SIGTERM asks them to finish, they cannot, and one lease later
    they are killed: the supervisor exits (RET_KILLED) while the lock is still held
    (before: it waited for the lock as long as it was held).  With the lock released,
    a new supervisor takes the batches over and the result is exact."""
    create_load_tables(fpg)
    with supervised_load(fsettings, tmp_path / "stats.json", 1, 3000, seed=91,
                         workers=2) as (sup, load):
        produced = load.result()
        wait_drained(fr, fsettings, sup)
        with psycopg.connect(fault_servers.pg_dsn) as locker:
            locker.execute("LOCK TABLE d_rides, d_drivers, bookings, drivers, rides "
                           "IN ACCESS EXCLUSIVE MODE")
            with Load(fsettings, 1, 2000, seed=92) as more:
                extra = more.result()
            # Wait until a batch is stuck on the lock.
            wait_for(lambda: _waiting_on_lock(fpg) > 0, 60, "a drainer to wait on the lock",
                     lambda: sup.output()[-3000:])
            stop_at = time.monotonic()
            sup.send(signal.SIGTERM)
            code = sup.wait(60)
            stopped_s = time.monotonic() - stop_at
            still_locked = _waiting_on_lock(fpg) >= 0 and not locker.closed
            out = sup.output()
            locker.rollback()
    assert still_locked
    assert code == RET_KILLED, out[-3000:]
    assert log_lines(out, "still busy"), out[-3000:]
    with supervisor(fsettings, workers=2) as sup2:
        sup2.wait_drainers(2)
        recovered = wait_drained(fr, fsettings, sup2)
        stop_supervisor(sup2)
    total = produced["entries"] + extra["entries"]
    figures = final_check(fr, fpg, fsettings, produced=total)
    report("6 SIGTERM with stuck drainers", writes=total, stop_s=stopped_s,
           lease_s=fsettings.lease_ms / 1000, recovered_s=recovered, rows=figures["rows"])


def _waiting_on_lock(pg: psycopg.Connection[Any]) -> int:
    row = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kvfast' "
                     "AND wait_event_type = 'Lock'").fetchone()
    return int(row[0]) if row else 0
