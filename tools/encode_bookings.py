"""Encode N demo bookings with one implementation's create encoder (for callgrind).

    KVFAST_IMPL=c valgrind --tool=callgrind .venv/bin/python tools/encode_bookings.py 20000 c

Prints the implementation and the mean time per booking (indicative only: the
machine's speed varies; callgrind's instruction counts are the repeatable
figure, taken as the difference between a run of N and a run of 0 bookings).
"""

from __future__ import annotations

import datetime as dt
import sys
import time

import kvfast
from kvfast.cencoders import build_c_create_encoder
from kvfast.demo import Booking
from kvfast.encoders import build_create_encoder
from kvfast.loadgen import make_booking


def main() -> None:
    n = int(sys.argv[1])
    which = sys.argv[2]
    info = kvfast.model_info(Booking)
    encode = build_c_create_encoder(info) if which == "c" else build_create_encoder(info)
    now = dt.datetime.now(dt.UTC)
    objs = [make_booking(i, now) for i in range(n)]
    t0 = time.perf_counter()
    for obj in objs:
        encode(obj)
    elapsed = time.perf_counter() - t0
    print(f"{which}: {n} bookings, {elapsed / max(n, 1) * 1e6:.2f} µs each")


if __name__ == "__main__":
    main()
