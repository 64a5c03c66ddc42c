"""The C create decoder (kvfast._speedups.create_row) against the Python drain path.

The Python path (codec.parse, codec.check, the generated row decoder, psycopg's
binary ``write_row``) is the reference.  For every model of tests/models.py and
every field type, hypothesis writes create entries -- valid ones, ones whose wire
values were swapped for other JSON, and mutated bytes -- and checks that what C
takes it turns into exactly the Python path's COPY row (same key, same bytes,
same write time and mark), that what it does not take it leaves to Python
(None, never an exception), that batches fold to the same ops with either, and
that a drain with either leaves identical tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import struct
import uuid
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
import redis
from drainhelpers import is_idle, queue_key
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from models import Color, Everything, RideStatus, Typed
from test_coltypes import sample
from test_speedups import MODELS, objects, valid_values

import kvfast
from kvfast import batch as batch_mod
from kvfast import codec, crows
from kvfast.batch import UPSERT, build_batch, values_of
from kvfast.drainer import Drainer
from kvfast.encoders import build_create_encoder
from kvfast.errors import ValidationError
from kvfast.keys import key_wire
from kvfast.model import model_version

speedups = pytest.importorskip("kvfast._speedups")

T_US = 1_764_000_000_000_000


def _codec(info: kvfast.ModelInfo) -> Any:
    codec_ = speedups.RowCodec(info, orjson.dumps(model_version(info)),
                               tuple(crows.row_field_plan(info, f) for f in info.fields),
                               info.key_fields[0].index,
                               crows.row_field_plan(info, info.key_fields[0])[1] == crows.R_STR)
    return {info.table.encode(): codec_}


CODECS = {m.__name__: _codec(kvfast.model_info(m)) for m in MODELS
          if not kvfast.model_info(m).composite
          and crows.row_field_plan(kvfast.model_info(m), kvfast.model_info(m).key_fields[0])[1]
          in (crows.R_INT, crows.R_STR)}
#: models whose key C returns (one int or text key): the others drain in Python
C_MODELS = [m for m in MODELS if m.__name__ in CODECS]
ENCODERS = {m.__name__: build_create_encoder(kvfast.model_info(m)) for m in MODELS}


def copy_row(info: kvfast.ModelInfo, values: list[Any]) -> bytes:
    """The bytes psycopg's binary ``Copy.write_row`` writes for ``values`` (no header)."""
    tx = psycopg.adapt.Transformer()
    tx.set_dumper_types([psycopg.adapters.types.get_oid(f.ftype.copy_type) for f in info.fields],
                        psycopg.pq.Format.BINARY)
    out = struct.pack("!h", len(values))
    for data in tx.dump_sequence(values, [psycopg.adapt.PyFormat.BINARY] * len(values)):
        out += b"\xff\xff\xff\xff" if data is None else struct.pack("!i", len(data)) + bytes(data)
    return out


def python_outcome(info: kvfast.ModelInfo, raw: bytes) -> tuple[Any, ...]:
    """What the Python drain path makes of one create entry: its row or its dead letter."""
    batch = _python_batch([(0, [raw])])
    if batch.dead:
        return ("dead", batch.dead[0][1])
    mops = batch.models.get(info.table)
    if mops is None or not mops.ops:
        return ("other",)  # held, or not a create of this model
    (op,) = mops.ops.values()
    if op.kind != UPSERT:
        return ("other",)
    return ("row", type(op.key), op.key, copy_row(info, op.row), batch.write_times[0], op.mark)


def c_outcome(name: str, raw: bytes) -> tuple[Any, ...] | None:
    got = speedups.create_row(raw, CODECS[name])
    if got is None:
        return None
    _rc, key, row, t_us, mark = got
    return ("row", type(key), key, row, t_us, mark)


def _python_batch(parts: list[tuple[int, list[bytes]]]) -> batch_mod.Batch:
    saved = batch_mod._create_row
    batch_mod._create_row = None  # the Python path exactly (what KVFAST_IMPL=python runs)
    try:
        return build_batch(parts)
    finally:
        batch_mod._create_row = saved


def entry(info: kvfast.ModelInfo, key: Any, wire: dict[str, Any], mark: str | None = None,
          version: str | None = "model") -> bytes:
    mv = model_version(info) if version == "model" else version
    return codec.encode_write(info.table, codec.OP_CREATE, key_wire(key), wire, T_US, mv, mark)


