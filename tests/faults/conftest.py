"""Fault injection: a private pair of servers, a mixed load, and the final check.

The scenarios stop PostgreSQL, restart Redis, set passwords and kill
connections, so they never run against the shared development servers
(:16379 / :15432) that other people's tests and benchmarks use.  The session
fixture ``fault_servers`` starts a separate pair with ``tools/services``
(``KVFAST_SERVICES_DIR=.kvfast/faults``, Redis 26379, PostgreSQL 25432; override
with ``KVFAST_FAULT_REDIS_PORT`` / ``KVFAST_FAULT_PG_PORT``) and stops it at the
end of the session (``KVFAST_FAULT_KEEP=1`` leaves it running).  Scenarios that
need a Redis with other settings (AOF, a password, TLS) start a ``redis-server``
of their own on the next ports (``RedisProcess``).

Every scenario drives a real ``python -m kvfast.supervisor`` subprocess with a
mixed load from several producer processes (``producers``: creates, create_many,
partial updates of random column subsets, deletes, over five models and a key
space the producers share) and ends with ``final_check``: every PostgreSQL row
equals its Redis object, deleted keys are absent, nothing is queued or in
flight, every dead letter carries its entry and its reason, and the drained +
dead-lettered counters add up to the entries the producers queued.

The dead-letter CLI and security tests live here too, for the same servers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
from drainhelpers import (
    SPAWN,
    SupervisorProcess,
    _driver_values,
    _ride_values,
    converged,
    counters_key,
    dead_letters,
    is_idle,
    subprocess_env,
    supervisor_args,
)
from drainmodels import DDriver, DRide

import kvfast
from kvfast.demo import Booking, Driver, Ride

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

#: every model of the load, and the modules the supervisor imports for them
LOAD_MODELS: tuple[type, ...] = (DRide, DDriver, Booking, Driver, Ride)
SUPERVISOR_MODELS = ("drainmodels", "kvfast.demo")
UTC = dt.UTC


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


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[FaultServers]:
    with server_session() as servers:
        yield servers


@pytest.fixture
def fr(fault_servers: FaultServers) -> Iterator[redis.Redis]:
    """A raw client of the private Redis, everything flushed."""
    client = fresh_redis(fault_servers)
    yield client
    client.close()


@pytest.fixture
def fpg(fault_servers: FaultServers) -> Iterator[psycopg.Connection[Any]]:
    with fresh_pg(fault_servers) as conn:
        yield conn


@pytest.fixture
def fsettings(
    fault_servers: FaultServers, fr: redis.Redis, fpg: psycopg.Connection[Any]
) -> kvfast.Settings:
    return fault_settings(fault_servers)


def create_load_tables(pg: psycopg.Connection[Any]) -> None:
    kvfast.create_tables(pg, [kvfast.model_info(m) for m in LOAD_MODELS])


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


# -- the mixed load ---------------------------------------------------------------------------

FLEET = 5000  # Booking.driver_id values that exist in the poison scenario's parent table
_STATUSES = ("new", "assigned", "started", "completed", "cancelled", "dünn ✓", "")
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=UTC)


def _ts(rng: random.Random) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=rng.randrange(10**14))


def _booking_values(rng: random.Random) -> dict[str, Any]:
    t = _ts(rng)
    return {"driver_id": rng.choice((None, rng.randrange(FLEET))),
            "rider_id": rng.randrange(10**6), "status": rng.choice(_STATUSES),
            "fare_cents": rng.randrange(0, 10**6), "created_at": t, "updated_at": _ts(rng)}


def _demo_driver_values(rng: random.Random) -> dict[str, Any]:
    return {"name": f"driver {rng.randrange(10**4)} ✓", "phone": f"+91{rng.randrange(10**10):010d}",
            "rating": rng.choice((0.0, 4.75, 1 / 3, rng.random() * 5)),
            "active": rng.random() < 0.8,
            "vehicle": rng.choice(({}, {"plate": f"KA{rng.randrange(10**6)}", "seats": 4,
                                        "ev": rng.random() < 0.3})),
            "updated_at": _ts(rng)}


def _demo_ride_values(rng: random.Random) -> dict[str, Any]:
    return {"booking_id": rng.randrange(10**6), "driver_id": rng.randrange(FLEET),
            "distance_km": Decimal(rng.randrange(10**7)).scaleb(-3),
            "route": [[12.97, 77.59], [rng.randrange(90), rng.random()]],
            "started_on": (_EPOCH + dt.timedelta(days=rng.randrange(1000))).date(),
            "finished_at": rng.choice((None, _ts(rng)))}


#: model -> (weight, values(rng), key of index i)
_LOAD: dict[type, tuple[float, Callable[[random.Random], dict[str, Any]],
                        Callable[[int], Any]]] = {
    DRide: (0.25, _ride_values, lambda i: i + 1),
    DDriver: (0.20, _driver_values, lambda i: f"drv-{i}-ü"),
    Booking: (0.25, _booking_values, lambda i: i + 1),
    Driver: (0.15, _demo_driver_values, lambda i: i + 1),
    Ride: (0.15, _demo_ride_values, lambda i: f"r{i}"),
}
_POISON_KINDS = ("check", "fk", "varchar")
POISON_KEY_BASE = 10**12


def make_obj(model: type, key: Any, rng: random.Random) -> Any:
    info = kvfast.model_info(model)
    return model(**{info.key: key}, **_LOAD[model][1](rng))


def poison_obj(kind: str, index: int, serial: int, rng: random.Random) -> tuple[Any, type, Any]:
    """A create PostgreSQL rejects (see ``add_poison_constraints``), on a key of its own."""
    if kind == "check":
        key: Any = POISON_KEY_BASE + index * 10**6 + serial
        obj = make_obj(DRide, key, rng)
        obj.counter = -1  # CHECK (counter >= 0)
        return obj, DRide, key
    if kind == "fk":
        key = POISON_KEY_BASE + index * 10**6 + serial
        obj = make_obj(Booking, key, rng)
        obj.driver_id = 10**9 + serial  # no such fleet row
        return obj, Booking, key
    key = f"poison-{index}-{serial}"
    obj = make_obj(DDriver, key, rng)
    obj.name = "x" * 41 + " too long"  # varchar(40)
    return obj, DDriver, key


def add_poison_constraints(pg: psycopg.Connection[Any]) -> None:
    """What the poison rows break: a CHECK, a foreign key and a varchar(40)."""
    pg.execute("ALTER TABLE d_rides ADD CONSTRAINT f_counter_nonneg CHECK (counter >= 0)")
    pg.execute("CREATE TABLE f_fleet (id bigint PRIMARY KEY)")
    pg.execute("INSERT INTO f_fleet SELECT generate_series(0, %s)", (FLEET - 1,))
    pg.execute("ALTER TABLE bookings ADD CONSTRAINT f_booking_fleet FOREIGN KEY (driver_id) "
               "REFERENCES f_fleet (id)")
    pg.execute("ALTER TABLE d_drivers ALTER COLUMN name TYPE varchar(40)")


#: what each poison kind's dead letter says (SQLSTATE and name)
POISON_ERRORS = {"check": ("23514", "f_counter_nonneg"), "fk": ("23503", "f_booking_fleet"),
                 "varchar": ("22001", "character varying(40)")}


def produce(
    settings: kvfast.Settings,
    index: int,
    seed: int,
    entries: int,
    keys: int = 1000,
    stop_file: str | None = None,
    poison: float = 0.0,
    rate: float | None = None,
) -> dict[str, Any]:
    """One producer process: a mixed load until ``entries`` queue entries (or ``stop_file``),
    at most ``rate`` entries a second when given.

    Writes go to Redis only (``pg_dsn`` dropped): with no TTL an object is never
    in PostgreSQL without being in Redis, so an update of a missing key is a
    NotFound either way, and a stopped PostgreSQL cannot fail a producer.
    Connection errors (``RedisUnavailable``) are retried: the entries of a retried
    write are counted once in ``entries`` and again in ``uncertain`` (the failed
    attempt may have been applied before the connection broke).
    """
    settings = dataclasses.replace(settings, pg_dsn=None)
    rng = random.Random(seed)
    stats: dict[str, Any] = {"entries": 0, "ops": 0, "creates": 0, "updates": 0, "deletes": 0,
                             "not_found": 0, "retries": 0, "loading_errors": 0, "uncertain": 0,
                             "poison": []}
    models = list(_LOAD)
    weights = [_LOAD[m][0] for m in models]
    pools = {m: [_LOAD[m][2](i) for i in range(keys)] for m in models}
    debt = 0.0
    serial = 0
    started = time.monotonic()
    with kvfast.Client(settings) as client:
        repos = {m: kvfast.Repository(m, client=client) for m in models}
        while stats["entries"] < entries:
            if stop_file is not None and stats["ops"] % 20 == 0 and os.path.exists(stop_file):
                break
            stats["ops"] += 1
            if poison and debt >= 1.0:
                kind = _POISON_KINDS[serial % len(_POISON_KINDS)]
                obj, model, key = poison_obj(kind, index, serial, rng)
                serial += 1
                good = [make_obj(model, rng.choice(pools[model]), rng) for _ in range(2)]
                batch = [good[0], obj, good[1]]
                n = _retry(lambda b=batch, m=model: repos[m].create_many(b), stats, 3)
                stats["poison"].append((kvfast.model_info(model).table, key, kind))
                stats["entries"] += n
                stats["creates"] += n
                debt -= 1.0
                continue
            model = rng.choices(models, weights)[0]
            n = _one_op(rng, repos[model], model, pools[model], stats)
            stats["entries"] += n
            if rate:
                ahead = stats["entries"] / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            debt += n * poison / (1 - poison) if poison else 0.0
    stats["elapsed_s"] = time.monotonic() - started
    return stats


def _retry(fn: Callable[[], int], stats: dict[str, Any], entries: int) -> int:
    delay = 0.02
    deadline = time.monotonic() + 120
    while True:
        try:
            return fn()
        except kvfast.RedisUnavailable:
            stats["retries"] += 1
        except kvfast.KvfastError as exc:
            # A Redis that is still loading its AOF answers LOADING, which kvfast
            # reports as a plain KvfastError instead of RedisUnavailable (the bug
            # test_redis_still_loading_is_reported_as_unavailable shows): retried
            # here too, and counted, so the restart scenario can test the rest.
            if "LOADING" not in str(exc):
                raise
            stats["loading_errors"] += 1
        if time.monotonic() > deadline:
            raise TimeoutError("Redis did not come back within 120 s")
        stats["uncertain"] += entries
        time.sleep(delay)
        delay = min(0.5, delay * 2)


def _one_op(rng: random.Random, repo: kvfast.Repository[Any], model: type, pool: list[Any],
            stats: dict[str, Any]) -> int:
    x = rng.random()
    if x < 0.25:
        objs = [make_obj(model, rng.choice(pool), rng) for _ in range(rng.randrange(1, 60))]
        stats["creates"] += len(objs)
        return _retry(lambda: repo.create_many(objs), stats, len(objs))
    if x < 0.35:
        obj = make_obj(model, rng.choice(pool), rng)
        stats["creates"] += 1
        return _retry(lambda: (repo.create(obj), 1)[1], stats, 1)
    if x < 0.75:
        values = _LOAD[model][1]
        items = []
        for _ in range(rng.choice((1, 1, 2, 5, 20, 40))):
            fields = values(rng)
            names = rng.sample(sorted(fields), rng.randrange(1, len(fields) + 1))
            # Often the same key several times in one call: applied in order.
            key = items[-1][0] if items and rng.random() < 0.3 else rng.choice(pool)
            items.append((key, {n: fields[n] for n in names}))

        def update() -> int:
            try:
                return repo.update_many(items)
            except kvfast.NotFound as exc:  # deleted (or never created) keys
                stats["not_found"] += len(exc.keys)
                return len(items) - len(exc.keys)

        n = _retry(update, stats, len(items))
        stats["updates"] += n
        return n
    if x < 0.9:
        doomed = [rng.choice(pool) for _ in range(rng.randrange(1, 20))]
        stats["deletes"] += len(doomed)
        return _retry(lambda: repo.delete_many(doomed), stats, len(doomed))
    key = rng.choice(pool)
    stats["deletes"] += 1
    return _retry(lambda: (repo.delete(key), 1)[1], stats, 1)


class Load:
    """``n`` producer processes (spawned) writing a mixed load; ``result()`` sums them."""

    def __init__(self, settings: kvfast.Settings, n: int, entries_each: int, *, seed: int,
                 keys: int = 1000, poison: float = 0.0, stop_file: str | None = None,
                 rate_each: float | None = None) -> None:
        """``stop_file`` (a path that does not exist yet) lets ``stop()`` end the load."""
        self.stop_file = stop_file
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=n, mp_context=SPAWN)
        self.futures = [
            self.pool.submit(produce, settings, i, seed * 1000 + i, entries_each, keys,
                             stop_file, poison, rate_each)
            for i in range(n)
        ]
        self._result: dict[str, Any] | None = None

    def stop(self) -> None:
        if self.stop_file is not None:
            Path(self.stop_file).touch()

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def result(self, timeout: float = 300.0) -> dict[str, Any]:
        if self._result is None:
            total: dict[str, Any] = {"producers": len(self.futures), "poison": []}
            for f in self.futures:
                for k, v in f.result(timeout=timeout).items():
                    if k == "poison":
                        total["poison"] += v
                    elif k == "elapsed_s":
                        total[k] = max(total.get(k, 0.0), v)
                    else:
                        total[k] = total.get(k, 0) + v
            self._result = total
        return self._result

    def close(self) -> None:
        self.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the supervisor and the final check ----------------------------------------------------------


_KEPT: set[str] = set()


class KeptSupervisor(SupervisorProcess):
    """A supervisor whose output is kept in ``.kvfast/faults/logs/<test>.log`` (every
    supervisor of the test, one after the other), for the post-mortem of a failure."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            folder = SERVICES_DIR / "logs"
            folder.mkdir(parents=True, exist_ok=True)
            test = os.environ.get("PYTEST_CURRENT_TEST", "supervisor").split(" ")[0]
            name = re.sub(r"[^\w.-]+", "_", test.rsplit("::", 1)[-1])
            mode = "a" if name in _KEPT else "w"
            _KEPT.add(name)
            with open(folder / f"{name}.log", mode) as fh:
                fh.write(f"==== {' '.join(self.args)}\n{self.output()}\n")
        super().close()


