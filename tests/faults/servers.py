"""The private servers of the fault scenarios: a pair from ``tools/services``, extra redis-servers.

The scenarios stop PostgreSQL, restart Redis, set passwords and kill
connections, so they never run against the shared development servers
(:16379 / :15432) that other people's tests and benchmarks use.
``server_session`` starts a separate pair with ``tools/services``
(``KVFAST_SERVICES_DIR=.kvfast/faults``, Redis 26379, PostgreSQL 25432; override
with ``KVFAST_FAULT_REDIS_PORT`` / ``KVFAST_FAULT_PG_PORT``) on first use and
stops it after its last user (``KVFAST_FAULT_KEEP=1`` leaves it running).
Scenarios that need a Redis with other settings (AOF, a password, TLS) start a
``redis-server`` of their own on the next ports (``RedisProcess``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import kvfast

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "tools" / "services"
SERVICES_DIR = Path(
    os.environ.get("KVFAST_FAULT_SERVICES_DIR") or ROOT / ".kvfast" / "faults"
).resolve()
REDIS_PORT = int(os.environ.get("KVFAST_FAULT_REDIS_PORT") or 26379)
PG_PORT = int(os.environ.get("KVFAST_FAULT_PG_PORT") or 25432)
#: extra redis-server processes of single scenarios: AOF, password, TLS
AOF_REDIS_PORT = REDIS_PORT + 1
PASSWORD_REDIS_PORT = REDIS_PORT + 2
TLS_REDIS_PORT = REDIS_PORT + 3
REQUIRE = bool(os.environ.get("CI") or os.environ.get("KVFAST_REQUIRE_SERVICES"))

# -- the private servers -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FaultServers:
    redis_port: int
    pg_port: int
    services_dir: Path

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://kvfast:kvfast@127.0.0.1:{self.pg_port}/kvfast_test"

    @property
    def superuser_dsn(self) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.pg_port}/postgres"

    def superuser_dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.pg_port}/{dbname}"

    def services(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``tools/services ARGS`` on this pair; returns its output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVFAST_")}
        env.update(KVFAST_SERVICES_DIR=str(self.services_dir),
                   KVFAST_REDIS_PORT=str(self.redis_port), KVFAST_PG_PORT=str(self.pg_port))
        done = subprocess.run([str(SERVICES), *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tools/services {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    def stop_pg(self) -> None:
        self.services("down", "pg")

    def start_pg(self) -> None:
        self.services("up", "pg")


_SERVERS = FaultServers(REDIS_PORT, PG_PORT, SERVICES_DIR)
_users = 0
_users_lock = threading.Lock()


@contextlib.contextmanager
def server_session() -> Iterator[FaultServers]:
    """The private pair, started on first use and stopped when its last user is done."""
    global _users
    with _users_lock:
        if _users == 0:
            try:
                _SERVERS.services("up")
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                message = f"cannot start the fault-injection servers: {exc}"
                if REQUIRE:
                    pytest.fail(message, pytrace=False)
                pytest.skip(message)
        _users += 1
    try:
        yield _SERVERS
    finally:
        with _users_lock:
            _users -= 1
            if _users == 0 and not os.environ.get("KVFAST_FAULT_KEEP"):
                _SERVERS.services("down")


def fresh_redis(servers: FaultServers) -> redis.Redis:
    client = redis.Redis.from_url(servers.redis_url)
    client.flushall()
    return client


@contextlib.contextmanager
def fresh_pg(servers: FaultServers) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to an empty ``kvfast_test`` (public schema recreated)."""
    # A previous scenario may have stopped PostgreSQL and failed before restarting it.
    for attempt in range(2):
        try:
            conn = psycopg.connect(servers.pg_dsn, autocommit=True, options="-c timezone=UTC",
                                   connect_timeout=10)
            break
        except psycopg.OperationalError:
            if attempt:
                raise
            servers.start_pg()
    with conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
        yield conn


def fault_settings(servers: FaultServers, **overrides: Any) -> kvfast.Settings:
    values: dict[str, Any] = dict(
        redis_url=servers.redis_url, pg_dsn=servers.pg_dsn, partitions=16, batch_size=1000,
        lease_ms=2000, drain_interval_ms=20, workers=3,
    )
    values.update(overrides)
    return kvfast.Settings(**values)


# -- extra redis-server processes --------------------------------------------------------------


class RedisProcess:
    """A ``redis-server`` of one test (AOF, password, TLS ...): start, crash, restart, stop."""

    def __init__(self, port: int, workdir: Path, *args: str, url: str | None = None,
                 **client_kwargs: Any) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.port = port
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.url = url or f"redis://127.0.0.1:{port}/0"
        self.client_kwargs = client_kwargs
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "redis.log"

    def start(self, *extra: str, wait: bool = True, timeout: float = 30.0) -> None:
        """Start (or restart, on the same dir and port); ``extra`` args for this start only."""
        assert self.proc is None or self.proc.poll() is not None
        deadline = time.monotonic() + 10
        while not port_free(self.port):  # the previous process may still be closing
            if time.monotonic() >= deadline:  # a wait-loop guard, not a timing check
                pytest.fail(f"port {self.port} is taken by another process")
            time.sleep(0.05)
        port_args = [] if "--port" in self.args else ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [self.exe, *port_args, "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--logfile", str(self.log_path), "--save", "", "--protected-mode", "no",
             *self.args, *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready(timeout)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, **self.client_kwargs)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the server answers PING (and has finished loading its AOF)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            client = self.client()
            try:
                if client.ping():
                    return
            except redis.RedisError as exc:  # refused, LOADING ...
                last = exc
            finally:
                client.close()
            time.sleep(0.05)
        raise AssertionError(f"redis-server on {self.port} not ready: {last}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what the fsync policy wrote."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def shutdown(self) -> None:
        """SHUTDOWN: a clean stop (the AOF is flushed and fsynced first)."""
        assert self.proc is not None
        client = self.client()
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        client.close()
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
