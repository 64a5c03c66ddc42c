"""The supervisor's drainer processes: fork, restart, signals, report pipes.

* Drainers are forked with an explicit ``fork`` context; each opens its own Redis
  and PostgreSQL connections in the child (``kvfast.worker``).  Signals are
  blocked around the fork so a child never runs the parent's handlers.
* A drainer that dies is restarted after a capped backoff (``retry.Backoff``).
  Only a drainer that died before acking its first batch (a broken start: bad
  rights, a model its table refuses), and within ``HEALTHY_S`` of its start (an
  idle drainer acks nothing), counts toward the crash loop: more than
  ``CRASH_BUDGET`` such deaths within ``CRASH_WINDOW_S`` stop the supervisor.
  One that had acked batches was killed from outside (an OOM killer, an
  operator) or met a passing fault: it is restarted and the drain goes on.
  Which drainer has acked is told by its ``Report`` s (one per batch).
* While drainers die and restart, ``health()`` is degraded and says why.
* First SIGTERM/SIGINT: every drainer is asked to finish and ack its batch
  (SIGTERM); those still running one lease later (stuck retrying a server, say)
  are killed, their batches left in flight for a takeover; a second signal
  kills them at once (SIGKILL).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from kvfast.retry import Backoff
from kvfast.settings import Settings
from kvfast.stats import Health, Report
from kvfast.worker import STOP_SIGNALS, drainer_main

__all__ = ["CRASH_BUDGET", "CRASH_WINDOW_S", "Pool", "Worker"]

# Same logger as the supervisor's own lines: operators filter on one name.
log = logging.getLogger("kvfast.supervisor")

CRASH_BUDGET = 10
CRASH_WINDOW_S = 60.0
# 0.1 s, 0.2 s, … 5 s: a drainer that died of a passing cause is back at once, one
# that keeps dying costs little; no jitter, one supervisor restarts its own drainers.
RESTART_BACKOFF = Backoff(base=0.1, cap=5.0, jitter=False)
# A drainer that acked batches and lived this long starts its backoff afresh.
HEALTHY_S = 10.0
# /healthz stays degraded this long after a drainer died.
DEGRADED_S = 15.0


@dataclass
class Worker:
    """One drainer slot: its current process, report pipe and restart state."""

    index: int
    process: multiprocessing.process.BaseProcess | None = None
    #: the supervisor's read end of this drainer's report pipe
    reports: Connection | None = None
    restart_at: float = 0.0
    #: deaths since the slot was last healthy (the restart backoff's step)
    crashes: int = 0
    #: batches the current process has reported (acked) since it was forked
    batches: int = 0
    started_at: float = 0.0
    #: (when, exit code) of this slot's deaths, newest last (for health)
    deaths: deque[tuple[float, int | None]] = field(default_factory=deque)


class Pool:
    """``settings.workers`` drainer processes, kept alive until ``stop``."""

    def __init__(self, settings: Settings, log_level: int,
                 target: Callable[..., None] = drainer_main) -> None:
        self.settings = settings
        self.log_level = log_level
        self.target = target
        self.ctx = multiprocessing.get_context("fork")
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.crash_times: deque[float] = deque()
        #: stop signals received (1: warm stop under way, 2+: killed)
        self.signals = 0
        #: when the warm stop began (monotonic), and whether it had to kill drainers
        self.stop_started = 0.0
        self.killed_stuck = False

    @property
    def size(self) -> int:
        return len(self.workers)

    def start(self) -> None:
        """Install the stop-signal handlers and fork every drainer."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)
        for w in self.workers:
            self.spawn(w)

    def spawn(self, w: Worker) -> None:
        # Block the stop signals across fork: the child unblocks them after it
        # installed its own handlers, so a signal never runs the parent's code.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if w.reports is not None:
            w.reports.close()
        w.reports, child_end = self.ctx.Pipe(duplex=False)
        try:
            w.process = self.ctx.Process(
                target=self.target,
                args=(self.settings, w.index, child_end, self.log_level),
                name=f"kvfast-drainer-{w.index}",
                daemon=False,
            )
            w.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            child_end.close()
        w.batches = 0
        w.started_at = time.monotonic()
        log.info("drainer %d started (pid %s)", w.index, w.process.pid)

    def receive(self) -> list[Report]:
        """Every report the drainers have sent since the last call."""
        got: list[Report] = []
        for w in self.workers:
            while w.reports is not None:
                try:
                    if not w.reports.poll():
                        break
                    got.append(w.reports.recv())
                except (EOFError, OSError):
                    break
                # The pipe is this slot's own: its process has acked a batch.
                w.batches += 1
        return got

    def check(self) -> bool:
        """Reap dead drainers and restart them when their backoff is over.

        Returns True when drainers are in a crash loop (the caller stops).
        """
        now = time.monotonic()
        for w in self.workers:
            p = w.process
            if p is not None and not p.is_alive():
                code = p.exitcode
                p.join()
                w.process = None
                if self.signals:
                    continue
                self._died(w, code, now)
            if w.process is None and not self.signals and now >= w.restart_at:
                self.spawn(w)
        while self.crash_times and self.crash_times[0] < now - CRASH_WINDOW_S:
            self.crash_times.popleft()
        if len(self.crash_times) > CRASH_BUDGET:
            log.error(
                "drainers died %d times in %.0fs: stopping (fix the cause shown above)",
                len(self.crash_times), CRASH_WINDOW_S,
            )
            return True
        return False

    def _died(self, w: Worker, code: int | None, now: float) -> None:
        lived = now - w.started_at
        if w.batches and lived >= HEALTHY_S:
            w.crashes = 0
        w.crashes += 1
        w.deaths.append((now, code))
        while len(w.deaths) > CRASH_BUDGET + 1:
            w.deaths.popleft()
        delay = RESTART_BACKOFF.step(w.crashes - 1)
        w.restart_at = now + delay
        if w.batches or lived >= HEALTHY_S:
            # It had started fine (acked, or ran idle a while): killed from outside.
            log.warning("drainer %d exited with %s after %d batches in %.1fs; restarting "
                        "in %.1fs", w.index, code, w.batches, lived, delay)
        else:
            # Died before its first batch: a broken start, the crash loop's business.
            self.crash_times.append(now)
            log.warning("drainer %d exited with %s before its first batch; restarting in "
                        "%.1fs", w.index, code, delay)

    def alive(self) -> list[multiprocessing.process.BaseProcess]:
        return [w.process for w in self.workers if w.process is not None and w.process.is_alive()]

    def health(self) -> Health:
        now = time.monotonic()
        reasons = []
        for w in self.workers:
            recent = [(t, code) for t, code in w.deaths if t >= now - DEGRADED_S]
            if recent:
                down = " (down, restarting)" if w.process is None else ""
                reasons.append(f"drainer {w.index} died {len(recent)} times in the last "
                               f"{DEGRADED_S:.0f}s (last exit {recent[-1][1]}){down}")
        return Health(alive=len(self.alive()), expected=self.size, stopping=bool(self.signals),
                      reasons=tuple(reasons))

    def stop(self, hard: bool) -> None:
        """Ask every drainer to finish its batch and exit (SIGTERM), or kill it (SIGKILL)."""
        for p in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid or 0, signal.SIGKILL if hard else signal.SIGTERM)

    def finish(self) -> None:
        """A warm stop without a signal (``--drain-until-empty`` is done)."""
        if not self.signals:
            self.stop_started = time.monotonic()
        self.signals = max(self.signals, 1)
        self.stop(hard=False)

    def enforce_grace(self) -> None:
        """Kill the drainers still running one lease into a warm stop.

        A drainer stuck retrying (PostgreSQL away, a lock held on its table) does
        not finish its batch; after a lease the batch would be taken over anyway,
        so nothing is lost by killing it, and the supervisor stops in bounded time.
        """
        if self.signals != 1 or self.killed_stuck:
            return
        if time.monotonic() - self.stop_started < self.settings.lease_ms / 1000:
            return
        stuck = self.alive()
        if not stuck:
            return
        log.warning("%d drainers still busy %.1fs into the stop (one lease): killing them; "
                    "their batches stay in flight and are taken over once the lease runs out",
                    len(stuck), self.settings.lease_ms / 1000)
        self.killed_stuck = True
        self.stop(hard=True)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the drainers to exit, then kill those left."""
        deadline = time.monotonic() + timeout
        for p in self.alive():
            p.join(max(0.0, deadline - time.monotonic()))
        self.stop(hard=True)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            self.stop_started = time.monotonic()
            log.warning("%s: finishing the batches in flight, then stopping "
                        "(signal again to stop at once)", signal.Signals(signum).name)
            self.stop(hard=False)
        else:
            log.warning("second signal: killing the drainers now")
            self.stop(hard=True)
