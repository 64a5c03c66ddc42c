"""Shared parts of the benchmark suite: configuration, the references, measurement, results.

The benchmarks run against their own Redis database and PostgreSQL database
(``KVFAST_BENCH_REDIS_URL``, default db 5, and ``KVFAST_BENCH_PG_DSN``, default
``kvfast_test_d``) and flush or drop only those, so they can run while the test
suite uses its own databases on the same servers.

Every figure is recorded as a ``Row`` (kvfast, the reference measured in the
same run, the ratio, the issue's target); ``conftest.py`` prints them as a table
at the end of the run and writes ``bench/results/latest.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import orjson
import psycopg
import pytest
import redis
from psycopg import sql

import kvfast
from kvfast.demo import Booking, Driver, Ride
from kvfast.keys import Keys
from kvfast.loadgen import make_booking

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
LOG_DIR = RESULTS_DIR / "logs"

REDIS_URL = os.environ.get("KVFAST_BENCH_REDIS_URL") or "redis://127.0.0.1:16379/5"
PG_DSN = (
    os.environ.get("KVFAST_BENCH_PG_DSN")
    or "postgresql://kvfast:kvfast@127.0.0.1:15432/kvfast_test_d"
)
NAMESPACE = "kvbench"
MODELS = [kvfast.model_info(Booking), kvfast.model_info(Driver), kvfast.model_info(Ride)]
BY_TABLE = {info.table: info for info in MODELS}
PARTITIONS = 64
BATCH_SIZE = 2000
DRAIN_INTERVAL_MS = 100


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip().replace("_", "")
    return int(raw) if raw else default


def env_list(name: str, default: Sequence[int]) -> list[int]:
    raw = os.environ.get(name, "").strip()
    return [int(x) for x in raw.split(",") if x.strip()] if raw else list(default)


#: records per producer round (benchmark 1) and records per create_many call
PRODUCER_N = env_int("KVFAST_BENCH_PRODUCER_N", 100_000)
PRODUCER_BATCH = env_int("KVFAST_BENCH_PRODUCER_BATCH", 5000)
#: requests per redis-benchmark throughput run (HSET and RPUSH each)
REDIS_BENCHMARK_N = env_int("KVFAST_BENCH_REDIS_BENCHMARK_N", 500_000)
#: single round trips timed (benchmark 2)
LATENCY_N = env_int("KVFAST_BENCH_LATENCY_N", 20_000)
#: queued writes drained per run (benchmark 3); see README in conftest for the time budget
# The figure is 1,000,000; a full run at that size took 14 minutes on this
# 2-core machine under a load average of 8 (other sessions' tests), so the default
# is 500,000 to stay well inside the 15-minute budget.
DRAIN_N = env_int("KVFAST_BENCH_DRAIN_N", 500_000)
DRAIN_WORKERS = env_list("KVFAST_BENCH_DRAIN_WORKERS", (1, 2, 4))
#: seconds of paced production per offered rate (benchmark 4)
E2E_SECONDS = env_int("KVFAST_BENCH_E2E_SECONDS", 8)
E2E_RATES = env_list("KVFAST_BENCH_E2E_RATES", (25, 50, 100))
#: queue depths for the claim benchmark (benchmark 5); 10M with KVFAST_BENCH_SCALE_10M=1
SCALE_DEPTHS = env_list("KVFAST_BENCH_SCALE_DEPTHS", (1_000, 10_000, 100_000, 1_000_000))
if os.environ.get("KVFAST_BENCH_SCALE_10M", "") not in ("", "0"):
    SCALE_DEPTHS.append(10_000_000)
SCALE_CLAIM = 1000


def settings(**overrides: Any) -> kvfast.Settings:
    values: dict[str, Any] = {
        "redis_url": REDIS_URL, "pg_dsn": PG_DSN, "namespace": NAMESPACE,
        "partitions": PARTITIONS, "batch_size": BATCH_SIZE,
        "drain_interval_ms": DRAIN_INTERVAL_MS, "workers": 2,
    }
    values.update(overrides)
    return kvfast.Settings(**values)


def keys() -> Keys:
    return Keys(NAMESPACE, PARTITIONS)


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=10)


def pg_connect(*, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(PG_DSN, autocommit=autocommit, options="-c timezone=UTC",
                           application_name="kvfast-bench", connect_timeout=10)


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of ``values`` (the supervisor's definition)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- results -------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the summary: a kvfast figure, its reference, the target."""

    group: str
    figure: str
    unit: str
    kvfast: float | None
    reference: float | None = None
    reference_name: str = ""
    #: "min" / "max": kvfast against target_value; "ratio_min" / "ratio_max": the ratio
    target_kind: str = ""
    target_value: float | None = None
    target: str = ""
    #: "throughput" or "latency": drawn by tools/bench-report
    chart: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.kvfast is None or not self.reference:
            return None
        return self.kvfast / self.reference

    @property
    def status(self) -> str:
        value = self.ratio if self.target_kind.startswith("ratio") else self.kvfast
        if not self.target_kind or self.target_value is None:
            return "info"
        if value is None:
            return "n/a"
        ok = value >= self.target_value if self.target_kind.endswith("min") else (
            value <= self.target_value)
        return "pass" if ok else "MISS"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratio"] = self.ratio
        d["status"] = self.status
        return d


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    #: raw measurements by name, shared between tests and written to the JSON
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows = [r for r in self.rows if (r.group, r.figure) != (row.group, row.figure)]
        self.rows.append(row)
        return row

    def ordered(self) -> list[Row]:
        """Rows by benchmark (producer, latency, drain, e2e, scaling), in recording order."""
        return sorted(self.rows, key=lambda r: GROUPS.index(r.group) if r.group in GROUPS
                      else len(GROUPS))


