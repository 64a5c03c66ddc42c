"""The supervisor's drainer processes: fork, restart, signals, report pipes.

* Drainers are forked with an explicit ``fork`` context; each opens its own Redis
  and PostgreSQL connections in the child (``kvfast.worker``).  Signals are
  blocked around the fork so a child never runs the parent's handlers.
* A drainer that dies is restarted after a capped backoff (``retry.Backoff``);
  more than ``CRASH_BUDGET`` deaths within ``CRASH_WINDOW_S`` is a crash loop.
* First SIGTERM/SIGINT: every drainer is asked to finish and ack its batch
  (SIGTERM); second: they are killed at once (SIGKILL).
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
from dataclasses import dataclass
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


@dataclass
class Worker:
    """One drainer slot: its current process, report pipe and restart state."""

    index: int
    process: multiprocessing.process.BaseProcess | None = None
    #: the supervisor's read end of this drainer's report pipe
    reports: Connection | None = None
    restart_at: float = 0.0
    crashes: int = 0


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
                w.crashes += 1
                self.crash_times.append(now)
                delay = RESTART_BACKOFF.step(w.crashes - 1)
                w.restart_at = now + delay
                log.warning("drainer %d exited with %s; restarting in %.1fs", w.index, code, delay)
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

    def alive(self) -> list[multiprocessing.process.BaseProcess]:
        return [w.process for w in self.workers if w.process is not None and w.process.is_alive()]

    def health(self) -> Health:
        return Health(alive=len(self.alive()), expected=self.size, stopping=bool(self.signals))

    def stop(self, hard: bool) -> None:
        """Ask every drainer to finish its batch and exit (SIGTERM), or kill it (SIGKILL)."""
        for p in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid or 0, signal.SIGKILL if hard else signal.SIGTERM)

    def finish(self) -> None:
        """A warm stop without a signal (``--drain-until-empty`` is done)."""
        self.signals = max(self.signals, 1)
        self.stop(hard=False)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the drainers to exit, then kill those left."""
        deadline = time.monotonic() + timeout
        for p in self.alive():
            p.join(max(0.0, deadline - time.monotonic()))
        self.stop(hard=True)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            log.warning("%s: finishing the batches in flight, then stopping "
                        "(signal again to stop at once)", signal.Signals(signum).name)
            self.stop(hard=False)
        else:
            log.warning("second signal: killing the drainers now")
            self.stop(hard=True)