def encoded(name: str, obj: Any) -> tuple[Any, dict[str, Any]] | None:
    try:
        key, _fields, _count, wire, *_index = ENCODERS[name](obj)  # indexed: 5 items
    except ValidationError:
        return None
    return key, dict(wire)


# -- wire values that are not the producer's ------------------------------------------------

OTHER_JSON = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),  # what orjson writes
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(-(2**63), 2**63 - 1), max_size=2),
    st.sampled_from([
        "NaN", "Infinity", "-Infinity", "nan", "inf", "2026-02-29", "2024-02-29", "2026-13-01",
        "2026-12-03T14:00:00", "2026-12-03T14:00:00+00:00", "2026-12-03T14:00:00.123+00:00",
        "2026-12-03T14:00:00.123456+00:00", "2026-12-03T14:00:00Z", "2026-12-03 14:00:00+00:00",
        "2026-12-03T14:00:00+05:30", "2026-12-03T24:00:00+00:00", "0000-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00+00:00", "14:00:00",
        "23:59:59.999999", "24:00:00", "14:00", "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "6BA7B810-9DAD-11D1-80B4-00C04FD430C8", "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
        "6ba7b8109dad11d180b400c04fd430c8", "6ba7b810-9dad-11d1-80b4-00c04fd430cg", "", "QQ==",
        "QUI=", "QUJD", "QQ", "Q===", "QR==", "QUI", "====", "QQ==QQ==", "a b", "red", "RED",
        "dark", "auto", "cab", "requested", "x\x00y", "ab  ", "  ", "12.50", "1E+3", "-0",
        "0E-7", "abcdef", "ünï✓", 2**63, -(2**63), 2**64 - 1, 32768, -32769, 2**31, 1.5, -0.0,
        1e300, 1e16, 0.1, True, 0, 1,
    ]),
)


@st.composite
def entries_of(draw: st.DrawFn, model: type) -> tuple[str, kvfast.ModelInfo, bytes, bool]:
    """(model name, info, a create entry, whether it is the producer's own)."""
    name = model.__name__
    info = kvfast.model_info(model)
    got = draw(objects(model, max_bad=1).map(lambda o: encoded(name, o)))
    assume(got is not None)
    assert got is not None
    key, wire = got
    swapped = draw(st.sets(st.sampled_from([f.name for f in info.fields]), max_size=2))
    for field_name in swapped:
        wire[field_name] = draw(OTHER_JSON)
    mark = draw(st.sampled_from([None, "w1", "ü\"\\"]))
    return name, info, entry(info, key, wire, mark), not swapped


@pytest.mark.parametrize("model", C_MODELS, ids=lambda m: m.__name__)
@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.filter_too_much])
@given(data=st.data())
def test_a_create_c_takes_is_the_python_copy_row_byte_for_byte(model: type,
                                                                data: st.DataObject) -> None:
    name, info, raw, own = data.draw(entries_of(model))
    want = python_outcome(info, raw)
    got = c_outcome(name, raw)
    if got is not None:
        assert got == want, raw
    elif own:
        # the producer's own entries of a valid object: C takes every one
        assert want[0] != "row", f"C left a valid entry to Python: {raw!r}"


def valid_everything(**changes: Any) -> Any:
    values = {"id": 7, "n_int": -5, "n_str": "ünï \"x\"", "n_float": 0.1, "n_bool": True,
              "n_datetime": dt.datetime(2026, 12, 3, 14, 0, 0, 123456, tzinfo=dt.UTC),
              "n_date": dt.date(2024, 2, 29), "n_decimal": Decimal("12.50"), "n_bytes": b"\x00\xff",
              "n_dict": {"a": [1, 2.5, None]}, "n_list": ["x", {"y": False}],
              "n_uuid": uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), "n_enum": Color.RED}
    values.update(changes)
    return Everything(**values)


def test_every_kind_but_python_fields_is_decoded_in_c() -> None:
    """The plans of the test models: which fields C decodes itself."""
    info = kvfast.model_info(Everything)
    kinds = {f.name: crows.row_field_plan(info, f)[1] for f in info.fields}
    assert kinds["n_int"] == crows.R_INT and kinds["n_str"] == crows.R_STR
    assert kinds["n_float"] == crows.R_FLOAT8 and kinds["n_datetime"] == crows.R_TSTZ
    assert kinds["n_date"] == crows.R_DATE and kinds["n_uuid"] == crows.R_UUID
    assert kinds["n_bytes"] == crows.R_BYTEA and kinds["n_enum"] == crows.R_ENUM
    assert kinds["n_decimal"] == kinds["n_dict"] == crows.R_PY
    typed = kvfast.model_info(Typed)
    tk = {f.name: crows.row_field_plan(typed, f)[1] for f in typed.fields}
    assert tk["ts"] == crows.R_TS and tk["clock"] == crows.R_TIME and tk["status"] == crows.R_ENUM
    assert tk["kind"] == crows.R_ENUM and tk["small"] == crows.R_INT and tk["money"] == crows.R_PY
    key, wire = ENCODERS["Everything"](valid_everything())[0], \
        dict(ENCODERS["Everything"](valid_everything())[3])
    raw = entry(info, key, wire, "mark")
    assert c_outcome("Everything", raw) == python_outcome(info, raw)


