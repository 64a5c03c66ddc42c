"""The demo behind tools/demo: a real load, drained by the supervisor, checked, summarized.

1. clean the demo namespace in Redis and the demo tables in PostgreSQL;
2. start ``python -m kvfast.supervisor --create-tables`` (its log goes to .kvfast/);
3. run P producer processes writing creates, partial updates and deletes of
   bookings, drivers and rides (a live line shows progress);
4. wait until nothing is queued or in flight, stop the supervisor with SIGTERM;
5. compare every PostgreSQL row with its Redis object, and print the summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

import kvfast
from kvfast.demo import Booking, Driver, Ride
from kvfast.keys import escape_table
from kvfast.loadgen import LoadResult, quantile, run_producer
from kvfast.model import TOMBSTONE_FIELD, model_info

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "kvfastdemo"
MODELS = [model_info(Booking), model_info(Driver), model_info(Ride)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--writes", type=int, default=200_000,
                   help="records written in all (default 200000)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop producing after this many seconds (default: until --writes)")
    p.add_argument("--producers", type=int, default=2, help="producer processes (default 2)")
    p.add_argument("--workers", type=int, default=2, help="drainer processes (default 2)")
    p.add_argument("--batch", type=int, default=500, help="records per producer call (500)")
    p.add_argument("--latency-samples", type=int, default=2000,
                   help="single create() round trips timed per producer (default 2000)")
    return p.parse_args()


def _producer(settings: kvfast.Settings, index: int, writes: int, batch: int, samples: int,
              deadline: float | None, out: Any) -> None:
    out.put(run_producer(settings, index, writes, batch=batch, latency_samples=samples,
                         deadline=deadline))


def clean(settings: kvfast.Settings) -> None:
    with kvfast.Client(settings) as client:
        r = client.redis
        batch = []
        for key in r.scan_iter(match=f"*{NAMESPACE}*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                r.unlink(*batch)
                batch.clear()
        if batch:
            r.unlink(*batch)
    assert settings.pg_dsn
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        for info in MODELS:
            conn.execute(psycopg.sql.SQL("DROP TABLE IF EXISTS {}").format(
                psycopg.sql.Identifier(info.table)))
        conn.execute("DROP TABLE IF EXISTS kvfast_fence")


def compare(
    client: kvfast.Client, conn: psycopg.Connection[Any]
) -> dict[str, tuple[int, int, int]]:
    """Per table: (objects in Redis, rows in PostgreSQL, rows that differ or are missing)."""
    out = {}
    tomb = TOMBSTONE_FIELD.encode()
    for info in MODELS:
        redis_objs: dict[Any, Any] = {}
        pattern = f"{{{NAMESPACE}:*}}:o:{escape_table(info.table)}:*"
        keys = list(client.redis.scan_iter(match=pattern, count=10_000))
        for start in range(0, len(keys), 5000):
            pipe = client.redis.pipeline(transaction=False)
            for k in keys[start:start + 5000]:
                pipe.hgetall(k)
            for raw in pipe.execute():
                if raw and tomb not in raw:
                    obj = info.from_hash(raw)
                    redis_objs[getattr(obj, info.key)] = obj
        rows = conn.execute(psycopg.sql.SQL("SELECT {} FROM {}").format(
            psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(f.name) for f in info.fields),
            psycopg.sql.Identifier(info.table))).fetchall()
        pg_objs = {info.key_from_values(r): info.from_pg_row(r) for r in rows}
        differ = sum(1 for k, o in redis_objs.items() if pg_objs.get(k) != o)
        differ += sum(1 for k in pg_objs if k not in redis_objs)
        out[info.table] = (len(redis_objs), len(pg_objs), differ)
    return out


def main() -> int:
    args = parse_args()
    settings = kvfast.Settings.from_env(namespace=NAMESPACE, workers=args.workers)
    if not settings.pg_dsn:
        print("demo: KVFAST_PG_DSN is not set (run through tools/demo)", file=sys.stderr)
        return 2
    print(f"kvfast demo: {args.writes:,} writes from {args.producers} producers, "
          f"{args.workers} drainers, Redis {kvfast.settings.redact(settings.redis_url)}, "
          f"PostgreSQL {kvfast.settings.redact(settings.pg_dsn)}")
    clean(settings)

    state = ROOT / ".kvfast"
    state.mkdir(exist_ok=True)
    log_path = state / "demo-supervisor.log"
    stats_path = state / "demo-supervisor.json"
    stats_path.unlink(missing_ok=True)
    env = dict(os.environ, KVFAST_NAMESPACE=NAMESPACE)
    with open(log_path, "w") as log:
        sup = subprocess.Popen(
            [sys.executable, "-m", "kvfast.supervisor", "--create-tables", "--workers",
             str(args.workers), "--status-interval", "2", "--stats-json", str(stats_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    client = kvfast.Client(settings)
    try:
        # Wait for the supervisor to create the tables before producing.
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            for _ in range(300):
                if sup.poll() is not None:
                    print(f"demo: supervisor exited with {sup.returncode}; see {log_path}")
                    return 1
                if conn.execute("SELECT to_regclass('rides')").fetchone() != (None,):
                    break
                time.sleep(0.1)

        ctx = multiprocessing.get_context("fork")
        results_q: Any = ctx.Queue()
        per = args.writes // args.producers
        deadline = time.monotonic() + args.duration if args.duration else None
        samples = min(args.latency_samples, per // 10)
        t0 = time.perf_counter()
        procs = [ctx.Process(target=_producer, args=(settings, i, per - samples, args.batch,
                                                     samples, deadline, results_q))
                 for i in range(args.producers)]
        for p in procs:
            p.start()
        results: list[LoadResult] = []
        t_produced = 0.0
        while True:
            while len(results) < len(procs) and not results_q.empty():
                results.append(results_q.get())
            if len(results) == len(procs) and not t_produced:
                t_produced = time.perf_counter() - t0
            queued, inflight, _ = client.backlog()
            written = sum(r.records for r in results)
            line = (f"\r  {time.perf_counter() - t0:6.1f}s  producers done {len(results)}/"
                    f"{len(procs)}  queued {queued:>9,}  in flight {inflight}")
            sys.stdout.write(line + " " * 8)
            sys.stdout.flush()
            if sup.poll() is not None:
                print(f"\ndemo: supervisor exited with {sup.returncode}; see {log_path}")
                return 1
            if len(results) == len(procs) and queued == 0 and inflight == 0:
                break
            time.sleep(0.25)
        t_drained = time.perf_counter() - t0
        for p in procs:
            p.join()
        print()
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}

        written = sum(r.records for r in results)
        bulk = sum(r.records - len(r.latencies_ms) for r in results)
        bulk_rate = sum((r.records - len(r.latencies_ms)) / r.elapsed_s for r in results
                        if r.elapsed_s)
        lat = [x for r in results for x in r.latencies_ms]
        with psycopg.connect(settings.pg_dsn) as conn:
            compared = compare(client, conn)
        dead = client.backlog()[2]
        ok = all(d == 0 and n_r == n_p for n_r, n_p, d in compared.values())

        print("\nkvfast demo summary")
        print(f"  writes              {written:,} ({sum(r.creates for r in results):,} creates, "
              f"{sum(r.updates for r in results):,} updates, "
              f"{sum(r.deletes for r in results):,} deletes) from {len(results)} producers")
        print(f"  producer            {bulk_rate:,.0f} records/s = {2 * bulk_rate:,.0f} Redis "
              f"ops/s (hash write + queue push per record; {bulk:,} records in batches of "
              f"{args.batch}, all producers)")
        print(f"  create() latency    p50 {quantile(lat, 0.5):.3f} ms   "
              f"p99 {quantile(lat, 0.99):.3f} ms ({len(lat):,} single round trips)")
        print(f"  drain               {stats.get('rows', 0):,} entries applied, "
              f"{stats.get('rows', 0) / t_drained:,.0f} rows/s over the whole run "
              f"(load took {t_produced:.1f}s, everything drained at {t_drained:.1f}s)")
        print(f"  drain lag           p50 {stats.get('lag_p50_ms', 0):.0f} ms   "
              f"p99 {stats.get('lag_p99_ms', 0):.0f} ms (write to commit)")
        for table, (n_r, n_p, d) in compared.items():
            print(f"  {table:<19} Redis {n_r:>9,} objects | PostgreSQL {n_p:>9,} rows | "
                  f"{'match' if d == 0 and n_r == n_p else f'{d:,} DIFFER'}")
        print(f"  dead letters        {dead:,}")
        print(f"  supervisor          exit {sup.returncode}, log {log_path}")
        print(f"  result              {'OK: PostgreSQL equals Redis' if ok else 'MISMATCH'}")
        return 0 if ok and sup.returncode == 0 else 1
    finally:
        if sup.poll() is None:
            sup.kill()
        client.close()


if __name__ == "__main__":
    sys.exit(main())
