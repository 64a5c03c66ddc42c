"""The supervisor under test: ``python -m kvfast.supervisor`` as a child, watched."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from _config import (
    BATCH_SIZE,
    DRAIN_INTERVAL_MS,
    LOG_DIR,
    NAMESPACE,
    PARTITIONS,
    PG_DSN,
    REDIS_URL,
    ROOT,
    keys,
    redis_client,
)


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
