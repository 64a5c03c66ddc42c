"""9. numpy for the drainer's COPY rows: measured against the C path, not used.

Issue 12 asks for numpy where it measures faster than the C path or plain
Python, e.g. fixed-width COPY columns.  This measures the best case for numpy:
a model of fixed-width columns only (int8 key, three int8, a float8, a bool),
whose binary COPY rows all have one layout, so one structured dtype
(``>i2`` field count, then ``>i4`` length + big-endian value per column) builds
the whole COPY body with ``tobytes()``.  Per batch of ``ROWS`` queued create
entries, from the entries' bytes to the COPY body:

* C: ``kvfast._speedups.create_row`` per entry (what the drainer runs), joined;
* numpy: ``orjson.loads`` per entry (the values must be parsed first: numpy does
  not read JSON), the columns filled from the parsed values, one ``tobytes()``;
* numpy's floor: the columns filled from values already parsed (not timed:
  the parse), and ``tobytes()`` - what numpy would cost if parsing were free;
* Python (the reference the issue names, psycopg's own): ``orjson.loads`` and
  psycopg's binary ``Transformer.dump_sequence`` per row, as
  ``Copy.write_row`` does.

The bodies of C and numpy must be byte-identical (asserted).  Whichever comes
out, the figure is recorded as info; the README's C section says what was
chosen.  numpy stays where it measured faster: the lag quantiles of
``kvfast.stats``.
"""

from __future__ import annotations

import statistics
import struct
import time
from typing import Any

import _results
import numpy as np
import orjson
import psycopg
import pytest

import kvfast
from kvfast import codec, crows, impl
from kvfast.keys import key_wire
from kvfast.model import model_version

ROWS = 2000
ROUNDS = 15
DATA = _results.RESULTS.data


@kvfast.model(table="bench_fixed", key="id")
class Fixed:
    id: int
    a: int
    b: int
    c: int
    x: float
    ok: bool


COLUMNS = ("id", "a", "b", "c", "x", "ok")
#: one binary COPY row: field count, then (length, value) per column, big-endian
ROW_DTYPE = np.dtype([("n", ">i2"),
                      *((f"l_{c}", ">i4") for c in COLUMNS),
                      ("v_id", ">i8"), ("v_a", ">i8"), ("v_b", ">i8"), ("v_c", ">i8"),
                      ("v_x", ">f8"), ("v_ok", "u1")])
ORDER = ["n", *(f for c in COLUMNS for f in (f"l_{c}", f"v_{c}"))]
ROW_DTYPE = np.dtype({"names": ORDER, "formats": [ROW_DTYPE[f] for f in ORDER]})
WIDTHS = {"id": 8, "a": 8, "b": 8, "c": 8, "x": 8, "ok": 1}


def _entries() -> list[bytes]:
    info = kvfast.model_info(Fixed)
    mv = model_version(info)
    return [codec.encode_write(info.table, codec.OP_CREATE, key_wire(i),
                               {"id": i, "a": i * 3, "b": -i, "c": i % 977,
                                "x": i / 7, "ok": i % 2 == 0},
                               1_764_000_000_000_000 + i, mv, None)
            for i in range(1, ROWS + 1)]


def _c_body(entries: list[bytes], codecs: Any) -> bytes:
    create_row = impl.require_speedups().create_row
    return b"".join([create_row(raw, codecs)[2] for raw in entries])


def _fill(fields: list[dict[str, Any]]) -> bytes:
    rows = np.empty(len(fields), ROW_DTYPE)
    rows["n"] = len(COLUMNS)
    for c in COLUMNS:
        rows[f"l_{c}"] = WIDTHS[c]
        rows[f"v_{c}"] = [f[c] for f in fields]
    return rows.tobytes()


def _numpy_body(entries: list[bytes]) -> bytes:
    loads = orjson.loads
    return _fill([loads(raw)["f"] for raw in entries])


def _python_body(entries: list[bytes]) -> bytes:
    tx = psycopg.adapt.Transformer()
    tx.set_dumper_types([psycopg.adapters.types.get_oid(t)
                         for t in ("int8", "int8", "int8", "int8", "float8", "bool")],
                        psycopg.pq.Format.BINARY)
    formats = [psycopg.adapt.PyFormat.BINARY] * len(COLUMNS)
    head = struct.pack("!h", len(COLUMNS))
    pack = struct.Struct("!i").pack
    out = []
    loads = orjson.loads
    for raw in entries:
        f = loads(raw)["f"]
        out.append(head)
        for data in tx.dump_sequence([f[c] for c in COLUMNS], formats):
            out += (pack(len(data)), bytes(data))
    return b"".join(out)


def _rounds() -> dict[str, float]:
    info = kvfast.model_info(Fixed)
    codecs = crows.row_codec(info)
    codecs = {info.table.encode(): codecs}
    entries = _entries()
    parsed = [orjson.loads(raw)["f"] for raw in entries]
    assert "f" in orjson.loads(entries[0]), "the entry layout changed: fix _numpy_body"
    c_body = _c_body(entries, codecs)
    assert _numpy_body(entries) == c_body == _python_body(entries)
    cases = {"c": lambda: _c_body(entries, codecs), "numpy": lambda: _numpy_body(entries),
             "numpy_floor": lambda: _fill(parsed), "python": lambda: _python_body(entries)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for n in range(ROUNDS + 1):  # interleaved; the first round warms up
        for name, run in cases.items():
            t0 = time.perf_counter()
            run()
            if n:
                times[name].append(time.perf_counter() - t0)
    return {k: ROWS / statistics.median(v) for k, v in times.items()}


@pytest.mark.benchmark(group="9-numpy")
def test_numpy_against_the_c_copy_rows(benchmark: Any) -> None:
    if impl.speedups is None:
        pytest.skip("KVFAST_IMPL=python: there is no C path to compare numpy with")
    rates = benchmark.pedantic(_rounds, rounds=1, iterations=1)
    DATA["numpy.copy_rows"] = rates
    benchmark.extra_info.update(rates)
    add = _results.RESULTS.add
    add(_results.Row("drain", "COPY rows, numpy (parse + fill)", "rows/s", rates["numpy"],
                     rates["c"], "C create_row (the drainer's path)"))
    add(_results.Row("drain", "COPY rows, numpy fill only (parse free)", "rows/s",
                     rates["numpy_floor"], rates["c"], "C create_row (the drainer's path)"))
    add(_results.Row("drain", "COPY rows, C create_row", "rows/s", rates["c"],
                     rates["python"], "orjson + psycopg binary dump_sequence"))
