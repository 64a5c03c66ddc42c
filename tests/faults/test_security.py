"""Security: passwords, least privilege, secrets in output, hostile identifiers, TLS.

* Redis with ``requirepass``, and with an ACL user that may touch only kvfast's
  keys (``~{ns:*`` and ``~ns:*``) and run only the commands kvfast needs: the
  whole data path (writes, drain, reads) works, anything else is refused.
* PostgreSQL with a scram-sha-256 password role that owns kvfast's tables and
  nothing else.
* No password in any log line, status line, exception message, traceback or
  ``repr``, including while connections fail.
* Table and column names made of quotes, spaces, SQL keywords and injection
  attempts drain correctly and inject nothing; the Lua scripts Redis runs are
  kvfast's files, never text built from data (checked with MONITOR).
* TLS (``rediss://``) when Debian's redis-server is built with it (it is: 7.0).

Everything runs against the private fault-injection servers (``tests/faults/conftest.py``)
and redis-servers of their own: these tests change users and passwords.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis
from drainhelpers import (
    ROOT,
    converged,
    pg_objects,
    ride,
    run_supervisor,
    start_supervisor,
    subprocess_env,
)
from drainmodels import DDriver, DRide
from psycopg import sql

import kvfast
from kvfast.scripts import SCRIPT_NAMES, source
from kvfast.settings import redact

from .servers import PASSWORD_REDIS_PORT, TLS_REDIS_PORT, FaultServers, RedisProcess, fault_settings
from .supervise import wait_for

REDIS_PASSWORD = "R3d!s-s3cret/pw%"  # URL-special characters: percent-encoded in URLs
ACL_USER = "kvfast_app"
ACL_PASSWORD = "Acl-s3cret-pw-71"
PG_ROLE = "kvfast_owner"
PG_PASSWORD = "Pg-s3cret'pw 42"  # a quote and a space: quoted in key=value DSNs
SECRETS = (REDIS_PASSWORD, quote(REDIS_PASSWORD, safe=""), ACL_PASSWORD, PG_PASSWORD,
           "s3cret'pw")
MODELS = ("drainmodels",)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}:\n{text[-3000:]}"


# -- the servers' side: a Redis password, an ACL user, a scram role ---------------------------


@contextlib.contextmanager
def password_redis(workdir: Path) -> Iterator[tuple[RedisProcess, str]]:
    """A redis-server with ``requirepass``; yields it and a URL with the password."""
    url = f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:{PASSWORD_REDIS_PORT}/0"
    server = RedisProcess(PASSWORD_REDIS_PORT, workdir, "--requirepass", REDIS_PASSWORD,
                          url=url)
    server.start()
    try:
        yield server, url
    finally:
        server.stop()


@contextlib.contextmanager
def scram_role(fault_servers: FaultServers) -> Iterator[str]:
    """A login role with a scram-sha-256 password that may create tables in the test
    database's public schema (and owns nothing else); yields its key=value DSN."""
    role = sql.Identifier(PG_ROLE)
    with psycopg.connect(fault_servers.superuser_dsn, autocommit=True) as su:
        assert su.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        _drop_role(fault_servers)
        su.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                           "PASSWORD {}").format(role, sql.Literal(PG_PASSWORD)))
        row = su.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                         (PG_ROLE,)).fetchone()
        assert row is not None and row[0].startswith("SCRAM-SHA-256$"), "not a scram verifier"
    with psycopg.connect(fault_servers.superuser_dsn_for("kvfast_test"), autocommit=True) as su:
        su.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(role))
    dsn = psycopg.conninfo.make_conninfo(host="127.0.0.1", port=fault_servers.pg_port,
                                         dbname="kvfast_test", user=PG_ROLE,
                                         password=PG_PASSWORD)
    try:
        yield dsn
    finally:
        _drop_role(fault_servers)


def _drop_role(fault_servers: FaultServers) -> None:
    with psycopg.connect(fault_servers.superuser_dsn_for("kvfast_test"), autocommit=True) as su:
        if su.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_ROLE,)).fetchone():
            su.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(PG_ROLE)))
            su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(PG_ROLE)))


#: the commands kvfast's producers, drainers, supervisor and dead-letter CLI send,
#: and those its Lua scripts call (Redis checks those too)
KVFAST_COMMANDS = (
    "ping", "multi", "exec", "discard", "evalsha", "script|load", "info",
    "del", "exists", "expire", "time", "set", "incr",
    "hset", "hsetnx", "hget", "hmget", "hgetall", "hexists", "hdel", "hincrby",
    "rpush", "lrange", "llen", "lrem", "lindex", "lpop", "ltrim", "hlen", "persist",
)