GROUPS = ("producer", "latency", "drain", "e2e", "scaling")


RESULTS = Results()


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "µs/entry"):
        return f"{value:.3f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def table_lines(rows: Sequence[Row]) -> list[str]:
    header = ("figure", "unit", "kvfast", "reference", "ratio", "seed target", "result")
    body = []
    for r in rows:
        ref = fmt(r.reference, r.unit)
        if r.reference_name and r.reference is not None:
            ref = f"{ref} ({r.reference_name})"
        ratio = r.ratio
        body.append((f"{r.group}: {r.figure}", r.unit, fmt(r.kvfast, r.unit), ref,
                     "-" if ratio is None else f"{ratio:.2f}x", r.target or "-", r.status))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    right = {2, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(b) for b in body)]


# -- Redis ---------------------------------------------------------------------------


def redis_address() -> dict[str, Any]:
    """host/port (or unix socket path), db, user and password of REDIS_URL."""
    parts = urlsplit(REDIS_URL)
    out: dict[str, Any] = {"db": 0, "user": parts.username and unquote(parts.username),
                           "password": parts.password and unquote(parts.password)}
    if parts.scheme == "unix":
        out["path"] = parts.path
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        out["db"] = int(query.get("db", "0"))
    else:
        out["host"] = parts.hostname or "127.0.0.1"
        out["port"] = parts.port or 6379
        if parts.path.strip("/"):
            out["db"] = int(parts.path.strip("/"))
    return out


def flush_redis() -> None:
    """Empty the benchmark database (only that one) and forget its PostgreSQL epochs."""
    with contextlib.closing(redis_client()) as r:
        r.flushdb()
    reset_pg_tables()


def redis_benchmark_path() -> str | None:
    return shutil.which("redis-benchmark") or next(
        (p for p in ("/usr/bin/redis-benchmark", "/usr/local/bin/redis-benchmark")
         if os.access(p, os.X_OK)), None)


