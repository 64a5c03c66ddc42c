"""Encode N demo bookings with the implementation KVFAST_IMPL chose (for callgrind).

    KVFAST_IMPL=c|python tools/encode_bookings.py N encode|batch|make

``encode``: the model's create encoder alone (object -> Encoded); ``batch``:
``WriteBuilder.build_create`` in 5,000-record calls with the collector paused,
as ``Producer.create`` runs it, no I/O (encoding, keys, partitions, HSET, DEL
and RPUSH framing: the producer's whole per-record work); ``make``: only the
bookings are made (what the other two modes include).  Instructions per
booking, repeatable on a noisy machine, are the difference of two callgrind
runs (N bookings in a mode, N in ``make``) over N::

    KVFAST_IMPL=c valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python tools/encode_bookings.py 20000 batch

The time it prints is indicative only (this machine's speed varies 2-3x).
"""

from __future__ import annotations

import datetime as dt
import sys
import time

import kvfast
from kvfast import impl
from kvfast.cencoders import create_encoder
from kvfast.demo import Booking
from kvfast.keys import Keys
from kvfast.loadgen import make_booking
from kvfast.producer import WriteBuilder, gc_paused


def main() -> None:
    n, mode = int(sys.argv[1]), sys.argv[2]
    info = kvfast.model_info(Booking)
    encode = create_encoder(info)
    now = dt.datetime.now(dt.UTC)
    objs = [make_booking(i, now) for i in range(n)]
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
    print(f"{impl.IMPL} {mode}: {n} bookings, {elapsed / max(n, 1) * 1e6:.2f} µs each")


if __name__ == "__main__":
    main()
