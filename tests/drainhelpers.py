"""Helpers shared by the drain-path tests (plain functions, no fixtures).

* ``start_supervisor`` / ``run_supervisor``: ``python -m kvfast.supervisor`` as a
  subprocess in its own session, output captured in a file, always reaped.
* ``converged``: every PostgreSQL row equals its Redis object and the other way
  round, no tombstone left, nothing queued or in flight.
* ``produce_mixed``: ``kvfast.loadgen``'s mixed create / partial update / delete
  load on a shared key space, run in N ``spawn`` processes (``producers``).
* ``hold_batch``: a child process that claims one batch (and optionally commits
  it) and then stops itself with SIGSTOP, for the crash and stale-drainer tests.

Key names are spelled out here from their documented layout (``keys.py``), so
the tests check that layout rather than echo kvfast's own code.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis
from drainmodels import LOADS, MODELS, DRide
from helpers import same_json
from psycopg import sql

import kvfast
from kvfast import loadgen
from kvfast.batch import build_batch
from kvfast.client import connect_pg
from kvfast.drainer import Drainer
from kvfast.model import TOMBSTONE_FIELD
from kvfast.pgcopy import Applier

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
UTC = dt.UTC
SPAWN = multiprocessing.get_context("spawn")

# -- key names (keys.py layout) ------------------------------------------------------


def tag(settings: kvfast.Settings, p: int) -> str:
    return f"{{{settings.namespace}:{p}}}"


def _key(suffix: str) -> Callable[[kvfast.Settings, int], str]:
    def name(settings: kvfast.Settings, p: int) -> str:
        return f"{tag(settings, p)}:{suffix}"

    name.__name__ = name.__qualname__ = f"key_{suffix}"
    return name


#: {ns:p}:q queue, :f in-flight entries, :fm in-flight meta, :d dead letters, :s counters
queue_key = _key("q")
inflight_key = _key("f")
inflight_meta_key = _key("fm")
dead_key = _key("d")
counters_key = _key("s")


def partition_of(settings: kvfast.Settings, model: type, key: Any) -> int:
    return kvfast.model_info(model).partition_of(str(key), settings.partitions)


# -- state of the drain in Redis -------------------------------------------------------


def busy_partitions(r: redis.Redis, settings: kvfast.Settings) -> dict[str, list[int]]:
    """Partitions with queued entries, an in-flight list or in-flight metadata."""
    out: dict[str, list[int]] = {"queued": [], "inflight": [], "inflight_meta": []}
    for p in range(settings.partitions):
        if r.llen(queue_key(settings, p)):
            out["queued"].append(p)
        if r.exists(inflight_key(settings, p)):
            out["inflight"].append(p)
        if r.exists(inflight_meta_key(settings, p)):
            out["inflight_meta"].append(p)
    return out


def is_idle(r: redis.Redis, settings: kvfast.Settings) -> bool:
    return not any(busy_partitions(r, settings).values())


def assert_idle(r: redis.Redis, settings: kvfast.Settings) -> None:
    busy = busy_partitions(r, settings)
    assert not any(busy.values()), f"queues or in-flight keys not empty: {busy}"


def wait_idle(r: redis.Redis, settings: kvfast.Settings, timeout: float = 90.0) -> None:
    """Wait until nothing is queued and nothing is in flight (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while not is_idle(r, settings):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still busy after {timeout}s: {busy_partitions(r, settings)}"
            )
        time.sleep(0.1)


def counter_total(r: redis.Redis, settings: kvfast.Settings, name: str) -> int:
    """The sum of every partition's counter ``name`` (drained, dead ...)."""
    return sum(int(r.hget(counters_key(settings, p), name) or 0)
               for p in range(settings.partitions))


def drained_total(r: redis.Redis, settings: kvfast.Settings) -> int:
    return counter_total(r, settings, "drained")