def redis_benchmark(command: Sequence[str], *, requests: int, clients: int, pipeline: int,
                    keyspace: int = 1_000_000) -> dict[str, float]:
    """Run redis-benchmark on one command; its CSV line as numbers.

    Returns rps and avg/min/p50/p95/p99/max latency in ms.
    """
    exe = redis_benchmark_path()
    if exe is None:
        raise FileNotFoundError("redis-benchmark is not installed (it comes with redis-server)")
    addr = redis_address()
    args = [exe]
    if "path" in addr:
        args += ["-s", addr["path"]]
    else:
        args += ["-h", addr["host"], "-p", str(addr["port"])]
    if addr["user"]:
        args += ["--user", addr["user"]]
    if addr["password"]:
        args += ["-a", addr["password"]]
    args += ["--dbnum", str(addr["db"]), "-n", str(requests), "-c", str(clients),
             "-P", str(pipeline), "-r", str(keyspace), "--precision", "3", "--csv", *command]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith('"test"')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"redis-benchmark failed ({proc.returncode}): {proc.stderr.strip()}")
    # The test name may hold commas and quotes (a JSON payload): parse from the right.
    values = [float(v.strip().strip('"')) for v in lines[-1].rsplit(",", 7)[1:]]
    names = ("rps", "avg_ms", "min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")
    return dict(zip(names, values, strict=True))


def redis_benchmark_writes(sample: tuple[list[bytes], bytes]) -> tuple[list[str], list[str]]:
    """redis-benchmark's HSET (kvfast's fields, random keys) and RPUSH (its entry) of
    a ``sample_booking_writes`` sample; skips the test without redis-benchmark."""
    if redis_benchmark_path() is None:
        pytest.skip("redis-benchmark is not installed (it comes with redis-server)")
    fields, entry = sample
    hset = ["HSET", "kvbenchrb:o:__rand_int__", *(f.decode() for f in fields)]
    rpush = ["RPUSH", "kvbenchrb:q:__rand_int__", entry.decode()]
    return hset, rpush


def sample_booking_writes() -> tuple[list[bytes], bytes]:
    """The HSET field/value arguments and the queue entry kvfast writes for one booking.

    Read back from Redis after a real ``create`` into the emptied benchmark
    database, so the references send the same bytes whatever the key layout.
    """
    flush_redis()
    with kvfast.Repository(Booking, settings()) as repo:
        repo.create(make_booking(424242, dt.datetime.now(dt.UTC)))
    fields: dict[bytes, bytes] = {}
    entry = b""
    with contextlib.closing(redis_client()) as r:
        for key in r.scan_iter(count=1000):
            kind = r.type(key)
            if kind == b"hash" and b"424242" in key:
                fields = r.hgetall(key)
            elif kind == b"list":
                entry = r.lindex(key, -1) or b""
        r.flushdb()
    if not fields or not entry:
        raise RuntimeError("could not find the hash and queue entry of a created booking")
    args: list[bytes] = []
    for k, v in fields.items():
        args += [k, v]
    return args, entry