@contextlib.contextmanager
def acl_user(fr: redis.Redis, namespace: str) -> Iterator[str]:
    """An ACL user limited to ``namespace``'s keys and kvfast's commands; yields its URL."""
    fr.execute_command(
        "ACL", "SETUSER", ACL_USER, "reset", "on", f">{ACL_PASSWORD}",
        f"~{{{namespace}:*", f"~{namespace}:*", "resetchannels", "-@all",
        *(f"+{c}" for c in KVFAST_COMMANDS),
    )
    kwargs = fr.connection_pool.connection_kwargs
    try:
        yield f"redis://{ACL_USER}:{ACL_PASSWORD}@{kwargs['host']}:{kwargs['port']}/0"
    finally:
        fr.acl_deluser(ACL_USER)


def victims_table(fpg: psycopg.Connection[Any]) -> None:
    fpg.execute("CREATE TABLE victims (id int PRIMARY KEY, note text)")
    fpg.execute("INSERT INTO victims VALUES (1, 'still here')")


def assert_victims_intact(fpg: psycopg.Connection[Any]) -> None:
    assert fpg.execute("SELECT id, note FROM victims").fetchall() == [(1, "still here")]


def write_some(settings: kvfast.Settings, n: int = 200) -> None:
    """Creates, partial updates and deletes of both drain models."""
    with kvfast.Client(settings) as client:
        rides = kvfast.Repository(DRide, client=client)
        drivers = kvfast.Repository(DDriver, client=client)
        rides.create_many(ride(k, counter=k) for k in range(1, n + 1))
        rides.update_many({k: {"status": "paid", "counter": -k} for k in range(1, n + 1, 3)})
        rides.delete_many(range(2, n + 1, 7))
        drivers.create_many(DDriver(code=f"d{i}", name="ü", rating=0.5, active=True,
                                    tags=["x", i]) for i in range(n // 4))
        drivers.update(f"d{1}", vehicle={"plate": "KA-1"})
        drivers.delete("d2")


def owned_tables(su: psycopg.Connection[Any], role: str) -> set[str]:
    rows = su.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner "
        "WHERE o.rolname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')", (role,)
    ).fetchall()
    return {name for (name,) in rows}


# -- Redis requirepass + PostgreSQL scram role: the whole data path -----------------------------


def test_data_path_with_a_redis_password_and_a_scram_postgres_role(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    victims_table(fpg)
    with (
        password_redis(tmp_path / "redis") as (server, redis_url),
        scram_role(fault_servers) as dsn,
    ):
        settings = fault_settings(fault_servers, redis_url=redis_url, pg_dsn=dsn, partitions=8)
        write_some(settings)
        code, out = run_supervisor(settings, "--create-tables", "--drain-until-empty",
                                   workers=2, models=MODELS)
        assert code == 0, out[-3000:]
        assert_no_secret(out, "the supervisor's output")
        admin = server.client()
        try:
            with psycopg.connect(dsn, autocommit=True, options="-c timezone=UTC") as owner:
                counts = converged(admin, owner, settings)
                assert counts[DRide] > 100 and counts[DDriver] > 30
                # Reads: from Redis, and through to PostgreSQL (as the scram role)
                # once the Redis copy is gone.
                with kvfast.Repository(DRide, settings) as rides:
                    assert rides.get_by_id(3) == ride(3, counter=3)
                    admin.delete(rides.producer.locate(4)[2])
                    assert rides.get_by_id(4) == ride(4, counter=-4, status="paid")
                # The role owns kvfast's tables and nothing else; other tables are
                # out of its reach.
                with psycopg.connect(fault_servers.superuser_dsn_for("kvfast_test")) as su:
                    assert owned_tables(su, PG_ROLE) == {"d_rides", "d_drivers", "kvfast_fence",
                                                         "kvfast_models"}
                    hba = su.execute(
                        "SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'"
                    ).fetchall()
                    assert hba == [("scram-sha-256",)], hba
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    owner.execute("SELECT * FROM victims")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    owner.execute("DROP TABLE victims")
            assert_victims_intact(fpg)
            # Without the right passwords: clean, typed errors, no password in them.
            wrong = dataclasses.replace(settings, redis_url=redis_url.replace("R3d", "XXX"))
            no_pw = dataclasses.replace(
                settings, redis_url=f"redis://127.0.0.1:{PASSWORD_REDIS_PORT}/0")
            bad_pg = dataclasses.replace(settings, pg_dsn=dsn.replace("pw 42", "pw 43"))
            # A refused password is a configuration error, never retried as an outage.
            for broken in (wrong, no_pw):
                with (kvfast.Repository(DRide, broken) as rides,
                      pytest.raises(kvfast.AuthenticationFailed) as info):
                    rides.get_by_id(3)
                assert not isinstance(info.value, kvfast.ConnectionFailed)
                assert "refused the credentials" in str(info.value)
                assert_no_secret(_describe(info.value), "a Redis error")
            with kvfast.Repository(DRide, bad_pg) as rides:
                with pytest.raises(kvfast.AuthenticationFailed) as pg_info:
                    rides.get_by_id(4)
                assert "password authentication failed" in str(pg_info.value)
                assert_no_secret(_describe(pg_info.value), "a PostgreSQL error")
        finally:
            admin.close()


def _describe(exc: BaseException) -> str:
    """Everything a log or a crash would show of ``exc``: str, repr, the chained traceback."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


# -- an ACL user that may only touch kvfast's keys ------------------------------------------------


def test_data_path_as_an_acl_user_limited_to_kvfast_keys(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any]
) -> None:
    namespace = "kvapp"
    fr.set("payroll:alice", "100")
    fr.rpush("{other:0}:q", b"someone else's entry")
    with acl_user(fr, namespace) as url:
        settings = fault_settings(fault_servers, redis_url=url, namespace=namespace, partitions=8)
        kvfast.create_tables(fpg, [kvfast.model_info(m) for m in (DRide, DDriver)])
        write_some(settings)
        code, out = run_supervisor(settings, "--drain-until-empty", "--namespace", namespace,
                                   workers=2, models=MODELS)
        assert code == 0, out[-3000:]
        assert "NOPERM" not in out and "no permissions" not in out
        # The dead-letter CLI works under the same user.
        done = subprocess.run(
            [sys.executable, "-m", "kvfast.deadletter", "--redis-url", url, "--namespace",
             namespace, "--partitions", "8", "count"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0 and "total: 0" in done.stdout, done.stdout + done.stderr
        converged(fr, fpg, settings)
        with kvfast.Repository(DRide, settings) as rides:
            assert rides.get_by_id(1) == ride(1, counter=-1, status="paid")

        # Everything outside kvfast's keys and commands is refused.
        user = redis.Redis.from_url(url)
        try:
            refused: list[Callable[[], Any]] = [
                lambda: user.get("payroll:alice"),
                lambda: user.set("payroll:alice", "0"),
                lambda: user.lrange("{other:0}:q", 0, -1),
                lambda: user.rpush("{other:0}:q", b"x"),
                lambda: user.delete("payroll:alice"),
                lambda: user.flushall(),
                lambda: user.keys("*"),
                lambda: user.config_get("requirepass"),
                lambda: user.acl_list(),
                lambda: user.eval("return 1", 0),
                lambda: user.script_flush(),
                # kvfast's own scripts, aimed at keys outside its namespace
                lambda: user.evalsha(hashlib.sha1(source("renew")).hexdigest(), 1,
                                     "payroll:alice", "x", 1, 1000),
            ]
            for call in refused:
                with pytest.raises(redis.exceptions.NoPermissionError):
                    call()
        finally:
            user.close()
        assert fr.get("payroll:alice") == b"100"
        # A kvfast client on another namespace under this user: a clear error.
        other = dataclasses.replace(settings, namespace="other")
        with kvfast.Repository(DRide, other) as rides, pytest.raises(kvfast.KvfastError) as info:
            rides.create(ride(1))
        assert "no permissions" in str(info.value)
        assert_no_secret(_describe(info.value), "a NOPERM error")


# -- no secret anywhere -------------------------------------------------------------------------


@pytest.mark.slow
def test_no_secret_in_logs_status_lines_errors_or_reprs(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Passwords in both URLs; a supervisor at DEBUG with status lines every 0.2 s,
    while its PostgreSQL sessions are killed and its Redis crashes and comes back;
    supervisors started with wrong passwords; bad variables; exceptions."""
    outputs: dict[str, str] = {}
    with (
        password_redis(tmp_path / "redis") as (server, redis_url),
        scram_role(fault_servers) as dsn,
    ):
        settings = fault_settings(fault_servers, redis_url=redis_url, pg_dsn=dsn, partitions=8)
        write_some(settings, 400)
        with start_supervisor(settings, "--create-tables", "--log-level", "DEBUG",
                              "--status-interval", "0.2", workers=2, models=MODELS) as sup:
            sup.wait_drainers(2)
            with psycopg.connect(fault_servers.superuser_dsn_for("kvfast_test"),
                                 autocommit=True) as su:
                killed = 0
                for _ in range(20):
                    rows = su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE usename = %s", (PG_ROLE,)).fetchall()
                    killed += len(rows)
                    write_some(settings, 40)
                    time.sleep(0.05)
                assert killed > 0
            server.kill()
            time.sleep(1.5)
            server.start()
            write_some(settings, 40)
            admin = server.client()
            try:
                wait_for(lambda: not any(admin.llen(f"{{kvfast:{p}}}:q") for p in range(8)),
                         60, "the drain", lambda: sup.output()[-3000:])
            finally:
                admin.close()
            sup.send(signal.SIGTERM)
            assert sup.wait(60) == 0, sup.output()[-3000:]
            outputs["running supervisor"] = out = sup.output()
        # Both kinds of connection error were logged (and with them, the URLs' hosts).
        assert "PostgreSQL unavailable" in out and "connecting to 127.0.0.1" in out, out[-3000:]
        assert "rows/s" in out  # status lines were printed
        assert redact(redis_url) in out  # the URLs were shown, redacted

        # Start-up with wrong passwords (from the environment): exit 2 at once, with a
        # clear message (before: 30 s of "retrying" warnings, then exit 4).
        for name, env in (
            ("wrong Redis password", {"KVFAST_REDIS_URL": redis_url.replace("R3d", "r3D"),
                                      "KVFAST_PG_DSN": dsn}),
            ("wrong PostgreSQL password", {"KVFAST_REDIS_URL": redis_url,
                                           "KVFAST_PG_DSN": dsn.replace("pw 42", "pw 24")}),
        ):
            code, out = run_supervisor(settings, connection=False, env=env, models=MODELS,
                                       timeout=60)
            assert code == 2, f"{name}: exit {code}\n{out[-3000:]}"
            assert "retrying" not in out, out[-3000:]
            outputs[name] = out
        assert "invalid username-password pair" in outputs["wrong Redis password"]
        assert "refused the credentials" in outputs["wrong Redis password"]
        assert "password authentication failed" in outputs["wrong PostgreSQL password"]
        assert "refused the log-in" in outputs["wrong PostgreSQL password"]
        # The dead-letter tool the same: exit 2, the reason, no password.
        dl = subprocess.run(
            [sys.executable, "-m", "kvfast.deadletter", "count"], capture_output=True,
            text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
            env=subprocess_env({"KVFAST_REDIS_URL": redis_url.replace("R3d", "r3D")}))
        assert dl.returncode == 2, dl.stdout + dl.stderr
        assert "refused the credentials" in dl.stdout + dl.stderr, dl.stdout + dl.stderr
        outputs["dead-letter tool, wrong Redis password"] = dl.stdout + dl.stderr
        # A bad variable next to password URLs.
        code, out = run_supervisor(settings, "--drain-until-empty", connection=False,
                                   tuning=False, models=MODELS,
                                   env={"KVFAST_REDIS_URL": redis_url, "KVFAST_PG_DSN": dsn,
                                        "KVFAST_BATCH_SIZE": "many"})
        assert code == 2, out
        outputs["bad variable"] = out

        # Exceptions and reprs in this process.
        texts = [repr(settings), str(settings)]
        with kvfast.Client(settings) as client:
            texts.append(repr(client))
            texts.append(repr(kvfast.Repository(DRide, client=client)))
        broken = dataclasses.replace(settings, redis_url=redis_url.replace("R3d", "r3D"),
                                     pg_dsn=dsn.replace("pw 42", "pw 24"))
        with kvfast.Repository(DRide, broken) as rides:
            with pytest.raises(kvfast.AuthenticationFailed) as redis_info:
                rides.create(ride(1))
            texts.append(_describe(redis_info.value))
            with pytest.raises(kvfast.AuthenticationFailed) as pg_info:
                rides._select([1])
            texts.append(_describe(pg_info.value))
        outputs["exceptions and reprs"] = "\n".join(texts)
    for where, text in outputs.items():
        assert_no_secret(text, where)


DSNS_WITH_SECRETS = [
    f"postgresql://app:{quote(PG_PASSWORD, safe='')}@db.internal:5432/app",
    f"postgresql://app@db.internal/app?password={quote(PG_PASSWORD, safe='')}",
    psycopg.conninfo.make_conninfo(host="db", user="app", password=PG_PASSWORD),
    "host=db user=app password = Pg-s3cret dbname=app",
    # libpq's sslpassword is the passphrase of the client's TLS key: a secret too.
    f"postgresql://app@db.internal/app?sslpassword={quote(PG_PASSWORD, safe='')}",
    f"host=db user=app sslpassword='{PG_PASSWORD.replace(chr(39), '')}'",
]


@pytest.mark.parametrize("dsn", DSNS_WITH_SECRETS)
def test_settings_repr_hides_every_password(dsn: str) -> None:
    settings = kvfast.Settings(redis_url=f"redis://u:{quote(REDIS_PASSWORD, safe='')}@h/0",
                               pg_dsn=dsn)
    for text in (repr(settings), str(settings), redact(dsn)):
        assert "Pg-s3cret" not in text, text


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db user=app password=Pg-s3cret dbname=app nonsense=1",  # unknown keyword
        "postgresql://app:Pg-s3cret@db/app?nonsense=1",
        # The password under a keyword libpq does not know (a typo in the case):
        # still the user's secret.
        "host=db user=app PASSWORD=Pg-s3cret dbname=app",
    ],
)
def test_config_errors_hide_the_password_of_a_malformed_dsn(dsn: str) -> None:
    with pytest.raises(kvfast.ConfigError) as info:
        kvfast.Settings(redis_url="redis://h/0", pg_dsn=dsn)
    assert "Pg-s3cret" not in _describe(info.value), str(info.value)