def dead_letters(r: redis.Redis, settings: kvfast.Settings) -> list[tuple[int, dict[str, Any]]]:
    """Every dead letter as (partition, parsed JSON document)."""
    return [
        (p, orjson.loads(raw))
        for p in range(settings.partitions)
        for raw in r.lrange(dead_key(settings, p), 0, -1)
    ]


def fence_epoch(pg: psycopg.Connection[Any], settings: kvfast.Settings, p: int) -> int | None:
    row = pg.execute(
        "SELECT epoch FROM kvfast_fence WHERE namespace = %s AND partition = %s",
        (settings.namespace, p),
    ).fetchone()
    return None if row is None else int(row[0])


# -- comparing values ----------------------------------------------------------------


def same_value(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same stored value: same type, same value, strictly."""
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dt.datetime):
        zero = dt.timedelta(0)
        return a == b and a.utcoffset() == zero and b.utcoffset() == zero
    if isinstance(a, Decimal):
        ea, eb = a.as_tuple().exponent, b.as_tuple().exponent
        assert isinstance(ea, int) and isinstance(eb, int)
        # numeric keeps the scale (digits after the point), not a positive exponent.
        return a == b and (ea == eb or (ea >= 0 and eb >= 0))
    if isinstance(a, (dict, list)):
        return same_json(a, b)
    return bool(a == b)


def differences(a: Any, b: Any, labels: tuple[str, str] = ("pg", "redis")) -> list[str]:
    return [
        f"{f.name}: {labels[0]} {getattr(a, f.name)!r} != {labels[1]} {getattr(b, f.name)!r}"
        for f in dataclasses.fields(a)
        if not same_value(getattr(a, f.name), getattr(b, f.name))
    ]


# -- PostgreSQL and Redis contents ---------------------------------------------------------


def create_tables(pg: psycopg.Connection[Any], models: Iterable[type] = MODELS) -> None:
    kvfast.create_tables(pg, [kvfast.model_info(m) for m in models])


def pg_objects(pg: psycopg.Connection[Any], model: type) -> dict[Any, Any]:
    """Every row of the model's table as a model instance, by key."""
    info = kvfast.model_info(model)
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(f.name) for f in info.fields),
        sql.Identifier(info.table),
    )
    objs = [info.from_pg_row(row) for row in pg.execute(query).fetchall()]
    return {getattr(o, info.key): o for o in objs}


def redis_objects(
    r: redis.Redis, settings: kvfast.Settings, model: type
) -> tuple[dict[Any, Any], list[str]]:
    """(live objects by key read through a Redis-only Repository, tombstoned keys)."""
    info = kvfast.model_info(model)
    marker = f":o:{info.table}:"
    live: list[Any] = []
    tombstones: list[str] = []
    pattern = f"{{{settings.namespace}:*}}{marker}*"
    for name in r.scan_iter(match=pattern, count=1000):
        text = name.decode()
        key_str = text.split(marker, 1)[1]
        if r.hexists(name, TOMBSTONE_FIELD):
            tombstones.append(text)
        else:
            live.append(info.key_field.ftype.from_hash(key_str.encode()))
    redis_only = dataclasses.replace(settings, pg_dsn=None)
    with kvfast.Repository(model, redis_only) as repo:
        objs = repo.get_many(live)
    return {k: o for k, o in zip(live, objs, strict=True) if o is not None}, tombstones


