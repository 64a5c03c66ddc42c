"""PostgreSQL going away under the drainers.

3. PostgreSQL stopped for 20 s in the middle of the load, then started again:
   the drainers back off (a bounded number of warnings, no crash loop), resume by
   themselves and lose nothing.
4. The drainers' connections killed server-side (``pg_terminate_backend``) in the
   middle of their COPYs, again and again: every batch is retried on a new
   connection and applied exactly once as far as the result goes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import kvfast

from .checks import drained_counter, final_check, log_lines, report, stats_json
from .load import create_load_tables
from .servers import FaultServers
from .supervise import (
    injecting,
    stop_supervisor,
    supervised_load,
    wait_drain_started,
    wait_drained,
    wait_for,
)

OUTAGE_S = 20.0


@pytest.mark.slow
def test_postgres_stopped_for_20s_during_the_load(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any],
    fsettings: kvfast.Settings, tmp_path: Path,
) -> None:
    create_load_tables(fpg)
    fpg.close()  # the server goes away; the final check opens a new connection
    stats_path = tmp_path / "stats.json"
    with supervised_load(fsettings, stats_path, 2, 10**9, seed=3, keys=1000,
                         stop_file=str(tmp_path / "stop"), rate_each=1500) as (sup, load):
        wait_drain_started(fr, fsettings, sup, 10_000)
        down_at = time.monotonic()
        fault_servers.stop_pg()
        drained_at_stop = drained_counter(fr, fsettings)
        lines_at_stop = len(sup.output().splitlines())
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        # Nothing reached PostgreSQL, and the supervisor is still there.
        assert drained_counter(fr, fsettings) == drained_at_stop
        assert sup.proc.poll() is None, sup.output()[-3000:]
        fault_servers.start_pg()
        up_at = time.monotonic()
        outage = up_at - down_at
        first_progress = wait_for(lambda: drained_counter(fr, fsettings) > drained_at_stop, 60,
                                  "the drain to resume", lambda: sup.output()[-3000:])
        time.sleep(2.0)  # the load goes on a little after the outage
        load.stop()
        produced = load.result()
        if produced["elapsed_s"] <= outage:  # the scenario's precondition, not a timing check
            pytest.fail("the load did not span the outage")
        caught_up = wait_drained(fr, fsettings, sup)
        out = stop_supervisor(sup)
    outage_lines = out.splitlines()[lines_at_stop:]
    warnings = [line for line in outage_lines if "PostgreSQL unavailable" in line]
    stats = stats_json(stats_path)
    # Backoff, not a tight loop: 3 drainers retrying for 20 s with capped exponential
    # backoff log a few dozen lines (a 50 ms loop would log over a thousand).
    assert 0 < len(warnings) < 100, "\n".join(warnings[:200])
    # No crash loop: no drainer died, the supervisor never gave up.
    assert not log_lines(out, "exited with"), out[-3000:]
    assert "drainers died" not in out
    with psycopg.connect(fsettings.pg_dsn or "", autocommit=True,
                         options="-c timezone=UTC") as pg:
        figures = final_check(fr, pg, fsettings, produced=produced["entries"])
    assert figures["dead"] == 0
    report("3 PostgreSQL stopped", writes=produced["entries"], outage_s=outage,
           warnings=len(warnings), drainer_restarts=0, resumed_after_s=first_progress,
           drained_after_restart_s=caught_up, batches=stats["batches"],
           load_s=produced["elapsed_s"])


@pytest.mark.slow
def test_postgres_connections_killed_in_the_middle_of_their_copy(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any],
    fsettings: kvfast.Settings, tmp_path: Path,
) -> None:
    create_load_tables(fpg)
    stop = threading.Event()
    kills = {"copy": 0, "all": 0, "rounds": 0}

    def killer() -> None:
        with psycopg.connect(fault_servers.superuser_dsn_for("kvfast_test"),
                             autocommit=True) as su:
            while not stop.is_set():
                kills["rounds"] += 1
                # Sessions in the middle of a COPY into their staging table...
                rows = su.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'kvfast' AND pid <> pg_backend_pid() "
                    "AND state = 'active' AND query LIKE 'COPY %%'"
                ).fetchall()
                kills["copy"] += sum(1 for (ok,) in rows if ok)
                # ... and now and then every kvfast session, whatever it is doing.
                if kills["rounds"] % 50 == 0:
                    rows = su.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'kvfast' AND pid <> pg_backend_pid()"
                    ).fetchall()
                    kills["all"] += sum(1 for (ok,) in rows if ok)
                time.sleep(0.01)

    stats_path = tmp_path / "stats.json"
    with supervised_load(fsettings, stats_path, 2, 25_000, seed=4, keys=1000) as (sup, load):
        with injecting(killer, stop, "pg-killer"):
            produced = load.result()
            # Keep killing while the backlog drains, until enough COPYs were cut.
            wait_for(lambda: kills["copy"] >= 10, 60, "COPYs to kill")
        killed_at = time.monotonic()
        caught_up = wait_drained(fr, fsettings, sup)
        out = stop_supervisor(sup)
    warnings = log_lines(out, "PostgreSQL unavailable")
    assert warnings, "no drainer noticed a killed connection"
    assert not log_lines(out, "exited with"), out[-3000:]
    figures = final_check(fr, fpg, fsettings, produced=produced["entries"])
    assert figures["dead"] == 0
    report("4 pg_terminate_backend mid-COPY", writes=produced["entries"],
           copies_killed=kills["copy"], sessions_killed=kills["copy"] + kills["all"],
           warnings=len(warnings), drained_after_kills_s=caught_up,
           since_last_kill_s=time.monotonic() - killed_at, rows=figures["rows"])
