"""Capped exponential backoff with jitter, and the one retry loop built on it.

Everything kvfast retries (a drainer's claim, apply, ack, rebase and lease
renewal; the supervisor's restart of a dead drainer) waits by ``Backoff``:
50 ms, 100 ms, 200 ms … up to a cap, each delay drawn from [½, 1] of its step
so that drainers that lost a server together do not come back in lock-step.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Backoff", "retry"]

T = TypeVar("T")


class Backoff:
    """Capped exponential backoff: ``base * 2**attempt`` seconds, at most ``cap``.

    ``jitter`` (default on) draws each delay from [½, 1] of its step.
    """

    def __init__(self, base: float = 0.05, cap: float = 5.0, *, jitter: bool = True) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.attempt = 0

    def step(self, attempt: int) -> float:
        """The un-jittered delay of retry number ``attempt`` (0 = the first)."""
        return min(self.cap, self.base * float(2 ** min(attempt, 62)))

    def next_delay(self) -> float:
        delay = self.step(self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def reset(self) -> None:
        self.attempt = 0


def retry(
    call: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str | Callable[[BaseException], tuple[int, str]],
    log: logging.Logger,
    backoff: Backoff | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()`` until it returns, waiting by ``backoff`` after each ``retry_on`` error.

    Each failure is logged as a warning: ``what`` (e.g. "PostgreSQL
    unavailable", "ack failed"), the error's first line and the delay; a
    callable ``what(exc)`` returns (log level, text) when they depend on the error.
    ``on_retry(exc)`` runs before the wait (drop a broken connection, check a
    lease, or raise to give up).  Any other exception propagates.
    """
    backoff = backoff if backoff is not None else Backoff()
    while True:
        try:
            return call()
        except retry_on as exc:
            if on_retry is not None:
                on_retry(exc)
            delay = backoff.next_delay()
            level, text = (logging.WARNING, what) if isinstance(what, str) else what(exc)
            log.log(level, "%s (%s); retrying in %.2fs", text, first_line(exc), delay)
            sleep(delay)


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line log records."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