def converged(
    r: redis.Redis,
    pg: psycopg.Connection[Any],
    settings: kvfast.Settings,
    models: Sequence[type] = MODELS,
    *,
    diverged: dict[type, set[Any]] | None = None,
    allow_dead: bool = False,
) -> dict[type, int]:
    """Assert PostgreSQL == Redis for ``models`` and an idle drain; return rows per model.

    ``diverged`` names keys allowed to differ (their writes were dead-lettered).
    """
    assert_idle(r, settings)
    if not allow_dead:
        dead = dead_letters(r, settings)
        assert not dead, f"{len(dead)} dead letters, first: {dead[:3]}"
    counts: dict[type, int] = {}
    for model in models:
        skip = (diverged or {}).get(model, set())
        in_pg = pg_objects(pg, model)
        in_redis, tombstones = redis_objects(r, settings, model)
        assert not tombstones, f"tombstones left after the drain: {tombstones[:10]}"
        only_pg = sorted(set(in_pg) - set(in_redis) - skip, key=repr)
        only_redis = sorted(set(in_redis) - set(in_pg) - skip, key=repr)
        assert not only_pg, f"{model.__name__}: rows in PostgreSQL only: {only_pg[:20]}"
        assert not only_redis, f"{model.__name__}: objects in Redis only: {only_redis[:20]}"
        problems = []
        for key, obj in in_pg.items():
            if key in skip or key not in in_redis:
                continue
            diffs = differences(obj, in_redis[key])
            if diffs:
                problems.append(f"{model.__name__} {key!r}: {diffs}")
        assert not problems, f"{len(problems)} rows differ:\n" + "\n".join(problems[:20])
        counts[model] = len(in_pg)
    return counts


# -- a mixed load (kvfast.loadgen) ------------------------------------------------------------

#: the drain tests' mix: single and batched creates, partial updates (often of one key
#: several times in a call), deletes, on a key space the producers share
MIX = loadgen.Mix(create=0.38, update=0.42, delete=0.20, sizes=(1, 1, 1, 1, 3, 5, 10),
                  single=0.8, partial=True, repeat=0.5)


def produce_mixed(
    settings: kvfast.Settings,
    seed: int,
    n_ops: int,
    keys_per_model: int = 150,
    stop_file: str | None = None,
) -> int:
    """Run ``n_ops`` random writes (or until ``stop_file`` exists); return entries queued."""
    gen = loadgen.LoadGenerator(LOADS, mix=MIX, seed=seed, keys=keys_per_model)
    with kvfast.Client(settings) as client:
        produced = loadgen.produce(gen, loadgen.repositories(client, MODELS), None, ops=n_ops,
                                   stop=loadgen.stop_file_exists(stop_file))
    return produced.entries


@contextlib.contextmanager
def producers(
    settings: kvfast.Settings,
    n: int,
    n_ops: int,
    *,
    keys_per_model: int = 150,
    stop_file: str | None = None,
    seed: int = 0,
) -> Iterator[list[concurrent.futures.Future[int]]]:
    """``n`` producer processes running ``produce_mixed``; the futures give entry counts."""
    args = [(settings, seed * 1000 + i, n_ops, keys_per_model, stop_file) for i in range(n)]
    with loadgen.Spawned(produce_mixed, args, stop_file=stop_file) as spawned:
        try:
            yield spawned.futures
        finally:
            spawned.stop()


def produce_in_processes(settings: kvfast.Settings, n: int, n_ops: int, seed: int = 0) -> int:
    """Run ``n`` producers to completion; return the total entries queued."""
    with producers(settings, n, n_ops, seed=seed) as futures:
        return sum(f.result(timeout=300) for f in futures)


# -- the supervisor as a subprocess -----------------------------------------------------------