def _everything_entry(**wire_changes: Any) -> bytes:
    info = kvfast.model_info(Everything)
    key, _f, _c, wire = ENCODERS["Everything"](valid_everything())
    wire = dict(wire)
    wire.update(wire_changes)
    return entry(info, key, wire)


@pytest.mark.parametrize("raw", [
    _everything_entry(n_int=2**63),
    _everything_entry(n_int=1.0),
    _everything_entry(n_str="a\x00b"),
    _everything_entry(n_str=None),
    _everything_entry(n_date="2026-02-30"),
    _everything_entry(n_datetime="2026-12-03T14:00:00"),
    _everything_entry(n_bytes="QQ=x"),
    _everything_entry(n_float="nan"),
    _everything_entry(n_uuid="not a uuid"),
    _everything_entry(n_enum="purple"),
    _everything_entry(n_decimal="twelve"),
    _everything_entry(n_dict=[1]),
    _everything_entry(nope=1),
    _everything_entry().replace(b'"k":7', b'"k":8'),
    _everything_entry().replace(b'"n_int":-5,', b''),
    _everything_entry().replace(b'"v":1', b'"v":2'),
    _everything_entry().replace(b'"n_int":-5', b'"n_int":123456789012345678901'),
    _everything_entry().replace(b'"n_int":-5', b'"n_int":-5e0'),
    _everything_entry().replace(b'"n_float":0.1', b'"n_float":1e400'),
    _everything_entry().replace(b'"n_str":"', b'"n_str":"\\ud800'),
    _everything_entry().replace(b'"n_str":"', b'"n_str":"\xff'),
    _everything_entry().replace(b'"n_str":"', b'"n_str":"\x01'),
    _everything_entry() + b"x",
], ids=lambda raw: raw[:0].decode() or None)
def test_an_entry_c_refuses_is_dead_lettered_in_the_python_words(raw: bytes) -> None:
    """C leaves it to Python (None), and the batch's dead letter is the Python one."""
    assert speedups.create_row(raw, CODECS["Everything"]) is None
    got, want = build_batch([(3, [raw])]), _python_batch([(3, [raw])])
    assert got.dead == want.dead and len(got.dead) == 1, got.dead
    assert got.dead[0][1].startswith("undecodable entry:")


def test_json_c_is_not_sure_of_is_read_by_python() -> None:
    """A repeated field (orjson keeps the last), whitespace, members in another order."""
    info = kvfast.model_info(Everything)
    raws = [VALID.replace(b'"n_int":-5,', b'"n_int":-4,"n_int":-5,'),
            orjson.dumps(orjson.loads(VALID), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)]
    assert speedups.create_row(raws[0], CODECS["Everything"]) is None
    assert c_outcome("Everything", raws[1]) == python_outcome(info, raws[1])
    assert _fold_view(build_batch([(3, raws)])) == _fold_view(_python_batch([(3, raws)]))


def test_an_entry_of_another_model_version_is_left_to_python() -> None:
    info = kvfast.model_info(Everything)
    key, _f, _c, wire = ENCODERS["Everything"](valid_everything())
    for version in ("other", None):
        raw = entry(info, key, dict(wire), version=version)
        got = speedups.create_row(raw, CODECS["Everything"])
        assert (got is None) == (version is not None)


# -- folding ----------------------------------------------------------------------------

OPS = st.lists(st.tuples(st.sampled_from("cccud"), st.integers(1, 3)), min_size=1, max_size=12)


