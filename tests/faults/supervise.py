"""The supervisor of a fault scenario: started, waited for, stopped, its output read.

Every scenario drives a real ``python -m kvfast.supervisor`` subprocess of the
load's models (``supervisor``); its output is kept in
``.kvfast/faults/logs/<test>.log`` for the post-mortem of a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from drainhelpers import SupervisorProcess, is_idle, subprocess_env, supervisor_args

import kvfast

from .load import SUPERVISOR_MODELS
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


def stats_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


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


# -- its output ------------------------------------------------------------------------------


def log_lines(out: str, needle: str) -> list[str]:
    return [line for line in out.splitlines() if needle in line]


_LOADING_DEATH = re.compile(r"KvfastError: Redis refused [^:]+: LOADING ")


def drainer_deaths(out: str) -> tuple[int, int, int]:
    """(drainer process deaths, LOADING tracebacks, lease-keeper threads that died).

    A drainer (or its lease keeper thread) that meets a Redis still loading its
    data set dies today (the bug test_redis_faults.test_redis_still_loading_is_
    reported_as_unavailable shows): the Redis restart scenarios tolerate deaths
    with a LOADING traceback, and only those.
    """
    return (len(log_lines(out, "exited with")), len(_LOADING_DEATH.findall(out)),
            len(log_lines(out, "Exception in thread kvfast-lease")))


def report(name: str, **figures: Any) -> None:
    """Print a scenario's measured figures (shown with ``pytest -rP`` or ``-s``)."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    print(f"FIGURES {name}: {shown}")