def subprocess_env(
    extra: dict[str, str] | None = None, pythonpath: Sequence[str] = ()
) -> dict[str, str]:
    """The test environment without any KVFAST_* variable, ``tests/`` on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVFAST_")}
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, str(TESTS_DIR)])
    env.update(extra or {})
    return env


def supervisor_args(
    settings: kvfast.Settings,
    *flags: str,
    workers: int = 3,
    models: Sequence[str] = ("drainmodels",),
    connection: bool = True,
    tuning: bool = True,
) -> list[str]:
    """The command line; ``connection``/``tuning`` False leave those flags to the env."""
    args = [sys.executable, "-m", "kvfast.supervisor"]
    if connection:
        assert settings.pg_dsn
        args += ["--redis-url", settings.redis_url, "--pg-dsn", settings.pg_dsn]
    if tuning:
        args += [
            "--partitions", str(settings.partitions),
            "--lease-ms", str(settings.lease_ms),
            "--batch-size", str(settings.batch_size),
            "--drain-interval-ms", str(settings.drain_interval_ms),
            "--workers", str(workers),
        ]
    for m in models:
        args += ["--models", m]
    return args + list(flags)


class SupervisorProcess:
    """A running supervisor: its Popen, its output (a file), its drainer pids."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix="kvfast-supervisor-", suffix=".log")
        self._log = os.fdopen(fd, "ab")
        self.args = args
        self.proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return Path(self.log_path).read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisor did not exit within {timeout}s; output:\n{self.output()[-4000:]}"
            ) from None

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def drainers(self) -> list[int]:
        return children_of(self.pid)

    def wait_drainers(
        self, n: int, timeout: float = 30.0, exclude: Iterable[int] = ()
    ) -> list[int]:
        """Wait until ``n`` drainer children run (none of them in ``exclude``)."""
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.drainers() if p not in excluded]
            if len(pids) >= n:
                return pids
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"expected {n} drainers, have {pids}; output:\n{self.output()[-3000:]}"
                )
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        # Drainers orphaned by a killed supervisor stay in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)

    def __enter__(self) -> SupervisorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_supervisor(
    settings: kvfast.Settings,
    *flags: str,
    workers: int = 3,
    models: Sequence[str] = ("drainmodels",),
    env: dict[str, str] | None = None,
    pythonpath: Sequence[str] = (),
    connection: bool = True,
    tuning: bool = True,
) -> SupervisorProcess:
    args = supervisor_args(settings, *flags, workers=workers, models=models,
                           connection=connection, tuning=tuning)
    return SupervisorProcess(args, subprocess_env(env, pythonpath))


def run_supervisor(
    settings: kvfast.Settings, *flags: str, timeout: float = 120.0, **kwargs: Any
) -> tuple[int, str]:
    """Run a supervisor to its end; return (exit code, output)."""
    with start_supervisor(settings, *flags, **kwargs) as sup:
        code = sup.wait(timeout)
        return code, sup.output()


def drain_until_empty(settings: kvfast.Settings, workers: int = 3, timeout: float = 120.0) -> str:
    """``--drain-until-empty`` with ``workers`` drainers; asserts exit 0; returns the output."""
    code, out = run_supervisor(settings, "--drain-until-empty", workers=workers, timeout=timeout)
    assert code == 0, f"--drain-until-empty exited {code}:\n{out[-4000:]}"
    return out


# -- processes ----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ..." where comm may hold spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return sorted(out)


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Wait until ``pid`` is stopped by a signal (state T)."""
    deadline = time.monotonic() + timeout
    while True:
        fields = _stat_fields(pid)
        if fields is not None and fields[0] in ("T", "t"):
            return
        if fields is None or time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop (stat: {fields})")
        time.sleep(0.01)


# -- a drainer that stops itself in the middle of a batch -------------------------------------


def ack_args(
    settings: kvfast.Settings, p: int, owner: str, epoch: int
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of an ack.lua call without dead letters or tombstones (its header)."""
    keys = [inflight_key(settings, p), inflight_meta_key(settings, p), dead_key(settings, p),
            counters_key(settings, p)]
    return keys, [owner, epoch, TOMBSTONE_FIELD, 0, 0]


