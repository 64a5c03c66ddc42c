"""Writing a load: ``apply`` an op, ``produce`` many, count them (``Produced``), in
``Spawned`` processes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import kvfast
from kvfast.loadgen._plan import LoadGenerator, Op

if TYPE_CHECKING:
    from kvfast.aio import AsyncRepository

__all__ = ["LoadResult", "Produced", "Spawned", "apply", "apply_async", "produce", "quantile",
           "repositories", "stop_file_exists"]

T = TypeVar("T")
SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Produced:
    """What a load wrote; ``add`` sums producers (``elapsed_s`` is the longest)."""

    #: queue entries added, and calls made
    entries: int = 0
    ops: int = 0
    #: single create() round trips, timed (run_producer's latency samples)
    latencies_ms: list[float] = field(default_factory=list)
    #: entries by kind of op
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    #: update items whose key was in neither store (they queued nothing)
    not_found: int = 0
    elapsed_s: float = 0.0
    #: every op applied, in order, when the load was asked to keep them
    journal: list[Op] | None = None

    @property
    def records(self) -> int:
        return self.entries

    def count(self, op: Op, entries: int) -> int:
        self.ops += 1
        self.entries += entries
        if op.kind == "create":
            self.creates += entries
        elif op.kind == "update":
            self.updates += entries
        else:
            self.deletes += entries
        if self.journal is not None:
            self.journal.append(op)
        return entries

    def add(self, other: Produced) -> Produced:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "elapsed_s":
                setattr(self, f.name, max(mine, theirs))
            elif f.name == "journal":
                if theirs is not None:
                    self.journal = [*(mine or []), *theirs]
            else:
                setattr(self, f.name, mine + theirs)
        return self


#: the demo's and benchmarks' result (records = entries)
LoadResult = Produced


# -- applying it -------------------------------------------------------------------------


def apply(op: Op, repo: kvfast.Repository[Any], produced: Produced) -> int:
    """Write ``op``; count it in ``produced``; return the queue entries it added."""
    try:
        if op.kind == "create":
            if op.single:
                repo.create(op.payload[0])
                return produced.count(op, 1)
            return produced.count(op, repo.create_many(op.payload))
        if op.kind == "update":
            if op.single:
                key, changes = op.payload[0]
                repo.update(key, **changes)
                return produced.count(op, 1)
            return produced.count(op, repo.update_many(op.payload))
        if op.single:
            repo.delete(op.payload[0])
            return produced.count(op, 1)
        return produced.count(op, repo.delete_many(op.payload))
    except kvfast.NotFound as exc:  # deleted (or never created) keys of a shared space
        produced.not_found += len(exc.keys)
        return produced.count(op, len(op.payload) - len(exc.keys))


async def apply_async(op: Op, repo: AsyncRepository[Any], produced: Produced) -> int:
    """``apply`` through an ``kvfast.aio.AsyncRepository`` (the *_many forms only)."""
    try:
        if op.kind == "create":
            return produced.count(op, await repo.create_many(op.payload))
        if op.kind == "update":
            return produced.count(op, await repo.update_many(op.payload))
        return produced.count(op, await repo.delete_many(op.payload))
    except kvfast.NotFound as exc:
        produced.not_found += len(exc.keys)
        return produced.count(op, len(op.payload) - len(exc.keys))


def repositories(client: kvfast.Client, models: Sequence[type]) -> dict[type, Any]:
    """A ``kvfast.Repository`` per model, sharing ``client``."""
    return {m: kvfast.Repository(m, client=client) for m in models}


def produce(
    gen: LoadGenerator,
    repos: Mapping[type, kvfast.Repository[Any]],
    entries: int | None,
    *,
    ops: int | None = None,
    deadline: float | None = None,
    stop: Callable[[], bool] | None = None,
    rate: float | None = None,
    write: Callable[[Op], int] | None = None,
    produced: Produced | None = None,
) -> Produced:
    """Apply ops until ``entries`` queue entries (None: no limit), ``ops`` calls,
    ``deadline`` (a time.monotonic() value) or ``stop()``, which is asked every 20 calls.

    ``rate`` caps the entries a second; ``write`` replaces ``apply`` (to retry, say).
    """
    out = produced if produced is not None else Produced()
    first = out.entries
    goal = None if entries is None else first + entries
    started = time.monotonic()
    write = write or (lambda op: apply(op, repos[op.model], out))
    calls = 0
    while goal is None or out.entries < goal:
        if (ops is not None and calls >= ops) or (
                deadline is not None and time.monotonic() >= deadline):
            break
        if stop is not None and calls % 20 == 0 and stop():
            break
        calls += 1
        write(gen.next_op(None if goal is None else goal - out.entries))
        if rate:
            ahead = (out.entries - first) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    out.elapsed_s = max(out.elapsed_s, time.monotonic() - started)
    return out


# -- producers in other processes ---------------------------------------------------------


class Spawned(Generic[T]):
    """``fn(*args)`` for each args in its own ``spawn`` process; ``stop()`` touches
    ``stop_file`` (a path that does not exist yet, which the producers poll)."""

    def __init__(self, fn: Callable[..., T], arg_lists: Sequence[tuple[Any, ...]], *,
                 stop_file: str | None = None) -> None:
        self.stop_file = stop_file
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=len(arg_lists),
                                                           mp_context=SPAWN)
        self.futures = [self.pool.submit(fn, *args) for args in arg_lists]

    def stop(self) -> None:
        if self.stop_file is not None:
            Path(self.stop_file).touch()

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def results(self, timeout: float | None = None) -> list[T]:
        return [f.result(timeout=timeout) for f in self.futures]

    def close(self) -> None:
        self.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Spawned[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of ``values`` (latencies; the supervisor's definition)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stop_file_exists(path: str | None) -> Callable[[], bool] | None:
    """A ``stop`` callback for ``produce``: the file ``path`` exists."""
    return None if path is None else Path(path).exists