class RawConnection:
    """A raw socket to Redis with a hiredis reply parser: the round-trip floor."""

    def __init__(self) -> None:
        addr = redis_address()
        if "path" in addr:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(addr["path"])
        else:
            self.sock = socket.create_connection((addr["host"], addr["port"]), timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        setup = []
        if addr["password"]:
            setup.append(("AUTH", addr["user"], addr["password"]) if addr["user"]
                         else ("AUTH", addr["password"]))
        setup.append(("SELECT", addr["db"]))
        self.call(b"".join(hiredis.pack_command(c) for c in setup), len(setup))

    def call(self, payload: bytes, nreplies: int) -> list[Any]:
        self.sock.sendall(payload)
        replies: list[Any] = []
        while len(replies) < nreplies:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.reader.feed(data)
            reply = self.reader.gets()
            while reply is not False:
                replies.append(reply)
                reply = self.reader.gets()
        return replies

    def close(self) -> None:
        self.sock.close()


# -- redis-py references (benchmark 1) --------------------------------------------------

_REF_NS = "kvbenchref"


def redispy_encode(objs: Sequence[Any]) -> list[tuple[str, dict[str, Any], str, bytes]]:
    """What a plain redis-py user writes per booking: (hash key, mapping, queue, entry)."""
    names = [f.name for f in dataclasses.fields(Booking)]
    t_us = time.time_ns() // 1000
    out = []
    for o in objs:
        values = {n: getattr(o, n) for n in names}
        wire = {n: (v.isoformat() if isinstance(v, dt.datetime) else v)
                for n, v in values.items()}
        p = zlib.crc32(b"bookings:%d" % o.id) % PARTITIONS
        mapping = {n: v for n, v in wire.items() if v is not None}
        entry = orjson.dumps({"v": 1, "m": "bookings", "o": "c", "k": o.id, "f": wire,
                              "t": t_us})
        out.append((f"{{{_REF_NS}:{p}}}:o:bookings:{o.id}", mapping, f"{{{_REF_NS}:{p}}}:q",
                    entry))
    return out


def redispy_pipeline_from_objects(r: redis.Redis, objs: Sequence[Any], batch: int) -> None:
    """Encode each booking (as redispy_encode) and HSET+RPUSH it, one pipeline per batch."""
    names = [f.name for f in dataclasses.fields(Booking)]
    for start in range(0, len(objs), batch):
        t_us = time.time_ns() // 1000
        pipe = r.pipeline(transaction=False)
        for o in objs[start:start + batch]:
            wire = {}
            for n in names:
                v = getattr(o, n)
                wire[n] = v.isoformat() if isinstance(v, dt.datetime) else v
            p = zlib.crc32(b"bookings:%d" % o.id) % PARTITIONS
            tag = f"{{{_REF_NS}:{p}}}"
            pipe.hset(f"{tag}:o:bookings:{o.id}",
                      mapping={n: v for n, v in wire.items() if v is not None})
            pipe.rpush(f"{tag}:q", orjson.dumps(
                {"v": 1, "m": "bookings", "o": "c", "k": o.id, "f": wire, "t": t_us}))
        pipe.execute()


def redispy_pipeline_preencoded(
    r: redis.Redis, encoded: Sequence[tuple[str, dict[str, Any], str, bytes]], batch: int
) -> None:
    """HSET+RPUSH of already-encoded records: redis-py's client machinery only."""
    for start in range(0, len(encoded), batch):
        pipe = r.pipeline(transaction=False)
        for key, mapping, queue, entry in encoded[start:start + batch]:
            pipe.hset(key, mapping=mapping)
            pipe.rpush(queue, entry)
        pipe.execute()


# -- PostgreSQL --------------------------------------------------------------------------


def reset_pg_tables() -> None:
    """Empty the model tables and the fence table (epochs restart with a flushed Redis)."""
    with pg_connect() as conn:
        existing = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        names = [t for t in (*BY_TABLE, "kvfast_fence") if t in existing]
        if names:
            conn.execute(sql.SQL("TRUNCATE {}").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in names)))


def create_bench_tables() -> None:
    with pg_connect() as conn:
        kvfast.create_tables(conn, MODELS)


def table_digest() -> dict[str, tuple[int, int]]:
    """Per model table: (rows, sum of row hashes): equal digests, equal contents."""
    out = {}
    with pg_connect() as conn:
        for table in BY_TABLE:
            row = conn.execute(sql.SQL(
                "SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0) FROM {} t"
            ).format(sql.Identifier(table))).fetchone()
            assert row is not None
            out[table] = (int(row[0]), int(row[1]))
    return out


@dataclass
class Step:
    """One COPY + statement of the reference: upsert, update (one column set) or delete."""

    table: str
    kind: str
    columns: tuple[str, ...]
    rows: list[Sequence[Any]]


def _wire_to_value(info: kvfast.ModelInfo, name: str, raw: Any) -> Any:
    if raw is None:
        return None
    ftype = info.by_name[name].ftype
    return raw if ftype.wire_is_value else ftype.from_wire(raw)