def hold_batch(settings: kvfast.Settings, stage: str, conn: Any) -> None:
    """Child process: claim one batch; with ``stage == "committed"`` apply and commit it.

    Then report ``{"parts": {partition: (epoch, entries)}, "owner"}`` on ``conn`` and stop
    with SIGSTOP (the test kills it there, or resumes it with SIGCONT).  Resumed,
    it does what a drainer would do next (ack after a commit; apply then ack
    after a claim) and reports ``{"ack": ack.lua's reply, "stale", "acked"}``.
    """
    drainer = Drainer(settings)
    try:
        claim = drainer.claim()
        if claim is None:
            conn.send(None)
            return
        epochs = {part.partition: part.epoch for part in claim.parts}
        if stage == "committed":
            with connect_pg(settings, autocommit=False) as pgconn:
                Applier(pgconn, settings.namespace).apply(build_batch(claim.slices()), epochs)
        conn.send({"parts": {part.partition: (part.epoch, part.entries) for part in claim.parts},
                   "owner": drainer.owner})
        os.kill(os.getpid(), signal.SIGSTOP)
        # Resumed: the lease has long expired and another drainer owns the partition.
        calls = [ack_args(settings, p, drainer.owner, e) for p, e in epochs.items()]
        result: dict[str, Any] = {}
        if stage == "committed":
            result["ack"] = max(int(x) for x in drainer.client.eval_many("ack", calls))
        report = drainer.process(claim)
        result.update(stale=report.stale > 0, acked=report.acked)
        if stage != "committed":
            result["ack"] = max(int(x) for x in drainer.client.eval_many("ack", calls))
        conn.send(result)
    finally:
        drainer.close()
        conn.close()


class HeldBatch:
    """A ``hold_batch`` child: ``info`` is what it claimed; kill or resume it."""

    def __init__(self, settings: kvfast.Settings, stage: str) -> None:
        self.parent_conn, child_conn = SPAWN.Pipe()
        self.process = SPAWN.Process(target=hold_batch, args=(settings, stage, child_conn),
                                     name=f"held-batch-{stage}")
        self.process.start()
        child_conn.close()
        if not self.parent_conn.poll(60):
            raise AssertionError("the held-batch child reported nothing")
        info = self.parent_conn.recv()
        assert info is not None, "the held-batch child found nothing to claim"
        self.info: dict[str, Any] = info
        assert self.process.pid is not None
        self.pid: int = self.process.pid
        wait_stopped(self.pid)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.process.join(30)
        assert self.process.exitcode == -signal.SIGKILL

    def resume(self, timeout: float = 60.0) -> dict[str, Any]:
        os.kill(self.pid, signal.SIGCONT)
        if not self.parent_conn.poll(timeout):
            raise AssertionError("the resumed drainer reported nothing")
        result: dict[str, Any] = self.parent_conn.recv()
        self.process.join(30)
        assert self.process.exitcode == 0
        return result

    def close(self) -> None:
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGKILL)
            self.process.join(30)
        self.process.close()
        self.parent_conn.close()


def wait_lease_expired(r: redis.Redis, settings: kvfast.Settings, p: int) -> None:
    """Wait until the in-flight batch of ``p`` has a lease deadline in the past (Redis time)."""
    deadline_ms = int(r.hget(inflight_meta_key(settings, p), "deadline") or 0)
    assert deadline_ms, f"partition {p} has no batch in flight"
    while True:
        secs, micros = r.time()
        now_ms = secs * 1000 + micros // 1000
        if now_ms > deadline_ms:
            return
        time.sleep(max(0.01, (deadline_ms - now_ms) / 1000))


def drain_in_process(settings: kvfast.Settings) -> int:
    """Drain everything in this process (one drainer); return the entries processed."""
    drainer = Drainer(settings)
    try:
        return drainer.drain_until_empty()
    finally:
        drainer.close()


def ride(key: int, **overrides: Any) -> DRide:
    values: dict[str, Any] = {"id": key, "rider": "ann", "fare_cents": 1000, "counter": 0,
                              "status": "new", "distance": Decimal("12.500"),
                              "updated_at": dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)}
    values.update(overrides)
    return DRide(**values)


def keys_in_partition(settings: kvfast.Settings, model: type, p: int, n: int) -> list[int]:
    """The first ``n`` int keys (from 1) that hash to partition ``p``."""
    out: list[int] = []
    k = 0
    while len(out) < n:
        k += 1
        if partition_of(settings, model, k) == p:
            out.append(k)
    return out
