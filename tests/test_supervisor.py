"""``python -m kvfast.supervisor`` as a subprocess: flags, start-up checks, exit codes,
signals, restarts, and what it prints (never a password)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import (
    ROOT,
    busy_partitions,
    converged,
    create_tables,
    drain_until_empty,
    drained_total,
    pg_objects,
    produce_mixed,
    producers,
    ride,
    run_supervisor,
    start_supervisor,
    subprocess_env,
)
from drainmodels import MODELS, DRide

import kvfast
from kvfast.supervisor import RET_CONFIG, RET_CRASHLOOP, RET_KILLED, RET_OK, build_parser

FLAGS = (
    "--models", "--workers", "--batch-size", "--drain-interval-ms", "--partitions",
    "--lease-ms", "--namespace", "--redis-url", "--pg-dsn", "--create-tables",
    "--drain-until-empty", "--status-interval", "--metrics-port", "--log-level",
)
ENV_VARS = (
    "KVFAST_MODELS", "KVFAST_WORKERS", "KVFAST_BATCH_SIZE", "KVFAST_DRAIN_INTERVAL_MS",
    "KVFAST_PARTITIONS", "KVFAST_LEASE_MS", "KVFAST_NAMESPACE", "KVFAST_REDIS_URL",
    "KVFAST_PG_DSN",
)


def test_help_explains_every_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvfast.supervisor", "--help"], env=subprocess_env(), cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == RET_OK, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    for flag in FLAGS:
        assert flag in text, f"--help does not list {flag}"
    for var in ENV_VARS:
        assert var in text, f"--help does not name {var}"
    explained = {
        opt: action.help
        for action in build_parser()._actions
        for opt in action.option_strings
    }
    assert set(FLAGS) <= set(explained)
    for flag, help_text in explained.items():
        assert flag in text, f"--help does not list {flag}"
        assert len(help_text or "") > 15, f"{flag} has no real explanation"


# -- start-up checks -----------------------------------------------------------------


def test_missing_tables_are_a_config_error(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    code, out = run_supervisor(settings, "--drain-until-empty", timeout=60)
    assert code == RET_CONFIG, out
    assert "d_rides" in out and "d_drivers" in out and "does not exist" in out
    assert "--create-tables" in out
    assert "drainer 0 started" not in out


def test_mismatched_column_is_a_config_error(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    pg.execute("ALTER TABLE d_rides ALTER COLUMN fare_cents TYPE text")
    code, out = run_supervisor(settings, "--drain-until-empty", timeout=60)
    assert code == RET_CONFIG, out
    assert "d_rides.fare_cents" in out and "text" in out and "bigint" in out
    assert "drainer 0 started" not in out


def test_create_tables_creates_them_and_drains(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """Entries queued before the tables exist drain once ``--create-tables`` made them."""
    with kvfast.Repository(DRide, settings) as rides:
        rides.create_many(ride(k) for k in range(1, 101))
    code, out = run_supervisor(settings, "--create-tables", "--drain-until-empty", workers=2)
    assert code == RET_OK, out
    kvfast.check_tables(pg, [kvfast.model_info(m) for m in MODELS])
    assert sorted(pg_objects(pg, DRide)) == list(range(1, 101))
    converged(r, pg, settings)
    # Idempotent: a second start with the tables in place is fine.
    code, out = run_supervisor(settings, "--create-tables", "--drain-until-empty", workers=1)
    assert code == RET_OK, out


def test_unknown_models_module_is_a_config_error(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    code, out = run_supervisor(settings, "--drain-until-empty", models=["no_such_module_xyz"],
                               timeout=60)
    assert code == RET_CONFIG, out
    assert "no_such_module_xyz" in out


def test_a_models_module_with_a_syntax_error_names_its_file_and_line(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, tmp_path: Any
) -> None:
    (tmp_path / "broken_models.py").write_text("import drainmodels  # noqa: F401\n\ndef (:\n")
    code, out = run_supervisor(settings, "--drain-until-empty", models=["broken_models"],
                               pythonpath=[str(tmp_path)], timeout=60)
    assert code == RET_CONFIG, out
    assert "broken_models.py" in out and "line 3" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("KVFAST_BATCH_SIZE", "abc"),
        ("KVFAST_WORKERS", "2.5"),
        ("KVFAST_PARTITIONS", "0"),
        ("KVFAST_LEASE_MS", "-5"),
        ("KVFAST_DRAIN_INTERVAL_MS", "soon"),
        ("KVFAST_NAMESPACE", "bad name!"),
        ("KVFAST_LOG_LEVEL", "LOUD"),
        ("KVFAST_METRICS_PORT", "http"),
        ("KVFAST_STATUS_INTERVAL", "often"),
    ],
)
def test_bad_env_value_is_a_config_error_naming_the_variable(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, var: str, value: str
) -> None:
    create_tables(pg)
    code, out = run_supervisor(settings, "--drain-until-empty", tuning=False,
                               env={var: value}, timeout=60)
    assert code == RET_CONFIG, out
    assert var in out and value in out
    assert "Traceback" not in out


def test_flags_win_over_env_and_env_fills_the_rest(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    create_tables(pg)
    env = {
        "KVFAST_BATCH_SIZE": "7",
        "KVFAST_WORKERS": "2",
        "KVFAST_PARTITIONS": str(settings.partitions),
        "KVFAST_LEASE_MS": "3000",
    }
    code, out = run_supervisor(settings, "--drain-until-empty", "--batch-size", "13",
                               tuning=False, env=env, timeout=60)
    assert code == RET_OK, out
    assert "batch_size=13" in out and "lease_ms=3000" in out
    assert "with 2 drainers" in out


# -- passwords ---------------------------------------------------------------------------

REDIS_USER = "kvfast_drain_pw"
REDIS_PASSWORD = "r3dis-Pw-Zq81"
PG_ROLE = "kvfast_drain_pw"
PG_PASSWORD = "pg-Pw-Xy97"


@contextlib.contextmanager
def redis_user(r: redis.Redis) -> Iterator[str]:
    """An ACL user with a password; yields its URL for the test Redis database."""
    r.acl_setuser(REDIS_USER, enabled=True, passwords=[f"+{REDIS_PASSWORD}"], keys=["*"],
                  channels=["*"], commands=["+@all"], reset=True)
    try:
        host = r.connection_pool.connection_kwargs
        yield (f"redis://{REDIS_USER}:{REDIS_PASSWORD}@{host['host']}:{host['port']}"
               f"/{host.get('db', 0)}")
    finally:
        r.acl_deluser(REDIS_USER)


@contextlib.contextmanager
def pg_role(pg: psycopg.Connection[Any], dsn: str) -> Iterator[str]:
    """A login role with a password (made with the superuser DSN); yields a key=value DSN."""
    superuser = os.environ.get("KVFAST_PG_SUPERUSER_DSN")
    if not superuser:
        pytest.skip("KVFAST_PG_SUPERUSER_DSN is not set: cannot create a role with a password")
    dbname = pg.info.dbname
    with psycopg.connect(superuser, autocommit=True) as su:
        su.execute(f"DROP ROLE IF EXISTS {PG_ROLE}")
        su.execute(f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{PG_PASSWORD}'")
    pg.execute(f"GRANT ALL ON SCHEMA public TO {PG_ROLE}")
    try:
        yield psycopg.conninfo.make_conninfo(dsn, user=PG_ROLE, password=PG_PASSWORD)
    finally:
        with psycopg.connect(superuser, autocommit=True, dbname=dbname) as su:
            su.execute(f"DROP OWNED BY {PG_ROLE}")
            su.execute(f"DROP ROLE {PG_ROLE}")


def test_passwords_never_appear_in_the_output(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    assert settings.pg_dsn
    with redis_user(r) as redis_url, pg_role(pg, settings.pg_dsn) as pg_dsn:
        secret = kvfast.Settings(redis_url=redis_url, pg_dsn=pg_dsn,
                                 partitions=settings.partitions, lease_ms=settings.lease_ms)
        outputs = []
        # Missing tables (flags), then a bad variable (URLs from the environment).
        code, out = run_supervisor(secret, "--drain-until-empty", "--log-level", "DEBUG")
        assert code == RET_CONFIG, out
        outputs.append(out)
        code, out = run_supervisor(
            secret, "--drain-until-empty", connection=False, tuning=False,
            env={"KVFAST_REDIS_URL": redis_url, "KVFAST_PG_DSN": pg_dsn,
                 "KVFAST_BATCH_SIZE": "lots"},
        )
        assert code == RET_CONFIG, out
        outputs.append(out)
        # A real run, with rows drained and status lines.
        with kvfast.Repository(DRide, secret) as rides:
            rides.create_many(ride(k, fare_cents=k) for k in range(1, 51))
        code, out = run_supervisor(secret, "--create-tables", "--drain-until-empty",
                                   "--log-level", "DEBUG", "--status-interval", "0.1",
                                   workers=2)
        assert code == RET_OK, out
        outputs.append(out)
        with psycopg.connect(pg_dsn) as conn:  # the role owns the tables it created
            assert len(pg_objects(conn, DRide)) == 50
    for out in outputs:
        assert REDIS_PASSWORD not in out, out
        assert PG_PASSWORD not in out, out
    # The URLs were printed (redacted), so the check above was not vacuous.
    assert f"{REDIS_USER}:***@" in outputs[2]


# -- crashes and signals ----------------------------------------------------------------------


def test_drainers_that_keep_dying_stop_the_supervisor(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, tmp_path: Any
) -> None:
    create_tables(pg)
    (tmp_path / "dying_models.py").write_text(
        "import os\n\nimport drainmodels  # noqa: F401\n\n"
        "os.register_at_fork(after_in_child=lambda: os._exit(7))\n"
    )
    code, out = run_supervisor(settings, models=["dying_models"], pythonpath=[str(tmp_path)],
                               workers=3, timeout=120)
    assert code == RET_CRASHLOOP, out
    assert "exited with 7" in out and "drainers died" in out


@pytest.mark.slow
def test_sigterm_under_load_finishes_batches_and_loses_nothing(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings, tmp_path: Any
) -> None:
    create_tables(pg)
    stop = tmp_path / "stop"
    with (
        start_supervisor(settings, "--batch-size", "100", "--status-interval", "0.5",
                         workers=3) as sup,
        producers(settings, 2, 10**6, stop_file=str(stop), seed=9) as futures,
    ):
        deadline = time.monotonic() + 60
        while drained_total(r, settings) < 3000 or "rows/s" not in sup.output():
            if time.monotonic() >= deadline:  # a wait-loop guard, not a timing check
                pytest.fail(sup.output()[-3000:])
            time.sleep(0.1)
        sup.send(signal.SIGTERM)
        code = sup.wait(60)
        out = sup.output()
        # The producers are still writing: queued entries, but no batch in flight.
        busy = busy_partitions(r, settings)
        assert not busy["inflight"] and not busy["inflight_meta"], busy
        stop.touch()
        produced = sum(f.result(timeout=120) for f in futures)
    assert code == RET_OK, out[-3000:]
    assert "finishing the batches in flight" in out and "stopped:" in out
    assert "drained" in out and "queued" in out and "dead letters" in out  # status lines
    drain_until_empty(settings)
    converged(r, pg, settings)
    assert drained_total(r, settings) == produced


def test_second_sigterm_stops_at_once_and_the_batch_is_taken_over(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings
) -> None:
    """Drainers stuck in PostgreSQL (a table lock) do not finish on the first SIGTERM;
    the second kills them (RET_KILLED).  Their batches stay in flight and a later
    drain takes them over: nothing is lost."""
    create_tables(pg)
    produced = produce_mixed(settings, seed=12, n_ops=400)
    assert settings.pg_dsn
    with psycopg.connect(settings.pg_dsn) as locker:
        locker.execute("LOCK TABLE d_rides IN ACCESS EXCLUSIVE MODE")
        with start_supervisor(settings, workers=2) as sup:
            deadline = time.monotonic() + 60
            while _lock_waiters(pg) == 0:
                if time.monotonic() >= deadline:  # a wait-loop guard, not a timing check
                    pytest.fail(sup.output()[-3000:])
                time.sleep(0.05)
            sup.send(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                sup.proc.wait(1.0)  # a warm stop waits for the batch in hand
            sup.send(signal.SIGTERM)
            code = sup.wait(60)
            out = sup.output()
        assert code == RET_KILLED, out[-3000:]
        assert "second signal" in out
        assert busy_partitions(r, settings)["inflight_meta"], "no batch was left in flight"
        locker.rollback()
    drain_until_empty(settings, workers=2)
    converged(r, pg, settings)
    assert drained_total(r, settings) == produced


def _lock_waiters(pg: psycopg.Connection[Any]) -> int:
    row = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kvfast' "
        "AND wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])