def reference_batches(queues: Sequence[Sequence[bytes]], batch_size: int) -> list[list[Step]]:
    """Decode and collapse queued entries into the reference's batches (not timed).

    The same cut as the drainers: per partition, in queue order, ``batch_size``
    entries per transaction; per key the ops of a batch are folded in order
    (create → upsert, update → merged into it or an update, delete → delete).
    """
    batches: list[list[Step]] = []
    for entries in queues:
        for start in range(0, len(entries), batch_size):
            per_model: dict[str, dict[Any, list[Any]]] = {}
            for raw in entries[start:start + batch_size]:
                e = orjson.loads(raw)
                info = BY_TABLE[e["m"]]
                ops = per_model.setdefault(info.table, {})
                op = e["o"]
                if op == "c":
                    wire = e["f"]
                    row = [_wire_to_value(info, f.name, wire.get(f.name)) for f in info.fields]
                    ops[row[info.key_field.index]] = ["upsert", row]
                    continue
                key = _wire_to_value(info, info.key, e["k"])
                if op == "d":
                    ops[key] = ["delete", None]
                    continue
                changes = {n: _wire_to_value(info, n, v) for n, v in e["f"].items()}
                prior = ops.get(key)
                if prior is None:
                    ops[key] = ["update", changes]
                elif prior[0] == "upsert":
                    for n, v in changes.items():
                        prior[1][info.by_name[n].index] = v
                elif prior[0] == "update":
                    prior[1].update(changes)
                # an update after a delete in one batch is a dead letter for kvfast: skip
            steps: list[Step] = []
            for table, ops in per_model.items():
                info = BY_TABLE[table]
                upserts = [row for kind, row in ops.values() if kind == "upsert"]
                if upserts:
                    steps.append(Step(table, "upsert", info.field_names, upserts))
                groups: dict[tuple[str, ...], list[Sequence[Any]]] = {}
                for key, (kind, changes) in ops.items():
                    if kind == "update":
                        groups.setdefault(tuple(changes), []).append([key, *changes.values()])
                for cols, rows in groups.items():
                    steps.append(Step(table, "update", (info.key, *cols), rows))
                deletes = [[key] for key, (kind, _) in ops.items() if kind == "delete"]
                if deletes:
                    steps.append(Step(table, "delete", (info.key,), deletes))
            batches.append(steps)
    return batches


class PgReference:
    """Hand-written COPY BINARY into a temp staging table + set-based SQL, one connection.

    The session turns hash and merge joins off, so UPDATE … FROM and DELETE …
    USING always probe the target's primary key for each staged row: the planner
    has no statistics for a fresh temporary table and stale ones for a table
    that grows during the drain, and otherwise may hash-join the whole target
    table once per batch (EXPLAIN shows Hash Join + Seq Scan on bookings), a cost
    that grows with the table, not the batch.
    """

    def __init__(self) -> None:
        self.conn = pg_connect(autocommit=False)
        self.conn.execute("SET enable_hashjoin = off")
        self.conn.execute("SET enable_mergejoin = off")
        self._copy: dict[tuple[str, tuple[str, ...]], tuple[sql.Composed, list[str]]] = {}
        self._stmt: dict[tuple[str, str, tuple[str, ...]], sql.Composed] = {}
        for info in MODELS:
            self.conn.execute(sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
                "SELECT * FROM {} WITH NO DATA").format(self._stage(info.table),
                                                         sql.Identifier(info.table)))
        self.conn.commit()

    @staticmethod
    def _stage(table: str) -> sql.Identifier:
        return sql.Identifier(f"_bench_stage_{table}")

    def _prepare(self, step: Step) -> tuple[sql.Composed, list[str], sql.Composed]:
        info = BY_TABLE[step.table]
        ck = (step.table, step.columns)
        if ck not in self._copy:
            self._copy[ck] = (
                sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    self._stage(step.table),
                    sql.SQL(", ").join(sql.Identifier(c) for c in step.columns)),
                [info.by_name[c].ftype.copy_type for c in step.columns],
            )
        sk = (step.table, step.kind, step.columns)
        if sk not in self._stmt:
            t, s, k = sql.Identifier(step.table), self._stage(step.table), sql.Identifier(info.key)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in step.columns)
            if step.kind == "upsert":
                sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                          for c in step.columns if c != info.key)
                stmt = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) "
                               "DO UPDATE SET {}").format(t, cols, cols, s, k, sets)
            elif step.kind == "update":
                sets = sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(sql.Identifier(c))
                                          for c in step.columns[1:])
                stmt = sql.SQL("UPDATE {} t SET {} FROM {} s WHERE t.{} = s.{}").format(
                    t, sets, s, k, k)
            else:
                stmt = sql.SQL("DELETE FROM {} t USING {} s WHERE t.{} = s.{}").format(t, s, k, k)
            self._stmt[sk] = stmt
        copy_stmt, types = self._copy[ck]
        return copy_stmt, types, self._stmt[sk]

    def apply(self, batches: Sequence[Sequence[Step]]) -> int:
        """Apply every batch, one transaction each; returns the rows written."""
        conn = self.conn
        cur = conn.cursor()
        rows = 0
        for steps in batches:
            for i, step in enumerate(steps):
                copy_stmt, types, stmt = self._prepare(step)
                with cur.copy(copy_stmt) as copy:
                    copy.set_types(types)
                    for row in step.rows:
                        copy.write_row(row)
                cur.execute(stmt)
                rows += len(step.rows)
                if i < len(steps) - 1:
                    cur.execute(sql.SQL("DELETE FROM {}").format(self._stage(step.table)))
            conn.commit()
        return rows

    def close(self) -> None:
        self.conn.close()