def _fold_view(b: batch_mod.Batch) -> Any:
    out: dict[str, Any] = {}
    for table, mops in b.models.items():
        info = mops.info
        out[table] = {key: (op.kind, op.partition, op.entries, op.mark,
                            copy_row(info, values_of(info, op)) if op.kind == UPSERT else op.row)
                      for key, op in mops.ops.items()}
    return out, b.dead, [(p, i.table, k, t) for p, i, k, t in b.tombstones], b.write_times, \
        b.entries_of, b.size


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, data=st.data())
def test_a_batch_folds_to_the_same_ops_with_c_and_with_python(ops: list[tuple[str, int]],
                                                              data: st.DataObject) -> None:
    """Creates C took, updates merged into them, deletes and re-creates: the same ops."""
    info = kvfast.model_info(Everything)
    raws = []
    for i, (op, key) in enumerate(ops):
        if op == "c":
            obj = dataclasses.replace(data.draw(objects(Everything, max_bad=0)), id=key)
            _k, _f, _c, wire = ENCODERS["Everything"](obj)
            raws.append(entry(info, key, dict(wire), f"m{i}"))
        elif op == "u":
            value = data.draw(valid_values(info.by_name["n_str"].ftype))
            raws.append(codec.encode_write(info.table, codec.OP_UPDATE, key, {"n_str": value},
                                           T_US + i, model_version(info), f"m{i}"))
        else:
            raws.append(codec.encode_delete(info.table, key, f"tomb{i}", T_US + i))
    assert _fold_view(build_batch([(2, raws)])) == _fold_view(_python_batch([(2, raws)]))


# -- hostile input ------------------------------------------------------------------------

VALID = _everything_entry()


@hsettings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_left_to_python_never_a_crash(raw: bytes) -> None:
    for name in CODECS:
        got = c_outcome(name, raw)
        if got is not None:  # (valid JSON by chance)
            info = next(kvfast.model_info(m) for m in MODELS if m.__name__ == name)
            assert got == python_outcome(info, raw)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from([VALID, _everything_entry(n_str="é\"\\\u2028🚕"),
                                          _everything_entry(o_int=3, o_str="x", o_float=1.5)])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        how = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if how == "flip" and at < len(raw):
            raw[at] = draw(st.sampled_from(list(b'"\\{}[],:0123456789.eE-+ ntfu\x00\xff\xc3')))
        elif how == "cut":
            del raw[at:at + draw(st.integers(1, 8))]
        elif how == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=4)
                              | st.sampled_from([b" ", b"\\u0000", b"\\ud800", b'"', b",", b"1e9"]))
        else:
            del raw[at:]
    return bytes(raw)


@hsettings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_entry_c_takes_is_the_python_row(raw: bytes) -> None:
    """Byte flips, cuts, insertions: C takes an entry only as Python reads it."""
    got = c_outcome("Everything", raw)
    if got is not None:
        assert got == python_outcome(kvfast.model_info(Everything), raw), raw


def test_a_python_field_function_returning_garbage_is_a_type_error_not_a_crash() -> None:
    info = kvfast.model_info(Everything)
    plan = [crows.row_field_plan(info, f) for f in info.fields]
    i = info.by_name["n_decimal"].index
    plan[i] = (*plan[i][:8], lambda span: 12)
    bad = speedups.RowCodec(info, orjson.dumps(model_version(info)), tuple(plan), 0, False)
    with pytest.raises(TypeError, match="bytes or None"):
        speedups.create_row(VALID, {info.table.encode(): bad})


