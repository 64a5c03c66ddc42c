"""The one load generator: model objects and a mixed create / update / delete load.

Used by tools/demo, the drain-path tests, the fault scenarios and the benchmarks.
It speaks only kvfast's public API (``kvfast.Repository``, ``kvfast.aio``).

* ``ModelLoad``: how to make an object of key index ``i`` and a change to one.
* ``Mix``: the shares of creates, updates and deletes, the records per call
  (``sizes``) and the forms of the calls (single-record calls, partial updates,
  the same key several times in one ``update_many``).
* ``LoadGenerator``: turns a seed into ``Op`` values over a key space, either
  *shared* (``keys=N``: indexes 0..N-1 that several producers overwrite,
  update and delete, so updates may meet ``NotFound``) or *owned* (``first=``:
  fresh keys from there, updates and deletes of keys this generator created).
* ``apply`` / ``apply_async``: one ``Op`` through a sync or async repository.
* ``Produced``: what was written (entries queued, ops by kind, ``NotFound``
  keys, optionally every op applied), so a test can compute the truth.
* ``produce``: the loop (a record count, a deadline, a stop callback, a rate).
* ``Spawned``: producer functions in ``spawn`` processes, stopped by a file.
* ``run_producer``: the demo's and the benchmarks' producer over ``kvfast.demo``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import multiprocessing
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import kvfast

if TYPE_CHECKING:
    from kvfast.aio import AsyncRepository
    from kvfast.demo import Booking

# kvfast.demo is imported where it is used: importing it registers its models, and a
# supervisor that loads a module using this one (tests/drainmodels) must not see them.

__all__ = [
    "DEFAULT_MIX",
    "LoadGenerator",
    "LoadResult",
    "Mix",
    "ModelLoad",
    "Op",
    "Produced",
    "Spawned",
    "apply",
    "apply_async",
    "demo_loads",
    "make_booking",
    "produce",
    "quantile",
    "repositories",
    "run_producer",
    "stop_file_exists",
]

T = TypeVar("T")
SPAWN = multiprocessing.get_context("spawn")
STATUSES = ("new", "assigned", "started", "completed", "cancelled")
#: the id range each demo producer owns (``index * _ID_SPAN + 1`` onwards)
_ID_SPAN = 1_000_000_000


# -- what to write ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLoad:
    """One model of a load: its key of index ``i``, an object of index ``i``, a change."""

    model: type
    key: Callable[[int], Any]
    make: Callable[[int, random.Random], Any]
    change: Callable[[random.Random], dict[str, Any]]
    #: share of the calls that go to this model (relative to the other models)
    weight: float = 1.0

    @classmethod
    def of(cls, model: type, values: Callable[[random.Random], dict[str, Any]], *,
           key: Callable[[int], Any] = lambda i: i + 1, weight: float = 1.0) -> ModelLoad:
        """Objects ``model(key(i), **values(rng))``; changes drawn from ``values`` too."""
        name = kvfast.model_info(model).key

        def make(i: int, rng: random.Random) -> Any:
            return model(**{name: key(i)}, **values(rng))

        return cls(model, key, make, values, weight)


@dataclass(frozen=True)
class Mix:
    """The operations of a load."""

    create: float = 0.6
    update: float = 0.3
    delete: float = 0.1
    #: records per call, one drawn per call
    sizes: tuple[int, ...] = (500,)
    #: share of one-record calls made as create()/update()/delete() (not the *_many form)
    single: float = 0.0
    #: updates change a random non-empty subset of the fields ``change`` returns
    partial: bool = False
    #: chance that an update item repeats the previous item's key (applied in order)
    repeat: float = 0.0

    def with_batch(self, batch: int) -> Mix:
        return dataclasses.replace(self, sizes=(batch,))


#: share of creates, updates, deletes in the records written (demo and benchmarks)
DEFAULT_MIX = Mix()


@dataclass
class Op:
    """One call: ``payload`` is objects (create), (key, changes) pairs (update) or keys."""

    kind: str
    model: type
    payload: list[Any]
    single: bool = False


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


class _Live:
    """Keys created and not deleted, with O(1) random pick and removal."""

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def pick(self, rng: random.Random) -> Any:
        return self.keys[rng.randrange(len(self.keys))]

    def pop(self, rng: random.Random) -> Any:
        i = rng.randrange(len(self.keys))
        self.keys[i], self.keys[-1] = self.keys[-1], self.keys[i]
        return self.keys.pop()


class LoadGenerator:
    """Ops over ``loads`` from ``seed``: a shared key space (``keys``) or owned (``first``)."""

    def __init__(self, loads: Sequence[ModelLoad], *, mix: Mix = DEFAULT_MIX, seed: int = 0,
                 keys: int | None = None, first: int = 1) -> None:
        self.loads = list(loads)
        self.by_model = {ml.model: ml for ml in self.loads}
        self.mix = mix
        self.rng = random.Random(seed)
        self.keys = keys
        self._weights = [ml.weight for ml in self.loads]
        self._next = dict.fromkeys(self.by_model, first)
        self._live = {m: _Live() for m in self.by_model}

    def key(self, model: type) -> Any:
        """A key of ``model``: any of the shared space, or one this generator created."""
        if self.keys is not None:
            return self.by_model[model].key(self.rng.randrange(self.keys))
        return self._live[model].pick(self.rng)

    def make(self, model: type) -> Any:
        """An object of ``model`` on a key of the space (a fresh one when owned)."""
        ml = self.by_model[model]
        if self.keys is not None:
            return ml.make(self.rng.randrange(self.keys), self.rng)
        i = self._next[model]
        self._next[model] = i + 1
        obj = ml.make(i, self.rng)
        self._live[model].keys.append(ml.key(i))
        return obj

    def create(self, model: type, n: int) -> Op:
        return Op("create", model, [self.make(model) for _ in range(n)], self._single(n))

    def update(self, model: type, n: int) -> Op:
        ml, rng = self.by_model[model], self.rng
        items: list[tuple[Any, dict[str, Any]]] = []
        for _ in range(n):
            key = (items[-1][0] if items and rng.random() < self.mix.repeat
                   else self.key(model))
            changes = ml.change(rng)
            if self.mix.partial:
                names = rng.sample(sorted(changes), rng.randrange(1, len(changes) + 1))
                changes = {name: changes[name] for name in names}
            items.append((key, changes))
        return Op("update", model, items, self._single(n))

    def delete(self, model: type, n: int) -> Op:
        if self.keys is not None:
            doomed = [self.key(model) for _ in range(n)]
        else:
            doomed = [self._live[model].pop(self.rng) for _ in range(n)]
        return Op("delete", model, doomed, self._single(n))

    def next_op(self, limit: int | None = None) -> Op:
        """A random op of the mix, of at most ``limit`` records."""
        rng, mix = self.rng, self.mix
        model = (self.loads[0] if len(self.loads) == 1
                 else rng.choices(self.loads, self._weights)[0]).model
        n = rng.choice(mix.sizes)
        if limit is not None:
            n = max(1, min(n, limit))
        x = rng.random()
        if x < mix.create or (self.keys is None and len(self._live[model].keys) < n):
            return self.create(model, n)
        if x < mix.create + mix.update:
            return self.update(model, n)
        return self.delete(model, n)

    def _single(self, n: int) -> bool:
        return n == 1 and self.mix.single > 0 and self.rng.random() < self.mix.single


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


# -- the demo models -------------------------------------------------------------------------


def make_booking(i: int, now: dt.datetime) -> Booking:
    from kvfast.demo import Booking

    return Booking(id=i, driver_id=i % 5000, rider_id=i * 7 % 100_000, status="new",
                   fare_cents=500 + i % 5000, created_at=now, updated_at=now)


def demo_loads(now: dt.datetime) -> list[ModelLoad]:
    """Bookings, drivers and rides of id ``i`` (the same values as ``make_booking``)."""
    from kvfast.demo import Booking, Driver, Ride

    def driver(i: int, rng: random.Random) -> Driver:
        return Driver(id=i, name=f"driver {i}", phone=f"+91{i:010d}", rating=4.0 + (i % 10) / 10,
                      active=True, vehicle={"plate": f"KA{i % 100:02d}{i:06d}", "seats": 4},
                      updated_at=now)

    def ride(i: int, rng: random.Random) -> Ride:
        return Ride(id=f"r{i}", booking_id=i, driver_id=i % 5000,
                    distance_km=Decimal(i % 40_000) / 1000,
                    route=[[12.97, 77.59], [12.93, 77.62]], started_on=now.date(),
                    finished_at=None)

    def booking_change(rng: random.Random) -> dict[str, Any]:
        return {"status": rng.choice(STATUSES), "updated_at": now,
                "fare_cents": rng.randrange(100, 10_000)}

    def driver_change(rng: random.Random) -> dict[str, Any]:
        return {"rating": round(rng.uniform(3.0, 5.0), 2), "active": rng.random() < 0.9}

    def ride_change(rng: random.Random) -> dict[str, Any]:
        return {"finished_at": now, "distance_km": Decimal(rng.randrange(100, 40_000)) / 1000}

    return [
        ModelLoad(Booking, lambda i: i, lambda i, rng: make_booking(i, now), booking_change),
        ModelLoad(Driver, lambda i: i, driver, driver_change),
        ModelLoad(Ride, lambda i: f"r{i}", ride, ride_change),
    ]


def run_producer(
    settings: kvfast.Settings,
    index: int,
    writes: int,
    *,
    batch: int = 500,
    mix: Mix = DEFAULT_MIX,
    latency_samples: int = 1000,
    deadline: float | None = None,
    seed: int | None = None,
) -> Produced:
    """Producer ``index`` of the demo: ``latency_samples`` single creates, each timed, then
    ``writes`` records in calls of ``batch`` (or until ``deadline``, a time.monotonic())
    on the id range it owns."""
    from kvfast.demo import Booking

    loads = demo_loads(dt.datetime.now(dt.UTC))
    gen = LoadGenerator(loads, mix=mix.with_batch(batch), seed=index if seed is None else seed,
                        first=index * _ID_SPAN + 1)
    with kvfast.Client(settings) as client:
        repos = repositories(client, [ml.model for ml in loads])
        out = Produced()
        booking = repos[Booking]
        for _ in range(latency_samples):
            obj = gen.make(Booking)
            t0 = time.perf_counter_ns()
            booking.create(obj)
            out.latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
            out.count(Op("create", Booking, [obj], True), 1)
        return produce(gen, repos, writes, deadline=deadline, produced=out)

