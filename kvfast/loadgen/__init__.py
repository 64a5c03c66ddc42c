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

from kvfast.loadgen._demo import demo_loads, make_booking, run_producer
from kvfast.loadgen._plan import DEFAULT_MIX, LoadGenerator, Mix, ModelLoad, Op
from kvfast.loadgen._write import (
    LoadResult,
    Produced,
    Spawned,
    apply,
    apply_async,
    produce,
    quantile,
    repositories,
    stop_file_exists,
)

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