@pytest.mark.parametrize(("args", "error"), [
    ((None, b'"v"', (), 0, False), ValueError),
    ((None, b'"v"', ((b"id", 99, 0, 0, 0, 8, 0, 0, None),), 0, False), ValueError),
    ((None, b'"v"', ((b"id", crows.R_INT, 0, 0, 0, 3, 0, 0, None),), 0, False), ValueError),
    ((None, b'"v"', ((b"id", crows.R_ENUM, 0, 0, 0, 0, 0, 0, None),), 0, False), ValueError),
    ((None, b'"v"', ((b"id", crows.R_INT, 0, 0, 0, 8, 0, 0, None),), 1, False), ValueError),
    ((None, b'"v"', ((b"id", crows.R_INT, 0, 0, 0, 8, 0, 0, None),), 0, True), ValueError),
    ((None, "v", ((b"id", crows.R_INT, 0, 0, 0, 8, 0, 0, None),), 0, False), TypeError),
])
def test_a_bad_row_plan_is_a_clear_error(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        speedups.RowCodec(*args)


def test_create_row_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        speedups.create_row("text", {})
    with pytest.raises(TypeError):
        speedups.create_row(VALID, {kvfast.model_info(Everything).table.encode(): 1})
    assert speedups.create_row(VALID, {}) is None


# -- end to end ---------------------------------------------------------------------------

E2E_MODELS = (Everything, Typed)


def _snapshot(pg: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for model in E2E_MODELS:
        info = kvfast.model_info(model)
        rows = pg.execute(psycopg.sql.SQL("SELECT * FROM {} ORDER BY 1").format(
            psycopg.sql.Identifier(info.table))).fetchall()
        out[info.table] = [tuple(repr(v) for v in row) for row in rows]
    return out


def _e2e_objects() -> dict[type, list[Any]]:
    """Creates of every field type: edge values, NULLs and not, text keys padded."""
    everything = [valid_everything(
        id=i, n_int=(-1) ** i * 2**62 // (i + 1), n_str="é\"\\\u2028🚕 " * (i % 3),
        n_float=[0.1, -0.0, float("nan"), float("inf"), 1e16, 5e-324][i % 6],
        n_bool=i % 2 == 0,
        n_datetime=dt.datetime(1 + i * 97, 1 + i % 12, 1 + i % 28, i % 24, i % 60, i % 60,
                               (i * 7919) % 1_000_000, tzinfo=dt.UTC),
        n_date=dt.date(2000 + i, 2, 29 if i % 4 == 0 else 28), n_bytes=bytes(range(i)),
        n_decimal=Decimal(i).scaleb(-i), n_uuid=uuid.UUID(int=i * 2**100 + i),
        n_enum=list(Color)[i % len(Color)],
        o_int=i if i % 2 else None, o_str="x" * i if i % 3 else None,
        o_datetime=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) if i % 2 else None,
        o_bytes=b"" if i % 2 else None, o_dict={"k": [i]} if i % 2 else None,
    ) for i in range(1, 31)]
    typed = [sample(f"key-{i}" + " " * (i % 3), small=-(2**15) + i, integer=2**31 - i,
                    big=-(2**63) + i, char="ab " if i % 2 else "", varchar="abc"[: i % 4],
                    ts=dt.datetime(1999, 12, 31, 23, 59, 59, i),
                    clock=dt.time(i % 24, i % 60, 59, 999999 - i), day=dt.date(1, 1, i),
                    status=list(RideStatus)[i % len(RideStatus)], kind=("auto", "cab", "")[i % 3],
                    o_char="zz" if i % 2 else None, o_ts=dt.datetime(2000, 1, 1) if i % 2 else None)
             for i in range(1, 21)]
    return {Everything: everything, Typed: typed}


def test_a_drain_with_c_and_one_with_python_leave_identical_tables(
        r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings) -> None:
    """The same queued creates, updates and deletes of every field type, drained by
    each implementation from the same queues into empty tables."""
    kvfast.create_tables(pg, [kvfast.model_info(m) for m in E2E_MODELS])
    with kvfast.Client(settings) as client:
        for model, objs in _e2e_objects().items():
            repo = kvfast.Repository(model, client=client)
            info = kvfast.model_info(model)
            repo.create_many(objs)
            keys = [info.key_of(o) for o in objs]
            last = info.fields[-1].name
            repo.update(keys[0], **{last: getattr(objs[1], last)})
            repo.delete(keys[2])
            repo.create(objs[2])  # re-created after its delete
    queues = {p: r.lrange(queue_key(settings, p), 0, -1) for p in range(settings.partitions)}
    assert sum(len(q) for q in queues.values()) >= 40
    tables = []
    taken = []

    # the test's own codecs: the C path whatever KVFAST_IMPL chose for batch.py
    codecs = {**CODECS["Everything"], **CODECS["Typed"]}

    def counted(raw: bytes, _codecs: dict[bytes, Any]) -> Any:
        got = speedups.create_row(raw, codecs)
        taken.append(got is not None)
        return got

    for create_row in (counted, None):
        saved = batch_mod._create_row
        batch_mod._create_row = create_row
        try:
            for model in E2E_MODELS:
                pg.execute(psycopg.sql.SQL("TRUNCATE {}").format(
                    psycopg.sql.Identifier(kvfast.model_info(model).table)))
            for p, entries in queues.items():
                r.delete(queue_key(settings, p))
                if entries:
                    r.rpush(queue_key(settings, p), *entries)
            drainer = Drainer(settings)
            try:
                drainer.drain_until_empty()
            finally:
                drainer.close()
            assert is_idle(r, settings)
            tables.append(_snapshot(pg))
        finally:
            batch_mod._create_row = saved
    assert tables[0] == tables[1]
    assert all(tables[0][kvfast.model_info(m).table] for m in E2E_MODELS)
    assert sum(taken) >= 40, "the first drain's creates were not decoded in C"  # not vacuous

