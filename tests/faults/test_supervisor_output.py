"""What an operator sees during a fault: the supervisor's log and status lines.

During an outage the log is the only witness; these tests check that it says who
had the problem and how fast the drain goes once it is over.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import signal
import threading
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import queue_key

import kvfast
from kvfast.settings import SupervisorOptions
from kvfast.stats import Report
from kvfast.supervisor import Supervisor

from .checks import log_lines
from .load import Load, create_load_tables
from .servers import FaultServers
from .supervise import stop_supervisor, supervisor, wait_drained


def test_drainer_log_lines_name_their_drainer(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any]
) -> None:
    """A drainer's warnings say which drainer (``drainer-N``) logged them.

    The forked drainer reconfigures logging (``basicConfig(force=True)`` in
    worker.drainer_main): without ``force`` the root logger it inherited from
    the supervisor kept its handler and every drainer line read ``supervisor``.
    """
    create_load_tables(fpg)
    settings = kvfast.Settings(redis_url=fault_servers.redis_url, pg_dsn=fault_servers.pg_dsn,
                               partitions=4, lease_ms=2000, drain_interval_ms=20)
    with supervisor(settings, workers=2) as sup:
        sup.wait_drainers(2)
        with Load(settings, 1, 3000, seed=9, keys=200) as load:
            load.result()
        wait_drained(fr, settings, sup)
        # Kill the drainers' sessions, then write: a drainer that applies a batch on
        # a killed session logs a warning.  One claim can take every partition, so
        # the drainer that does the next batch may be one that had no session yet:
        # repeat (kill, write) until one warns.
        # Each round leaves every drainer that worked with a killed session, so
        # with 2 drainers a warning comes within 2 rounds; 10 is a wide margin.
        for seed in range(10, 20):
            if "PostgreSQL unavailable" in sup.output():
                break
            with psycopg.connect(fault_servers.superuser_dsn_for("kvfast_test"),
                                 autocommit=True) as su:
                su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'kvfast'")
            with Load(settings, 1, 500, seed=seed, keys=200) as load:
                load.result()
            wait_drained(fr, settings, sup)
        out = stop_supervisor(sup)
    warnings = log_lines(out, "PostgreSQL unavailable")
    assert warnings, f"no drainer noticed its killed session\n{out[-3000:]}"
    assert all(re.search(r" drainer-\d+ WARNING ", line) for line in warnings), warnings


def test_status_line_rate_covers_the_whole_interval_with_drain_until_empty(
    fr: redis.Redis, fsettings: kvfast.Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The rate in a status line is the rows drained since the previous line divided
    by the time since then, with ``--drain-until-empty`` too.

    The supervisor's loop is driven in-process with its drainers replaced by a
    steady 1,000 rows/s that arrive as one 1,000-row batch a second (``pool.receive``
    patched); a queued entry keeps ``--drain-until-empty`` going for ~4 s.

    Fails today: with ``--drain-until-empty`` the loop calls ``snapshot()`` every
    0.1 s to see whether it is done, and ``snapshot()`` resets the rate window and
    the lag samples each time (supervisor.Supervisor.run/snapshot): a status line
    reports the last 0.1 s only, 0 rows/s or 10,000 rows/s here (and 0 ms lag
    between batches).  Seen for real as "drained 0 rows/s ... total 81,000".
    """
    sup = Supervisor(dataclasses.replace(fsettings, workers=1),
                     SupervisorOptions(drain_until_empty=True, status_interval=1.0))
    ticks = itertools.count()
    batch = Report(drainer=0, entries=1000, applied=1000, dead=0, retaken=False, stale=0,
                   lag_ms=[40.0] * 10)

    def receive() -> list[Report]:  # one 1,000-row batch a second (the loop ticks every 0.1 s)
        return [batch] if next(ticks) % 10 == 5 else []

    sup.pool.spawn = lambda w: None  # type: ignore[method-assign]
    sup.pool.receive = receive  # type: ignore[method-assign]
    queue = queue_key(fsettings, 0)
    fr.rpush(queue, b"keeps --drain-until-empty busy")
    timer = threading.Timer(4.5, fr.delete, (queue,))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    timer.start()
    try:
        with caplog.at_level(logging.INFO, logger="kvfast.supervisor"):
            assert sup.run() == 0
    finally:
        timer.cancel()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sup.client.close()
    rates = [float(m.group(1).replace(",", "")) for r in caplog.records
             if (m := re.search(r"drained ([\d,.]+) rows/s", r.getMessage()))]
    assert len(rates) >= 3, caplog.text
    assert all(300 <= rate <= 3000 for rate in rates[1:]), (
        f"status lines report {rates} rows/s; the drain ran at 1,000 rows/s"
    )