# -- producers in other processes ---------------------------------------------------------


def produce_creates(first_id: int, count: int, batch: int) -> int:
    """Create ``count`` bookings (ids from ``first_id``) with create_many (a worker process)."""
    now = dt.datetime.now(dt.UTC)
    with kvfast.Repository(Booking, settings()) as repo:
        done = 0
        while done < count:
            n = min(batch, count - done)
            repo.create_many([make_booking(first_id + done + i, now) for i in range(n)])
            done += n
    return done


def produce_mix(index: int, writes: int) -> dict[str, int]:
    """loadgen's mix (60% creates, 30% updates, 10% deletes over 3 models; a worker process)."""
    from kvfast.loadgen import run_producer

    res = run_producer(settings(), index, writes, batch=1000, latency_samples=0, seed=index)
    return {"records": res.records, "creates": res.creates, "updates": res.updates,
            "deletes": res.deletes}


def paced_producer(rate: float, seconds: float, first_id: int) -> dict[str, float]:
    """create_many at ``rate`` records/s for ``seconds`` (a worker process); times are wall.

    Stops at ``seconds`` even when it could not keep the rate (a saturated machine).
    """
    now = dt.datetime.now(dt.UTC)
    total = max(1, int(rate * seconds))
    chunk = max(10, int(rate / 200))  # ~200 calls per second
    objs = [make_booking(first_id + i, now) for i in range(total)]
    with kvfast.Repository(Booking, settings()) as repo:
        repo.create_many(objs[:1])  # connect and check partitions before the clock starts
        sent = 1
        behind = 0.0
        wall0 = time.time()
        t0 = time.perf_counter()
        while sent < total and time.perf_counter() - t0 < seconds:
            due = t0 + sent / rate
            now_p = time.perf_counter()
            if due > now_p:
                time.sleep(due - now_p)
            else:
                behind = max(behind, now_p - due)
            part = objs[sent:sent + chunk]
            repo.create_many(part)
            sent += len(part)
        elapsed = time.perf_counter() - t0
    return {"records": float(sent), "elapsed_s": elapsed, "t_start": wall0,
            "t_end": wall0 + elapsed, "behind_max_s": behind, "chunk": float(chunk)}