# -- hostile identifiers ---------------------------------------------------------------------------

HOSTILE_TABLE = 'x"; DROP TABLE victims; --'
HOSTILE_MODULE = f'''
"""A model whose table and column names are quotes, spaces, SQL keywords, injections."""
import dataclasses
from typing import Any

import kvfast

TABLE = {HOSTILE_TABLE!r}
FIELDS = {{
    "select": int,
    'my "odd" col': str,
    "from where": str | None,
    "Robert'); DROP TABLE victims;--": int | None,
    "user": dict[str, Any] | None,
}}


def _init(self: Any, **values: Any) -> None:
    for name in FIELDS:
        setattr(self, name, values.get(name))


Hostile = type("Hostile", (), {{"__annotations__": FIELDS, "__init__": _init,
                                "__module__": __name__, "__qualname__": "Hostile"}})
# Field names that are not identifiers: no generated __init__/__repr__/__eq__.
Hostile = dataclasses.dataclass(init=False, repr=False, eq=False)(Hostile)
Hostile = kvfast.model(table=TABLE, key="select")(Hostile)
'''
ODD, WHERE, ROBERT = 'my "odd" col', "from where", "Robert'); DROP TABLE victims;--"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[type, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "kvfast_hostile_models.py").write_text(HOSTILE_MODULE)
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("kvfast_hostile_models")
    finally:
        sys.path.remove(str(folder))
    return module.Hostile, folder


