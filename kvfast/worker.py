"""A drainer process: what runs in the child after the supervisor forked it.

The child sets its own signals and logging, opens its own connections (the
``Drainer`` is built here, after fork), drains, and sends one ``Report`` per
batch to the supervisor.

A drainer never outlives its supervisor for long: on Linux the kernel sends it
SIGTERM when the supervisor dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a
watchdog thread sees its parent change (``os.getppid()``, also ``should_stop``).
Either way it finishes its batch if it can, and kills itself one lease after
the supervisor's death if it cannot (a drainer stuck retrying PostgreSQL): its
successor's drainers take its batch over once the lease has run out.  Its
process title says what it is: ``kvfast drainer 2 ns=kvfast supervisor=4242``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

import setproctitle

from kvfast.settings import Settings
from kvfast.stats import Report

__all__ = ["STOP_SIGNALS", "drainer_main", "drainer_title", "set_parent_death_signal",
           "supervisor_title"]

log = logging.getLogger("kvfast.drainer")

#: the signals that stop a drainer (warm stop) or, the second time, the supervisor
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Reports a slow supervisor may fall behind by before a drainer drops statistics.
_OUTBOX = 1000
# How long a stopping drainer waits for its last reports to leave.
_FLUSH_S = 2.0
#: linux/prctl.h
_PR_SET_PDEATHSIG = 1
# How often the watchdog looks at the parent pid: at most a tenth of the lease
# late, and never busier than 10 times a second.
_WATCH_MIN_S = 0.1


def supervisor_title(namespace: str) -> str:
    return f"kvfast supervisor ns={namespace}"


def drainer_title(index: int, namespace: str, supervisor: int) -> str:
    return f"kvfast drainer {index} ns={namespace} supervisor={supervisor}"


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _supervisor_pid() -> int:
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def _watch_parent(supervisor: int, stop: threading.Event, lease_s: float) -> None:
    """Stop when the supervisor is gone; die one lease later if still running."""
    every = max(_WATCH_MIN_S, lease_s / 10)
    while os.getppid() == supervisor:
        time.sleep(every)
    log.warning("supervisor %d is gone: finishing the batch in hand, then exiting "
                "(killed in %.1fs if not done)", supervisor, lease_s)
    stop.set()
    time.sleep(lease_s)
    log.error("supervisor %d is gone and this drainer is still busy: killing it (its batch "
              "stays in flight, to be taken over)", supervisor)
    os.kill(os.getpid(), signal.SIGKILL)


def drainer_main(settings: Settings, index: int, reports: Connection, log_level: int) -> None:
    """Entry point of a forked drainer process.

    ``reports`` is this drainer's own pipe to the supervisor.  A shared
    multiprocessing.Queue would not do: a drainer killed with -9 while holding
    the queue's write lock would block every other drainer's next report.
    Reports go through a bounded in-process queue and a sender thread, so a slow
    supervisor drops statistics instead of stalling the drain.
    """
    stop = threading.Event()
    supervisor = _supervisor_pid()
    # Before anything else: a supervisor killed from here on takes this drainer
    # with it.  If it died before the prctl, the parent pid has changed already
    # and the watchdog stops us at its first look.
    set_parent_death_signal(signal.SIGTERM)
    setproctitle.setproctitle(drainer_title(index, settings.namespace, supervisor))
    outbox = _start_sender(reports)

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    # SIGINT from a terminal reaches the whole process group: the supervisor
    # decides what it means and forwards SIGTERM, so children ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    # force: the forked child inherits the supervisor's configured root logger.
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s drainer-{index} %(levelname)s %(message)s",
        force=True,
    )
    from kvfast.drainer import BatchReport, Drainer

    threading.Thread(target=_watch_parent, args=(supervisor, stop, settings.lease_ms / 1000),
                     name="kvfast-parent-watch", daemon=True).start()

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != supervisor

    drainer = Drainer(settings, should_stop=should_stop)

    def on_batch(rep: BatchReport) -> None:
        with contextlib.suppress(queue.Full):
            outbox.put_nowait(Report.of(index, rep))

    try:
        drainer.run(on_batch)
    finally:
        drainer.close()
        # Let the sender flush the last reports (the batch totals of a warm stop).
        deadline = time.monotonic() + _FLUSH_S
        while not outbox.empty() and time.monotonic() < deadline:
            time.sleep(0.01)


def _start_sender(reports: Connection) -> queue.Queue[Report]:
    """A daemon thread that sends what is put in the returned queue down ``reports``."""
    outbox: queue.Queue[Report] = queue.Queue(maxsize=_OUTBOX)

    def sender() -> None:
        while True:
            item = outbox.get()
            try:
                reports.send(item)
            except (OSError, ValueError):
                return  # the supervisor is gone: nobody to tell

    threading.Thread(target=sender, name="kvfast-reports", daemon=True).start()
    return outbox