def supervisor(settings: kvfast.Settings, *flags: str, workers: int = 3,
               env: dict[str, str] | None = None) -> SupervisorProcess:
    """A supervisor of the load's models; its output is kept (see KeptSupervisor)."""
    args = supervisor_args(settings, *flags, workers=workers, models=SUPERVISOR_MODELS)
    return KeptSupervisor(args, subprocess_env(env))


def stats_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "") -> float:
    """Poll ``cond`` every 50 ms; return the seconds it took (AssertionError on timeout)."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.05)
    return time.monotonic() - start


def wait_drained(r: redis.Redis, settings: kvfast.Settings, sup: SupervisorProcess | None = None,
                 timeout: float = 180.0) -> float:
    def tail() -> str:
        return sup.output()[-4000:] if sup is not None else ""

    def idle() -> bool:
        if sup is not None and sup.proc.poll() is not None:
            raise AssertionError(f"the supervisor exited {sup.proc.returncode}:\n{tail()}")
        return is_idle(r, settings)

    return wait_for(idle, timeout, "the queues to drain", tail)


def stop_supervisor(sup: SupervisorProcess, timeout: float = 60.0) -> str:
    """SIGTERM (a warm stop), assert exit 0, return the output."""
    assert sup.proc.poll() is None, f"the supervisor had exited:\n{sup.output()[-4000:]}"
    sup.send(signal.SIGTERM)
    code = sup.wait(timeout)
    out = sup.output()
    assert code == 0, out[-4000:]
    return out


def dead_counter(r: redis.Redis, settings: kvfast.Settings) -> int:
    return sum(int(r.hget(counters_key(settings, p), "dead") or 0)
               for p in range(settings.partitions))


def drained_counter(r: redis.Redis, settings: kvfast.Settings) -> int:
    return sum(int(r.hget(counters_key(settings, p), "drained") or 0)
               for p in range(settings.partitions))


def fence_epochs(pg: psycopg.Connection[Any], settings: kvfast.Settings) -> dict[int, int]:
    rows = pg.execute("SELECT partition, epoch FROM kvfast_fence WHERE namespace = %s",
                      (settings.namespace,)).fetchall()
    return {int(p): int(e) for p, e in rows}


def dead_entry(doc: dict[str, Any]) -> bytes:
    import base64

    if "entry" in doc:
        return str(doc["entry"]).encode("utf-8")
    return base64.b64decode(doc["entry_b64"])


def final_check(
    r: redis.Redis,
    pg: psycopg.Connection[Any],
    settings: kvfast.Settings,
    *,
    produced: int | None,
    uncertain: int = 0,
    diverged: dict[type, set[Any]] | None = None,
    models: Sequence[type] = LOAD_MODELS,
) -> dict[str, Any]:
    """The end of every scenario (see the module docstring); returns the figures."""
    counts = converged(r, pg, settings, models, diverged=diverged, allow_dead=True)
    dead = dead_letters(r, settings)
    for p, doc in dead:
        assert doc.get("error"), f"dead letter without a reason in partition {p}: {doc}"
        assert "entry" in doc or "entry_b64" in doc, f"dead letter without its entry: {doc}"
        assert doc.get("partition") == p, doc
    assert dead_counter(r, settings) == len(dead), "dead-letter counters != dead-letter lists"
    drained = drained_counter(r, settings)
    if produced is not None:
        # Exactly once: every queued entry was acked once, as applied or dead-lettered,
        # however many times its batch was applied.
        assert produced <= drained + len(dead) <= produced + uncertain, (
            f"produced {produced} (+{uncertain} uncertain), drained {drained}, dead {len(dead)}"
        )
    return {"rows": sum(counts.values()), "drained": drained, "dead": len(dead)}


def dead_docs(r: redis.Redis, settings: kvfast.Settings) -> list[dict[str, Any]]:
    return [doc for _, doc in dead_letters(r, settings)]


def entry_of(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(orjson.loads(dead_entry(doc)))


def log_lines(out: str, needle: str) -> list[str]:
    return [line for line in out.splitlines() if needle in line]


_LOADING_DEATH = re.compile(r"KvfastError: Redis refused [^:]+: LOADING ")


def drainer_deaths(out: str) -> tuple[int, int, int]:
    """(drainer process deaths, LOADING tracebacks, lease-keeper threads that died).

    A drainer (or its lease keeper thread) that meets a Redis still loading its
    data set dies today (the bug test_redis_faults.test_redis_still_loading_is_
    reported_as_unavailable shows): the Redis restart scenarios tolerate deaths
    with a LOADING traceback, and only those.
    """
    return (len(log_lines(out, "exited with")), len(_LOADING_DEATH.findall(out)),
            len(log_lines(out, "Exception in thread kvfast-lease")))


def report(name: str, **figures: Any) -> None:
    """Print a scenario's measured figures (shown with ``pytest -rP`` or ``-s``)."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    print(f"FIGURES {name}: {shown}")