class Monitor(threading.Thread):
    """Every command a Redis server runs (MONITOR), as raw lines."""

    def __init__(self, port: int) -> None:
        super().__init__(name="redis-monitor", daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.sock.settimeout(0.2)
        self.lines: list[bytes] = []
        self.done = threading.Event()

    def run(self) -> None:
        buf = b""
        while not self.done.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
            *complete, buf = buf.split(b"\r\n")
            self.lines += complete

    def stop(self) -> list[bytes]:
        time.sleep(0.3)
        self.done.set()
        self.join(10)
        self.sock.close()
        return self.lines


def test_hostile_table_and_column_names_drain_and_inject_nothing(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any],
    hostile: tuple[type, Path],
) -> None:
    model, folder = hostile
    victims_table(fpg)
    settings = fault_settings(fault_servers, partitions=8)
    monitor = Monitor(fault_servers.redis_port)
    monitor.start()
    try:
        with kvfast.Repository(model, settings) as repo:
            repo.create_many(
                model(**{"select": k, ODD: f"v{k} '; DROP TABLE victims; --",
                         WHERE: None if k % 2 else 'x") OR 1=1 --',
                         ROBERT: k, "user": {"k": k, "'": '"'}})
                for k in range(1, 61)
            )
            repo.update_many({k: {ODD: "updated", ROBERT: None} for k in range(1, 61, 4)})
            repo.delete_many(range(2, 61, 5))
        code, out = run_supervisor(settings, "--create-tables", "--drain-until-empty",
                                   workers=2, models=["kvfast_hostile_models"],
                                   pythonpath=[str(folder)])
        assert code == 0, out[-3000:]
        with kvfast.Repository(model, settings) as repo:
            obj = repo.get_by_id(5)
            assert obj is not None and getattr(obj, ODD) == "updated"
            assert getattr(obj, ROBERT) is None
    finally:
        lines = monitor.stop()
    assert_victims_intact(fpg)
    rows = pg_objects(fpg, model)
    assert sorted(rows) == [k for k in range(1, 61) if k % 5 != 2]
    assert getattr(rows[4], WHERE) == 'x") OR 1=1 --'
    converged(fr, fpg, settings, models=[model])
    tables = {name for (name,) in fpg.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
    assert tables == {HOSTILE_TABLE, "kvfast_fence", "kvfast_models", "victims"}
    columns = {name for (name,) in fpg.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0",
        (sql.Identifier(HOSTILE_TABLE).as_string(fpg),)).fetchall()}
    assert columns == {"select", ODD, WHERE, ROBERT, "user"}

    # The Lua Redis ran is kvfast's files, by SHA; no script text was built from data.
    files = {hashlib.sha1(source(name)).hexdigest() for name in SCRIPT_NAMES}
    commands = [_monitor_command(line) for line in lines]
    commands = [c for c in commands if c is not None]
    evalsha = {args[0] for name, args in commands if name == "EVALSHA"}
    loads = [args[1] for name, args in commands if name == "SCRIPT" and args[0] == "LOAD"]
    assert evalsha and evalsha <= files, evalsha - files
    assert not [c for c in commands if c[0] in ("EVAL", "EVAL_RO", "FUNCTION", "FCALL")]
    for body in loads:
        assert re.match(r"-- [a-z]+\.lua: ", body), body[:80]
        assert "DROP TABLE" not in body


