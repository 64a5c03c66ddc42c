"""The supervisor of a fault scenario: started beside a load, waited for, stopped.

Every scenario drives a real ``python -m kvfast.supervisor`` subprocess of the
load's models (``supervisor``); its output is kept in
``.kvfast/faults/logs/<test>.log`` for the post-mortem of a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
from drainhelpers import SupervisorProcess, is_idle, subprocess_env, supervisor_args

import kvfast

from .checks import drained_counter
from .load import SUPERVISOR_MODELS, Load
from .servers import SERVICES_DIR

_KEPT: set[str] = set()


class KeptSupervisor(SupervisorProcess):
    """A supervisor whose output is kept in ``.kvfast/faults/logs/<test>.log`` (every
    supervisor of the test, one after the other), for the post-mortem of a failure."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            folder = SERVICES_DIR / "logs"
            folder.mkdir(parents=True, exist_ok=True)
            test = os.environ.get("PYTEST_CURRENT_TEST", "supervisor").split(" ")[0]
            name = re.sub(r"[^\w.-]+", "_", test.rsplit("::", 1)[-1])
            mode = "a" if name in _KEPT else "w"
            _KEPT.add(name)
            with open(folder / f"{name}.log", mode) as fh:
                fh.write(f"==== {' '.join(self.args)}\n{self.output()}\n")
        super().close()


def supervisor(settings: kvfast.Settings, *flags: str, workers: int = 3,
               env: dict[str, str] | None = None) -> SupervisorProcess:
    """A supervisor of the load's models; its output is kept (see KeptSupervisor)."""
    args = supervisor_args(settings, *flags, workers=workers, models=SUPERVISOR_MODELS)
    return KeptSupervisor(args, subprocess_env(env))


@contextlib.contextmanager
def supervised_load(
    settings: kvfast.Settings, stats_path: Path, producers: int, entries_each: int, *,
    seed: int, workers: int = 3, flags: Sequence[str] = (), **load: Any,
) -> Iterator[tuple[SupervisorProcess, Load]]:
    """A supervisor (``--stats-json stats_path``) and a ``Load``, once its drainers run."""
    with (
        supervisor(settings, "--stats-json", str(stats_path), *flags, workers=workers) as sup,
        Load(settings, producers, entries_each, seed=seed, **load) as running,
    ):
        sup.wait_drainers(workers)
        yield sup, running


def wait_drain_started(r: redis.Redis, settings: kvfast.Settings, sup: SupervisorProcess,
                       entries: int) -> float:
    """Wait until more than ``entries`` were drained (a fault is injected mid-drain)."""
    return wait_for(lambda: drained_counter(r, settings) > entries, 120, "the drain to start",
                    lambda: sup.output()[-3000:])


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             on_timeout: Callable[[], str] = lambda: "") -> float:
    """Poll ``cond`` every 50 ms; return the seconds it took (AssertionError on timeout)."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.05)
    return time.monotonic() - start


def wait_drained(r: redis.Redis, settings: kvfast.Settings, sup: SupervisorProcess | None = None,
                 timeout: float = 180.0) -> float:
    def tail() -> str:
        return sup.output()[-4000:] if sup is not None else ""

    def idle() -> bool:
        if sup is not None and sup.proc.poll() is not None:
            raise AssertionError(f"the supervisor exited {sup.proc.returncode}:\n{tail()}")
        return is_idle(r, settings)

    return wait_for(idle, timeout, "the queues to drain", tail)


def stop_supervisor(sup: SupervisorProcess, timeout: float = 60.0) -> str:
    """SIGTERM (a warm stop), assert exit 0, return the output."""
    assert sup.proc.poll() is None, f"the supervisor had exited:\n{sup.output()[-4000:]}"
    sup.send(signal.SIGTERM)
    code = sup.wait(timeout)
    out = sup.output()
    assert code == 0, out[-4000:]
    return out


@contextlib.contextmanager
def injecting(fault: Callable[[], None], stop: threading.Event, name: str) -> Iterator[None]:
    """Run ``fault`` in a daemon thread for the block; at its end set ``stop`` and join."""
    thread = threading.Thread(target=fault, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
