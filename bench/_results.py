"""The benchmarks' results: one ``Row`` per figure, printed as the summary table.

Every figure is recorded as a ``Row`` (kvfast, the reference measured in the
same run, the ratio, the issue's target); ``conftest.py`` prints them as a table
at the end of the run and writes ``bench/results/latest.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of the summary: a kvfast figure, its reference, the target."""

    group: str
    figure: str
    unit: str
    kvfast: float | None
    reference: float | None = None
    reference_name: str = ""
    #: "min" / "max": kvfast against target_value; "ratio_min" / "ratio_max": the ratio
    target_kind: str = ""
    target_value: float | None = None
    target: str = ""
    #: "throughput" or "latency": drawn by tools/bench-report
    chart: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.kvfast is None or not self.reference:
            return None
        return self.kvfast / self.reference

    @property
    def status(self) -> str:
        value = self.ratio if self.target_kind.startswith("ratio") else self.kvfast
        if not self.target_kind or self.target_value is None:
            return "info"
        if value is None:
            return "n/a"
        ok = value >= self.target_value if self.target_kind.endswith("min") else (
            value <= self.target_value)
        return "pass" if ok else "MISS"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratio"] = self.ratio
        d["status"] = self.status
        return d


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    #: raw measurements by name, shared between tests and written to the JSON
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows = [r for r in self.rows if (r.group, r.figure) != (row.group, row.figure)]
        self.rows.append(row)
        return row

    def ordered(self) -> list[Row]:
        """Rows by benchmark (producer, latency, drain, e2e, scaling), in recording order."""
        return sorted(self.rows, key=lambda r: GROUPS.index(r.group) if r.group in GROUPS
                      else len(GROUPS))


GROUPS = ("producer", "latency", "drain", "e2e", "scaling", "find", "cluster")


RESULTS = Results()


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "µs/entry"):
        return f"{value:.3f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def table_lines(rows: Sequence[Row]) -> list[str]:
    header = ("figure", "unit", "kvfast", "reference", "ratio", "seed target", "result")
    body = []
    for r in rows:
        ref = fmt(r.reference, r.unit)
        if r.reference_name and r.reference is not None:
            ref = f"{ref} ({r.reference_name})"
        ratio = r.ratio
        body.append((f"{r.group}: {r.figure}", r.unit, fmt(r.kvfast, r.unit), ref,
                     "-" if ratio is None else f"{ratio:.2f}x", r.target or "-", r.status))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    right = {2, 4}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(b) for b in body)]
