"""A table changed under load, and a rolling deploy of a changed model.

1. A column of one table is renamed away while producers write all five
   models: that table's entries wait (held, in order), the other four drain
   on; renamed back, the held entries drain by themselves.
2. A rolling deploy: a model gains ``note``; producers and drainers of both
   versions run at once over the same keys.  Old entries drain on new drainers
   with the default; new entries wait for a new drainer instead of being
   dead-lettered by an old one; once the old drainers are gone, everything
   drains.  Both end with the usual check: PostgreSQL equals Redis key by key,
   nothing queued, in flight, held or tombstoned, drained + dead = produced.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import SupervisorProcess, subprocess_env, supervisor_args, wait_idle

import kvfast

from .checks import drained_counter, final_check, report
from .load import create_load_tables
from .supervise import stop_supervisor, supervised_load, wait_drain_started, wait_for

pytestmark = pytest.mark.slow


def test_a_column_renamed_under_load_holds_only_its_table(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    create_load_tables(fpg)
    client = kvfast.Client(fsettings)
    try:
        with supervised_load(fsettings, tmp_path / "stats.json", 2, 15_000, seed=14) as (
                sup, load):
            wait_drain_started(fr, fsettings, sup, 2_000)
            fpg.execute("ALTER TABLE bookings RENAME COLUMN fare_cents TO fare_cents_gone")
            broken_at = time.monotonic()
            wait_for(lambda: "bookings" in client.holds(), 60, "bookings to be held",
                     lambda: sup.output()[-3000:])
            before = drained_counter(fr, fsettings)
            time.sleep(3.0)  # the other tables drain meanwhile
            drained_while_broken = drained_counter(fr, fsettings) - before
            held, reason = client.holds()["bookings"]
            assert "42703" in reason and "fare_cents" in reason, reason
            assert set(client.holds()) == {"bookings"}
            assert drained_while_broken > 0, "the healthy tables stopped draining"
            fpg.execute("ALTER TABLE bookings RENAME COLUMN fare_cents_gone TO fare_cents")
            fixed_at = time.monotonic()
            recovered = wait_for(lambda: not client.holds(), 120, "the held entries to drain",
                                 lambda: sup.output()[-3000:])
            result = load.result()
            wait_idle(fr, fsettings, timeout=180)
            out = stop_supervisor(sup)
        figures = final_check(fr, fpg, fsettings, produced=result["entries"],
                              uncertain=result["uncertain"])
        assert figures["dead"] == 0
        assert "wait: 42703" in out and "drains again" in out
        report("column renamed under load", writes=result["entries"],
               broken_s=round(fixed_at - broken_at, 1), held_at_3s=held,
               drained_by_other_tables_in_3s=drained_while_broken,
               recovered_s=round(recovered, 1), **figures)
    finally:
        client.close()


_V1 = """
import kvfast

@kvfast.model(table="deploy_fares", key="id")
class Fare:
    id: int
    cents: int
"""
_V2 = """
import kvfast

@kvfast.model(table="deploy_fares", key="id")
class Fare:
    id: int
    cents: int
    note: str | None = None
"""
_PRODUCER = """
import random, sys
import kvfast
import {module} as m

settings = kvfast.Settings.from_env()
rng = random.Random({seed})
with kvfast.Repository(m.Fare, settings) as fares:
    for i in range({rounds}):
        keys = rng.sample(range(500), 20)
        if rng.random() < 0.5:
            extra = {{"note": f"v2 {{i}}"}} if hasattr(m.Fare, "note") else {{}}
            fares.create_many(m.Fare(id=k, cents=i, **extra) for k in keys)
        else:
            try:
                fares.update_many({{k: {{"cents": -i}} for k in keys}})
            except kvfast.NotFound:
                pass
print("done", flush=True)
"""


def test_a_rolling_deploy_mixes_model_versions_without_losing_or_reordering(
    fr: redis.Redis, fpg: psycopg.Connection[Any], fsettings: kvfast.Settings, tmp_path: Path
) -> None:
    (tmp_path / "deploy_v1.py").write_text(textwrap.dedent(_V1))
    (tmp_path / "deploy_v2.py").write_text(textwrap.dedent(_V2))
    sys.path.insert(0, str(tmp_path))
    try:
        import deploy_v2  # the final model, for the check
    finally:
        sys.path.remove(str(tmp_path))
    # The table as the old model made it: the new drainers' --create-tables adds
    # the new column (expand only) when they start.
    fpg.execute("CREATE TABLE deploy_fares (id bigint PRIMARY KEY, cents bigint NOT NULL)")
    kvfast.create_tables(fpg, [])
    env = subprocess_env({"KVFAST_REDIS_URL": fsettings.redis_url,
                          "KVFAST_PG_DSN": fsettings.pg_dsn or "",
                          "KVFAST_PARTITIONS": str(fsettings.partitions)},
                         pythonpath=[str(tmp_path)])

    def drainers(module: str, *flags: str) -> SupervisorProcess:
        args = supervisor_args(fsettings, *flags, workers=1, models=[module])
        return SupervisorProcess(args, env)

    old = drainers("deploy_v1")
    new: SupervisorProcess | None = None
    try:
        old.wait_drainers(1)
        new = drainers("deploy_v2", "--create-tables")
        new.wait_drainers(1)
        assert new is not None
        producers = [subprocess.Popen(
            [sys.executable, "-c", _PRODUCER.format(module=module, seed=seed, rounds=300)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for module, seed in (("deploy_v1", 1), ("deploy_v2", 2), ("deploy_v1", 3))]
        outputs = [p.communicate(timeout=300)[0].decode() for p in producers]
        assert all(p.returncode == 0 for p in producers), outputs
        stop_supervisor(old)  # the deploy ends: only new drainers are left
        wait_idle(fr, fsettings, timeout=120)
        client = kvfast.Client(fsettings)
        try:
            wait_for(lambda: not client.holds(), 60, "held entries to drain",
                     lambda: new.output()[-3000:])
        finally:
            client.close()
        wait_idle(fr, fsettings, timeout=60)
        new_out = stop_supervisor(new)
    finally:
        old.close()
        if new is not None:
            new.close()
    figures = final_check(fr, fpg, fsettings, produced=None, models=[deploy_v2.Fare])
    assert figures["dead"] == 0, "an entry of either version was dead-lettered"
    notes = fpg.execute("SELECT count(*) FROM deploy_fares WHERE note IS NOT NULL").fetchone()
    report("rolling deploy", rows=figures["rows"], drained=figures["drained"],
           with_note=notes[0] if notes else 0,
           held_lines=new_out.count("wait:"))
