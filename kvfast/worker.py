"""A drainer process: what runs in the child after the supervisor forked it.

The child sets its own signals and logging, opens its own connections (the
``Drainer`` is built here, after fork), drains, and sends one ``Report`` per
batch to the supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection

from kvfast.settings import Settings
from kvfast.stats import Report

__all__ = ["STOP_SIGNALS", "drainer_main"]

#: the signals that stop a drainer (warm stop) or, the second time, the supervisor
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Reports a slow supervisor may fall behind by before a drainer drops statistics.
_OUTBOX = 1000
# How long a stopping drainer waits for its last reports to leave.
_FLUSH_S = 2.0


def drainer_main(settings: Settings, index: int, reports: Connection, log_level: int) -> None:
    """Entry point of a forked drainer process.

    ``reports`` is this drainer's own pipe to the supervisor.  A shared
    multiprocessing.Queue would not do: a drainer killed with -9 while holding
    the queue's write lock would block every other drainer's next report.
    Reports go through a bounded in-process queue and a sender thread, so a slow
    supervisor drops statistics instead of stalling the drain.
    """
    stop = threading.Event()
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

    drainer = Drainer(settings, should_stop=stop.is_set)

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
