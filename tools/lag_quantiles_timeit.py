"""Drain-lag quantiles: the supervisor's old deque + sorted() against kvfast.stats.LagRing.

    .venv/bin/python tools/lag_quantiles_timeit.py

Reports of 64 samples (the drainer's _LAG_SAMPLES), 8,000 of them (512,000
samples, past the ring's 500,000); a status window of 5,000 samples.  Prints the
best of 3 repeats per operation.
"""

from __future__ import annotations

import random
import timeit
from collections import deque
from collections.abc import Callable, Sequence

from kvfast.stats import RUN_SAMPLES, WINDOW_SAMPLES, LagRing


def sorted_quantiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """What the supervisor did before: one sorted() copy, then index it per quantile."""
    s = sorted(values)
    return [s[min(len(s) - 1, int(q * len(s)))] if s else 0.0 for q in qs]


def main() -> None:
    rng = random.Random(1)
    reports = [[rng.expovariate(1 / 120) for _ in range(64)] for _ in range(8000)]
    window: deque[float] = deque(maxlen=WINDOW_SAMPLES)
    run: deque[float] = deque(maxlen=RUN_SAMPLES)
    ring = LagRing()

    def add_deques() -> None:
        for r in reports:
            window.extend(r)
            run.extend(r)

    def add_ring() -> None:
        for r in reports:
            ring.extend(r)

    add_deques()
    add_ring()
    old = sorted_quantiles(run, (0.5, 0.99))
    assert ring.quantiles((0.5, 0.99)) == old, "the ring must give the same quantiles"
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("add one 64-sample report: 2 deques (before)", add_deques, len(reports)),
        ("add one 64-sample report: LagRing (after)", add_ring, len(reports)),
        ("p50+p99 of the 5,000-sample window: sorted (before)",
         lambda: sorted_quantiles(window, (0.5, 0.99)), 1),
        ("p50+p99 of the 5,000-sample window: LagRing (after)",
         lambda: ring.quantiles((0.5, 0.99), newest=WINDOW_SAMPLES), 1),
        ("p50+p99 of 500,000 samples at exit: sorted (before)",
         lambda: sorted_quantiles(run, (0.5, 0.99)), 1),
        ("p50+p99 of 500,000 samples at exit: LagRing (after)",
         lambda: ring.quantiles((0.5, 0.99)), 1),
    ]
    for name, call, per in cases:
        number = 3
        best = min(timeit.repeat(call, number=number, repeat=3)) / number / per
        unit, scale = ("µs", 1e6) if best < 1e-3 else ("ms", 1e3)
        print(f"{name:58s} {best * scale:9.3f} {unit}")


if __name__ == "__main__":
    main()