def _monitor_command(line: bytes) -> tuple[str, list[str]] | None:
    """("CMD", [first args]) of a MONITOR line run by a client (not by a script)."""
    match = re.match(rb'\+[\d.]+ \[\d+ ([^\]]+)\] (.*)$', line)
    if match is None or match.group(1) == b"lua":
        return None
    args = re.findall(rb'"((?:[^"\\]|\\.)*)"', match.group(2))
    if not args:
        return None
    text = [a.decode("utf-8", "replace") for a in args[:3]]
    return text[0].upper(), text[1:]


# -- TLS ------------------------------------------------------------------------------------------


def _make_certs(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1; returns the CA file."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make test certificates")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=kvfast test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return folder / "ca.crt"


def test_data_path_over_tls(
    fault_servers: FaultServers, fpg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """``rediss://`` end to end, against a redis-server with ``--tls-port`` (Debian's
    7.0 build has TLS); a client that does not trust the server's CA is refused."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = _make_certs(certs)
    url = (f"rediss://127.0.0.1:{TLS_REDIS_PORT}/0?ssl_cert_reqs=required"
           f"&ssl_ca_certs={quote(str(ca))}")
    server = RedisProcess(
        TLS_REDIS_PORT, tmp_path / "redis", "--port", "0", "--tls-port", str(TLS_REDIS_PORT),
        "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", url=url,
    )
    try:
        server.start()
    except AssertionError as exc:
        if "TLS" in server.log_tail() or "tls" in str(exc).lower():
            pytest.skip(f"this redis-server has no TLS support: {server.log_tail(5)}")
        raise
    try:
        kvfast.create_tables(fpg, [kvfast.model_info(m) for m in (DRide, DDriver)])
        settings = fault_settings(fault_servers, redis_url=url, partitions=8)
        write_some(settings)
        code, out = run_supervisor(settings, "--drain-until-empty", workers=2, models=MODELS)
        assert code == 0, out[-3000:]
        admin = server.client()
        try:
            assert admin.connection_pool.connection_class is redis.SSLConnection
            converged(admin, fpg, settings)
        finally:
            admin.close()
        # Without the CA the server's certificate is not trusted; plain TCP is refused.
        for bad in (f"rediss://127.0.0.1:{TLS_REDIS_PORT}/0",
                    f"redis://127.0.0.1:{TLS_REDIS_PORT}/0"):
            broken = dataclasses.replace(settings, redis_url=bad)
            with (kvfast.Repository(DRide, broken) as rides,
                  pytest.raises(kvfast.RedisUnavailable) as info):
                rides.get_by_id(1)
            if bad.startswith("rediss"):
                assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    finally:
        server.stop()