def run_spawned(fn: Callable[..., Any], arg_lists: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``fn(*args)`` for each args in its own spawned process, in parallel."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(arg_lists), mp_context=ctx) as pool:
        futures = [pool.submit(fn, *args) for args in arg_lists]
        return [f.result() for f in futures]


# -- the supervisor -----------------------------------------------------------------------


def drained_total(r: redis.Redis) -> int:
    """Sum of every partition's ``drained`` counter (acked entries)."""
    ks = keys()
    pipe = r.pipeline(transaction=False)
    for p in range(PARTITIONS):
        pipe.hget(ks.counters[p], "drained")
    return sum(int(v) for v in pipe.execute() if v is not None)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    return out


def _hwm_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@dataclass
class SupervisorRun:
    returncode: int = -1
    wall_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    #: (wall time, drained counter) every ~50 ms
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: peak RSS (VmHWM, KiB) per drainer pid
    drainer_hwm_kib: dict[int, int] = field(default_factory=dict)
    supervisor_hwm_kib: int = 0
    log: str = ""

    @property
    def peak_drainer_mib(self) -> float:
        return max(self.drainer_hwm_kib.values(), default=0) / 1024

    def active_rate(self, total: int) -> float:
        """Rows/s from the first ack seen to the moment the counter reached ``total``."""
        started = [(t, n) for t, n in self.samples if n > 0]
        if len(started) < 2:
            return total / self.wall_s if self.wall_s else 0.0
        t0, n0 = started[0]
        done = [(t, n) for t, n in started if n >= total] or [started[-1]]
        t1, n1 = done[0]
        if t1 <= t0 or n1 <= n0:
            return total / self.wall_s if self.wall_s else 0.0
        return (n1 - n0) / (t1 - t0)

    def drained_between(self, t_a: float, t_b: float) -> float:
        """Rows acked between wall times t_a and t_b (linear between samples)."""
        return _interp(self.samples, t_b) - _interp(self.samples, t_a)


def _interp(samples: Sequence[tuple[float, int]], t: float) -> float:
    if not samples:
        return 0.0
    if t <= samples[0][0]:
        return float(samples[0][1])
    for (ta, na), (tb, nb) in itertools.pairwise(samples):
        if ta <= t <= tb:
            return na + (nb - na) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
    return float(samples[-1][1])


def supervisor_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVFAST_")}
    env.update(KVFAST_REDIS_URL=REDIS_URL, KVFAST_PG_DSN=PG_DSN, KVFAST_NAMESPACE=NAMESPACE,
               KVFAST_MODELS="kvfast.demo", KVFAST_PARTITIONS=str(PARTITIONS))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Supervisor:
    """``python -m kvfast.supervisor`` as a child, watched: acked rows, drainer RSS."""

    def __init__(self, workers: int, name: str, *, drain_until_empty: bool,
                 extra: Sequence[str] = ()) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"
        self.stats_path = LOG_DIR / f"{name}.stats.json"
        self.stats_path.unlink(missing_ok=True)
        self.port = free_port()
        self.args = [sys.executable, "-m", "kvfast.supervisor", "--workers", str(workers),
                     "--batch-size", str(BATCH_SIZE), "--drain-interval-ms",
                     str(DRAIN_INTERVAL_MS), "--status-interval", "2", "--stats-json",
                     str(self.stats_path), "--metrics-port", str(self.port), *extra]
        if drain_until_empty:
            self.args.append("--drain-until-empty")
        self.run = SupervisorRun(log=str(self.log_path))
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def start(self) -> Supervisor:
        with open(self.log_path, "wb") as log:
            self._t0 = time.perf_counter()
            self._proc = subprocess.Popen(self.args, env=supervisor_env(), stdout=log,
                                          stderr=subprocess.STDOUT, cwd=ROOT)
        self._thread = threading.Thread(target=self._watch, name="bench-watch", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        assert self._proc is not None
        pid = self._proc.pid
        with contextlib.closing(redis_client()) as r:
            while True:
                alive = self._proc.poll() is None
                with contextlib.suppress(redis.RedisError):
                    self.run.samples.append((time.time(), drained_total(r)))
                for child in _children(pid):
                    hwm = _hwm_kib(child)
                    if hwm:
                        self.run.drainer_hwm_kib[child] = max(
                            hwm, self.run.drainer_hwm_kib.get(child, 0))
                self.run.supervisor_hwm_kib = max(self.run.supervisor_hwm_kib, _hwm_kib(pid))
                if not alive or self._stop.wait(0.05):
                    return

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /healthz says every drainer is alive (then a little for their connections)."""
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"supervisor exited with {self._proc.returncode}; see "
                                   f"{self.log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    time.sleep(0.5)
                    return
            time.sleep(0.05)
        raise TimeoutError(f"supervisor not healthy after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 900.0) -> SupervisorRun:
        assert self._proc is not None and self._thread is not None
        try:
            self.run.returncode = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self.run.returncode = self._proc.wait()
        self.run.wall_s = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, ValueError):
            self.run.stats = json.loads(self.stats_path.read_text())
        return self.run

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


@contextlib.contextmanager
def supervisor(workers: int, name: str, *, drain_until_empty: bool,
               extra: Sequence[str] = ()) -> Iterator[Supervisor]:
    sup = Supervisor(workers, name, drain_until_empty=drain_until_empty, extra=extra).start()
    try:
        yield sup
    finally:
        if sup.run.returncode == -1:
            sup.stop()
            sup.wait(timeout=120)
