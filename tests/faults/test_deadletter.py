"""``python -m kvfast.deadletter`` end to end: count, list, show, requeue, purge.

Dead letters are made the way production makes them: rows PostgreSQL rejects
(a CHECK constraint, a varchar(8)) and bytes that are not entries, drained by a
real drainer.  The CLI runs as a subprocess, as an operator would run it.

These tests use the private fault-injection servers (``tests/faults/conftest.py``), not
the shared development ones: other people's tests flush those at any moment.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import psycopg
import pytest
import redis
from drainhelpers import (
    ROOT,
    dead_key,
    dead_letters,
    drain_in_process,
    inflight_meta_key,
    keys_in_partition,
    pg_objects,
    queue_key,
    ride,
    start_supervisor,
    subprocess_env,
)
from drainmodels import DDriver, DRide

import kvfast

from .checks import final_check
from .servers import FaultServers, fault_settings
from .supervise import stop_supervisor, wait_drained, wait_for

PARTITIONS = 4


@pytest.fixture
def settings(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any]
) -> kvfast.Settings:
    return fault_settings(fault_servers, partitions=PARTITIONS, batch_size=500, workers=2)


def cli(settings: kvfast.Settings, *args: str, stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "kvfast.deadletter", "--redis-url", settings.redis_url,
         "--partitions", str(settings.partitions), "--namespace", settings.namespace, *args],
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
        env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    if check:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def make_dead_letters(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> dict[str, Any]:
    """Dead letters in every partition: bad d_rides rows, bad d_drivers rows, garbage."""
    kvfast.create_tables(fpg, [kvfast.model_info(m) for m in (DRide, DDriver)])
    fpg.execute("ALTER TABLE d_rides ADD CONSTRAINT dl_fare CHECK (fare_cents >= 0)")
    fpg.execute("ALTER TABLE d_drivers ALTER COLUMN name TYPE varchar(8)")
    bad_rides = list(range(1, 41, 3))
    bad_drivers = [f"drv-{i}" for i in range(0, 30, 4)]
    garbage = [b"\xff not an entry", b'{"v": 7}']
    with kvfast.Repository(DRide, settings) as rides, kvfast.Repository(DDriver, settings) as drv:
        rides.create_many(ride(k, fare_cents=-k if k in bad_rides else k) for k in range(1, 41))
        drv.create_many(
            DDriver(code=f"drv-{i}", name="much too long" if f"drv-{i}" in bad_drivers else "ok",
                    rating=1.0, active=True)
            for i in range(30)
        )
        fr.rpush(queue_key(settings, 0), *garbage)
        drain_in_process(settings)
    return {"rides": bad_rides, "drivers": bad_drivers, "garbage": garbage}


# -- count, list, show --------------------------------------------------------------------


def test_count_list_and_show(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    bad = make_dead_letters(fr, fpg, settings)
    total = len(bad["rides"]) + len(bad["drivers"]) + len(bad["garbage"])
    per_partition = {p: fr.llen(dead_key(settings, p)) for p in range(PARTITIONS)}
    assert sum(per_partition.values()) == total

    out = lines(cli(settings, "count").stdout)
    assert out[-1] == f"total: {total}"
    assert out[:-1] == [f"partition {p}: {n}" for p, n in sorted(per_partition.items()) if n]

    out = lines(cli(settings, "list", "--limit", "1000").stdout)
    assert out[-1] == f"{total} dead letters"
    assert len(out) == total + 1
    idents = [line.split()[0] for line in out[:-1]]
    assert idents == [f"{p}:{i}" for p in range(PARTITIONS) for i in range(per_partition[p])]
    assert sum("d_rides" in line and "23514" in line for line in out) == len(bad["rides"])
    assert sum("d_drivers" in line and "22001" in line for line in out) == len(bad["drivers"])
    assert sum(" ? " in line and "undecodable" in line for line in out) == len(bad["garbage"])

    out = lines(cli(settings, "list", "--model", "d_drivers").stdout)
    assert out[-1] == f"{len(bad['drivers'])} dead letters"
    assert all("d_drivers" in line for line in out[:-1])

    p = max(per_partition, key=lambda q: per_partition[q])
    out = lines(cli(settings, "list", "--partition", str(p), "--limit", "2").stdout)
    assert [line.split()[0] for line in out[:-1]] == [f"{p}:0", f"{p}:1"]
    assert out[-1] == f"{per_partition[p]} dead letters ({per_partition[p] - 2} not shown)"

    out = lines(cli(settings, "list", "--model", "d_rides", "--partition", str(p)).stdout)
    expected = sum(1 for q, d in dead_letters(fr, settings)
                   if q == p and orjson.loads(d.get("entry", "{}")).get("m") == "d_rides")
    assert out[-1] == f"{expected} dead letters"

    # show: the whole document, as stored.
    shown = orjson.loads(cli(settings, "show", f"{p}:1").stdout)
    assert shown == orjson.loads(fr.lindex(dead_key(settings, p), 1) or b"")
    assert {"entry", "error", "partition", "time", "drainer"} <= set(shown) or "entry_b64" in shown
    done = cli(settings, "show", "nonsense", check=False)
    assert done.returncode == 2 and "PARTITION:INDEX" in done.stderr
    done = cli(settings, "show", f"{p}:999", check=False)
    assert done.returncode == 1 and "no dead letter" in done.stderr


def test_count_reads_only_the_list_lengths(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """Counting is cheap: one LLEN per partition, no dead letter is read."""
    make_dead_letters(fr, fpg, settings)
    fr.config_resetstat()
    cli(settings, "count")
    stats = fr.info("commandstats")
    assert stats["cmdstat_llen"]["calls"] == PARTITIONS
    read = {"cmdstat_lrange", "cmdstat_lindex", "cmdstat_lpop", "cmdstat_lmpop", "cmdstat_scan"}
    assert not read & set(stats), sorted(stats)


# -- requeue ----------------------------------------------------------------------------------


def test_requeue_puts_entries_back_in_order_on_their_queues(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    bad = make_dead_letters(fr, fpg, settings)
    before = {p: fr.lrange(dead_key(settings, p), 0, -1) for p in range(PARTITIONS)}
    # --model: only d_drivers' letters go back, in their dead-letter order.
    out = cli(settings, "requeue", "--model", "d_drivers").stdout
    assert out.strip() == f"requeued {len(bad['drivers'])} of {len(bad['drivers'])} dead letters"
    for p in range(PARTITIONS):
        docs = [orjson.loads(raw) for raw in before[p]]
        drivers = [d["entry"].encode() for d in docs
                   if "entry" in d and orjson.loads(d["entry"]).get("m") == "d_drivers"]
        assert fr.lrange(queue_key(settings, p), 0, -1) == drivers
        rest = [raw for raw, d in zip(before[p], docs, strict=True)
                if not ("entry" in d and orjson.loads(d["entry"]).get("m") == "d_drivers")]
        assert fr.lrange(dead_key(settings, p), 0, -1) == rest
    # --partition: the rest of one partition; garbage (no entry) is left where it is.
    p = 0
    remaining = fr.lrange(dead_key(settings, p), 0, -1)
    queued = fr.lrange(queue_key(settings, p), 0, -1)
    out = cli(settings, "requeue", "--partition", str(p)).stdout
    movable = [raw for raw in remaining if "entry" in orjson.loads(raw)]
    assert out.strip() == f"requeued {len(movable)} of {len(remaining)} dead letters"
    assert fr.lrange(queue_key(settings, p), 0, -1) == queued + [
        orjson.loads(raw)["entry"].encode() for raw in movable
    ]
    assert fr.lrange(dead_key(settings, p), 0, -1) == [
        raw for raw in remaining if "entry" not in orjson.loads(raw)
    ]
    assert len(fr.lrange(dead_key(settings, p), 0, -1)) >= 1  # the non-UTF-8 garbage


# -- purge ------------------------------------------------------------------------------------


def test_purge_asks_first_and_deletes_only_what_the_filters_select(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    bad = make_dead_letters(fr, fpg, settings)
    total = len(bad["rides"]) + len(bad["drivers"]) + len(bad["garbage"])

    def count() -> int:
        return sum(fr.llen(dead_key(settings, p)) for p in range(PARTITIONS))

    for answer in ("n\n", "\n", "maybe\n"):
        done = cli(settings, "purge", stdin=answer, check=False)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"delete {total} dead letters for good? [y/N]" in done.stdout
        assert "nothing purged" in done.stdout
        assert count() == total
    done = cli(settings, "purge", "--model", "d_rides", stdin="y\n")
    assert f"delete {len(bad['rides'])} dead letters for good?" in done.stdout
    assert f"purged {len(bad['rides'])} dead letters" in done.stdout
    assert count() == total - len(bad["rides"])
    assert not any("d_rides" in d.get("entry", "") for _, d in dead_letters(fr, settings))
    done = cli(settings, "purge", "--partition", "0", "--yes")
    assert "for good?" not in done.stdout and "purged" in done.stdout
    assert fr.llen(dead_key(settings, 0)) == 0
    done = cli(settings, "purge", "--yes")
    assert count() == 0
    assert cli(settings, "purge").stdout.strip() == "nothing to purge"


def test_purge_without_a_terminal_answer_purges_nothing(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """``purge`` from a script with no stdin (no --yes): the question gets EOF, which
    must mean "no" (exit 1, nothing purged), not a traceback."""
    bad = make_dead_letters(fr, fpg, settings)
    total = len(bad["rides"]) + len(bad["drivers"]) + len(bad["garbage"])
    done = cli(settings, "purge", check=False)  # stdin is /dev/null
    assert sum(fr.llen(dead_key(settings, p)) for p in range(PARTITIONS)) == total
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# -- the round trip: poison, fix, requeue, drain -----------------------------------------------


@pytest.mark.slow
def test_fix_the_table_requeue_and_the_running_drainers_converge(
    fr: redis.Redis, fpg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """A supervisor keeps running throughout: rows PostgreSQL rejects are
    dead-lettered, the operator fixes the table (drops the CHECK, widens the
    varchar), requeues with the CLI, and the same drainers apply the entries."""
    kvfast.create_tables(fpg, [kvfast.model_info(m) for m in (DRide, DDriver)])
    fpg.execute("ALTER TABLE d_rides ADD CONSTRAINT dl_fare CHECK (fare_cents >= 0)")
    fpg.execute("ALTER TABLE d_drivers ALTER COLUMN name TYPE varchar(8)")
    p = 1
    ride_keys = keys_in_partition(settings, DRide, p, 30)
    bad_rides = ride_keys[::4]
    with (
        start_supervisor(settings, workers=2) as sup,
        kvfast.Repository(DRide, settings) as rides,
        kvfast.Repository(DDriver, settings) as drivers,
    ):
        sup.wait_drainers(2)
        rides.create_many(ride(k, fare_cents=-1 if k in bad_rides else k) for k in ride_keys)
        drivers.create_many(
            DDriver(code=f"d{i}", name="a long name" if i % 5 == 0 else "ok", rating=2.5,
                    active=True)
            for i in range(40)
        )
        wait_drained(fr, settings, sup)
        dead = dead_letters(fr, settings)
        assert len(dead) == len(bad_rides) + 8
        # Dead-lettered rows are not in PostgreSQL, the others are.
        assert sorted(pg_objects(fpg, DRide)) == sorted(set(ride_keys) - set(bad_rides))

        fpg.execute("ALTER TABLE d_rides DROP CONSTRAINT dl_fare")
        fpg.execute("ALTER TABLE d_drivers ALTER COLUMN name TYPE text")
        out = cli(settings, "requeue").stdout
        assert out.strip() == f"requeued {len(dead)} of {len(dead)} dead letters"
        wait_for(lambda: not dead_letters(fr, settings) and _drained_all(fr, settings), 30,
                 "the requeued entries to drain",
                 lambda: f"{dead_letters(fr, settings)[:3]}\n{sup.output()[-2000:]}")
        stop_supervisor(sup)
    figures = final_check(fr, fpg, settings, produced=None, models=(DRide, DDriver))
    assert figures["dead"] == 0
    assert sorted(pg_objects(fpg, DRide)) == sorted(ride_keys)


def _drained_all(fr: redis.Redis, settings: kvfast.Settings) -> bool:
    return all(not fr.llen(queue_key(settings, p)) and not fr.exists(inflight_meta_key(settings, p))
               for p in range(settings.partitions))
