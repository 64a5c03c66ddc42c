"""Processes of the drain-path tests (plain functions and classes, no fixtures).

* ``start_supervisor`` / ``run_supervisor``: ``python -m kvfast.supervisor`` as a
  subprocess in its own session, output captured in a file, always reaped.
* ``hold_batch`` / ``HeldBatch``: a child process that claims one batch (and
  optionally commits it) and then stops itself with SIGSTOP, for the crash and
  stale-drainer tests.
* ``children_of`` / ``wait_stopped``: process state read from /proc.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import drainmodels  # noqa: F401 - a spawned held drainer must know the models it decodes
import redis
from drainkeys import counters_key, dead_key, inflight_key, inflight_meta_key

import kvfast
from kvfast.batch import build_batch
from kvfast.client import connect_pg
from kvfast.drainer import Drainer
from kvfast.model import TOMBSTONE_FIELD
from kvfast.pgcopy import Applier

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
SPAWN = multiprocessing.get_context("spawn")


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
