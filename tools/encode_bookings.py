"""Encode N demo bookings with the implementation KVFAST_IMPL chose (for callgrind).

    KVFAST_IMPL=c|python tools/encode_bookings.py N encode|batch|make [indexed]

``encode``: the model's create encoder alone (object -> Encoded); ``batch``:
``WriteBuilder.build_create`` in 5,000-record calls with the collector paused,
as ``Producer.create`` runs it, no I/O (encoding, keys, partitions, HSET, DEL
and RPUSH framing: the producer's whole per-record work); ``make``: only the
bookings are made (what the other two modes include).  Instructions per
booking, repeatable on a noisy machine, are the difference of two callgrind
runs (N bookings in a mode, N in ``make``) over N::

    KVFAST_IMPL=c valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python tools/encode_bookings.py 20000 batch

``indexed``: the same bookings in a model with one index (on ``rider_id``), whose
batch adds one SADD per booking (issue 11's index cost, in instructions).

The time it prints is indicative only (this machine's speed varies 2-3x).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import Any

import kvfast
from kvfast import impl
from kvfast.cencoders import create_encoder
from kvfast.demo import Booking
from kvfast.keys import Keys
from kvfast.loadgen import make_booking
from kvfast.producer import WriteBuilder, gc_paused


@kvfast.model(table="bookings_indexed", key="id", indexes=("rider_id",))
class IndexedBooking:
    """kvfast.demo.Booking with one index."""

    id: int
    driver_id: int | None
    rider_id: int
    status: str
    fare_cents: int
    created_at: dt.datetime
    updated_at: dt.datetime


def main() -> None:
    n, mode = int(sys.argv[1]), sys.argv[2]
    indexed = sys.argv[3:] == ["indexed"]
    info = kvfast.model_info(IndexedBooking if indexed else Booking)
    encode = create_encoder(info)
    now = dt.datetime.now(dt.UTC)
    objs: list[Any] = [make_booking(i, now) for i in range(n)]
    if indexed:
        objs = [IndexedBooking(**vars(o)) for o in objs]
    builder = WriteBuilder(Keys("kvfast", 64), info)
    t0 = time.perf_counter()
    if mode == "make":
        pass
    elif mode == "batch":
        with gc_paused():  # as Producer.create runs it
            for i in range(0, n, 5000):
                builder.build_create(objs[i:i + 5000])
    else:
        for obj in objs:
            encode(obj)
    elapsed = time.perf_counter() - t0
    what = f"{mode} indexed" if indexed else mode
    print(f"{impl.IMPL} {what}: {n} bookings, {elapsed / max(n, 1) * 1e6:.2f} µs each")


if __name__ == "__main__":
    main()
