"""The Redis references: redis-benchmark, plain redis-py pipelines, a raw socket."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import socket
import subprocess
import time
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import orjson
import pytest
import redis
from _config import PARTITIONS, REDIS_URL

from kvfast.demo import Booking


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
