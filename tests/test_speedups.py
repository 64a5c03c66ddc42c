"""The C create encoder (kvfast._speedups) against the Python one, its reference.

Every model of tests/models.py, every field type: hypothesis draws objects whose
fields are valid values, values a check refuses or normalizes, and arbitrary
objects; both encoders must return the same thing byte for byte (key, HSET
RESP, field count, the queue entry's JSON) or raise the same exception with the
same message.  The same tests run under valgrind once (see the README).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from models import ALL_MODELS, Color, RideStatus, Shade, Typed

import kvfast
import kvfast.impl
from kvfast.cencoders import K_INT, K_PY, build_c_create_encoder
from kvfast.containertypes import ArrayType, JsonType
from kvfast.encoders import build_create_encoder
from kvfast.fieldtypes import (
    BoolType,
    BytesType,
    DateTimeType,
    DateType,
    DecimalType,
    EnumType,
    FieldType,
    FloatType,
    IntType,
    Reject,
    StrType,
    UUIDType,
)
from kvfast.pgtypes import IntervalType, PgEnumType, RealType, TimestampType, TimeType


@kvfast.model(table="sp_pairs", key=("a", "b"))
class SpPair:
    """A composite key: the C encoder returns the tuple, the framing is Python's."""

    a: int
    b: str
    note: str | None = None


@kvfast.model(table="sp_indexed", key="id", indexes=(
    "i", "small", "s", "vc", "ch", "u", "b", "d", "tz", "ts", "color", "shade", "status", "kind",
    "o_i", "o_s", "o_u", "o_d", "o_tz", "o_status"))
class SpIndexed:
    """Every indexable field type indexed (kvfast.indexspec), NULL-able twins of some: the
    C encoder returns their hash values and the C framer writes their SADDs."""

    id: int
    i: int
    small: Annotated[int, kvfast.SmallInt]
    s: str
    vc: Annotated[str, kvfast.VarChar(4)]
    ch: Annotated[str, kvfast.Char(3)]
    u: uuid.UUID
    b: bool
    d: dt.date
    tz: dt.datetime
    ts: Annotated[dt.datetime, kvfast.Timestamp]
    color: Color
    shade: Shade
    status: Annotated[RideStatus, kvfast.PgEnum("sp_ride_status")]
    kind: Annotated[str, kvfast.PgEnum("sp_ride_kind", labels=("auto", "cab", ""))]
    note: str | None = None
    o_i: int | None = None
    o_s: str | None = None
    o_u: uuid.UUID | None = None
    o_d: dt.date | None = None
    o_tz: dt.datetime | None = None
    o_status: Annotated[RideStatus | None, kvfast.PgEnum("sp_ride_status")] = None


@kvfast.model(table="sp_indexed_str", key="code", ttl=1, indexes=("rider",))
class SpIndexedStr:
    """A str key with a TTL (write ids) and one NULL-able index."""

    code: str
    rider: str | None
    fare: int


@kvfast.model(table="sp_indexed_pair", key=("a", "b"), indexes=("a", "owner"))
class SpIndexedPair:
    """A composite key with an index on one part: the framing of each record is
    Python's, the SADDs too."""

    a: int
    b: str
    owner: uuid.UUID | None = None


INDEXED = (SpIndexed, SpIndexedStr, SpIndexedPair)
MODELS = (*ALL_MODELS, Typed, SpPair, *INDEXED)
INFOS = [kvfast.model_info(m) for m in MODELS]
PY = {i.name: build_create_encoder(i) for i in INFOS}
C = {i.name: build_c_create_encoder(i) for i in INFOS}
UTC = dt.UTC


class Hostile:
    """An object whose every dunder that an encoder might call raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "<Hostile>"

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    __hash__ = None  # type: ignore[assignment]

    def __index__(self) -> int:
        raise RuntimeError("no index")


class MyInt(int):
    pass


class MyStr(str):
    __slots__ = ()


class MyFloat(float):
    pass


class MyDecimal(decimal.Decimal):
    pass


class MyUUID(uuid.UUID):
    pass


ZONES = st.sampled_from([None, UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                         dt.timezone(dt.timedelta(hours=-23, minutes=-59))])
TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=8),  # lone surrogates
    st.sampled_from(["", " ", "ab ", "  ", "a\x00b", "abcde", "abcdef", "ünï ", "✓✓✓✓✓✓"]),
    st.builds(MyStr, st.text(max_size=5)),
    st.sampled_from(list(Shade)),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                   max_size=3),
    max_leaves=8,
)
ANYTHING = st.one_of(
    st.none(), st.integers(), st.floats(), st.booleans(), st.text(max_size=4),
    st.binary(max_size=4),
    st.just(Hostile()), st.just(object()), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.decimals(), st.uuids(), st.dates(), st.times(), st.timedeltas(),
    st.datetimes(timezones=ZONES), st.sampled_from(list(Color) + list(RideStatus)),
)


def typed_values(ftype: FieldType) -> st.SearchStrategy[Any]:
    """Values of (or near) the type: the common case, the edges and what a check normalizes."""
    if isinstance(ftype, IntType):
        return st.one_of(st.integers(ftype.lo - 2, ftype.hi + 2), st.integers(),
                         st.builds(MyInt, st.integers(-5, 5)),
                         st.sampled_from([ftype.lo, ftype.hi, 2**63, -(2**63) - 1, 2**64]))
    if isinstance(ftype, StrType):
        return TEXT
    if isinstance(ftype, (FloatType, RealType)):
        return st.one_of(st.floats(), st.integers(), st.builds(MyFloat, st.floats()),
                         st.sampled_from([1e300, 3.5e38, 1e-50, -0.0, 1e16, 2**1100]))
    if isinstance(ftype, BoolType):
        return st.one_of(st.booleans(), st.integers(0, 1))
    if isinstance(ftype, (DateTimeType, TimestampType)):
        return st.one_of(st.datetimes(timezones=ZONES, allow_imaginary=True),
                         st.datetimes(timezones=ZONES).map(lambda d: d.replace(fold=1)),
                         st.sampled_from([dt.datetime.max.replace(tzinfo=UTC),
                                          dt.datetime.min.replace(tzinfo=dt.timezone(
                                              dt.timedelta(hours=1)))]),
                         st.dates())
    if isinstance(ftype, DateType):
        return st.one_of(st.dates(), st.datetimes())
    if isinstance(ftype, TimeType):
        return st.one_of(st.times(timezones=ZONES), st.times().map(lambda t: t.replace(fold=1)))
    if isinstance(ftype, IntervalType):
        return st.timedeltas()
    if isinstance(ftype, DecimalType):
        return st.one_of(st.decimals(places=3), st.decimals(), st.builds(MyDecimal, st.integers()),
                         st.sampled_from([decimal.Decimal("1E+5"), decimal.Decimal("1E-20000"),
                                          decimal.Decimal("-0.00"), decimal.Decimal("sNaN"),
                                          decimal.Decimal("12345.678"), decimal.Decimal("0E-7")]))
    if isinstance(ftype, UUIDType):
        return st.one_of(st.uuids(), st.uuids().map(lambda u: MyUUID(int=u.int)),
                         st.text(max_size=4))
    if isinstance(ftype, BytesType):
        return st.one_of(st.binary(max_size=10), st.binary(max_size=3).map(bytearray),
                         st.binary(max_size=3).map(memoryview))
    if isinstance(ftype, (EnumType, PgEnumType)):
        cls = getattr(ftype, "enum_cls", None)
        members = st.sampled_from(list(cls)) if cls is not None else st.nothing()
        labels = st.sampled_from(list(getattr(ftype, "labels", ())) or [""])
        return st.one_of(members, members.map(lambda m: m.value), labels, TEXT)
    if isinstance(ftype, JsonType):
        return st.one_of(JSON, st.dictionaries(st.text(max_size=3), JSON, max_size=3),
                         st.lists(JSON, max_size=3))
    if isinstance(ftype, ArrayType):
        element = typed_values(ftype.element)
        return st.lists(st.one_of(element, st.none()), max_size=4) | element
    raise AssertionError(f"no strategy for {ftype!r}")  # a new field type: add it here


def _passes(ftype: FieldType, value: Any) -> bool:
    try:
        ftype.check(value)
    except Reject:
        return False
    return True


def valid_values(ftype: FieldType) -> st.SearchStrategy[Any]:
    """Values the field's check accepts (some of them normalized by it)."""
    if isinstance(ftype, IntType):
        return st.integers(ftype.lo, ftype.hi)
    if isinstance(ftype, StrType):
        size = 20 if ftype.length is None else ftype.length
        return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=size)
    if isinstance(ftype, RealType):
        return st.floats(width=32)
    if isinstance(ftype, FloatType):
        return st.floats()
    if isinstance(ftype, DateTimeType):
        return st.datetimes(timezones=st.just(UTC)) | st.datetimes(
            min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 1, 1), timezones=ZONES
        ).filter(lambda d: d.tzinfo is not None)
    if isinstance(ftype, TimestampType):
        return st.datetimes()
    if isinstance(ftype, TimeType):
        return st.times()
    if isinstance(ftype, DecimalType):
        scale = getattr(ftype, "scale", None)
        if scale is None:
            return st.decimals(allow_nan=False, allow_infinity=False)
        top = decimal.Decimal(10) ** (ftype.precision - scale) - 1  # type: ignore[attr-defined]
        return st.decimals(-top, top, places=scale)
    if isinstance(ftype, ArrayType):
        item = valid_values(ftype.element)
        return st.lists(item | st.none() if ftype.element_nullable else item, max_size=4)
    if isinstance(ftype, JsonType):
        container = st.lists(VALID_JSON, max_size=3) if ftype.python_type is list else \
            st.dictionaries(CLEAN_TEXT, VALID_JSON, max_size=3)
        return container
    if isinstance(ftype, BoolType):
        return st.booleans()
    if isinstance(ftype, DateType):
        return st.dates()
    if isinstance(ftype, UUIDType):
        return st.uuids()
    if isinstance(ftype, BytesType):
        return st.binary(max_size=10)
    if isinstance(ftype, (EnumType, PgEnumType)) and ftype.enum_cls is not None:
        return st.sampled_from(list(ftype.enum_cls))
    return typed_values(ftype).filter(lambda v: _passes(ftype, v))


CLEAN_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
VALID_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(-1e15, 1e15)
    | CLEAN_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(CLEAN_TEXT, inner, max_size=3),
    max_leaves=6,
)


def objects(cls: type, max_bad: int = 2) -> st.SearchStrategy[Any]:
    """Objects of ``cls``: valid ones, and ones with a few fields drawn from anything."""
    info = kvfast.model_info(cls)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        bad = draw(st.sets(st.sampled_from([f.name for f in info.fields]), max_size=max_bad))
        values = {}
        for f in info.fields:
            if f.name in bad:
                values[f.name] = draw(st.one_of(typed_values(f.ftype), ANYTHING))
            else:
                good = valid_values(f.ftype)
                values[f.name] = draw(good | st.none() if f.nullable else good)
        return cls(**values)

    return build()


def outcome(encode: Callable[[Any], Any], obj: Any) -> tuple[Any, ...]:
    """What an encoder made of ``obj``, comparable across implementations."""
    try:
        encoded = encode(obj)
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    key, hash_fields, count, wire = encoded[:4]
    # a model with indexes: the indexed fields' hash values (bytes, None for NULL)
    ivalues = encoded[4:]
    return ("encoded", type(key), key, hash_fields, count, list(wire),
            [type(v) for v in wire.values()], orjson.dumps(wire), ivalues,
            [type(v) for v in ivalues[0]] if ivalues else None, len(encoded))


def assert_same(name: str, obj: Any) -> tuple[Any, ...]:
    want = outcome(PY[name], obj)
    got = outcome(C[name], obj)
    assert got == want
    return want


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@hsettings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_the_c_encoder_matches_the_python_one_byte_for_byte(model: type, data: st.DataObject
                                                            ) -> None:
    assert_same(model.__name__, data.draw(objects(model)))


def valid_everything(**changes: Any) -> Any:
    from models import Everything
    values: dict[str, Any] = dict(
        id=1, n_int=-5, n_str="héllo", n_float=1.5, n_bool=True,
        n_datetime=dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), n_date=dt.date(2024, 1, 2),
        n_decimal=decimal.Decimal("-12.340"), n_bytes=b"\x00\xffab", n_dict={"a": [1]},
        n_list=[1, "x"], n_uuid=uuid.UUID(int=2**128 - 1), n_enum=Color.ODD)
    values.update(changes)
    return Everything(**values)


def test_every_common_type_is_encoded_in_c_not_handed_to_python() -> None:
    """A valid object of the common types never reaches the Python encoder."""
    info = kvfast.model_info(type(valid_everything()))
    calls: list[Any] = []
    py = build_create_encoder(info)

    def counting(obj: Any) -> Any:
        calls.append(obj)
        return py(obj)

    from kvfast.cencoders import field_plan
    plan = tuple(field_plan(info, f) for f in info.fields)
    key_indexes = tuple(f.index for f in info.key_fields)
    c = kvfast.impl.require_speedups().Encoder(info.cls, plan, key_indexes, counting)
    obj = valid_everything(o_float=float("-inf"), o_str="x", o_datetime=dt.datetime(
        1, 1, 1, tzinfo=UTC))
    assert outcome(c, obj) == outcome(py, obj)
    assert calls == []
    kinds = {f.name: k for f, (_, _, _, k, *_) in zip(info.fields, plan, strict=True)}
    # json fields (dict/list) are the only per-field Python calls in this model
    assert {n for n, k in kinds.items() if k == K_PY} == {"n_dict", "n_list", "o_dict", "o_list"}
    # and a refused value goes to Python, which words the error
    with pytest.raises(kvfast.ValidationError, match=r"Everything\.n_int = 9223372036854775808"):
        c(valid_everything(n_int=2**63))
    assert len(calls) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("n_int", None), ("n_int", True), ("n_int", 2**63), ("n_str", "a\x00"), ("n_str", "\udc80"),
    ("n_float", "1.5"), ("n_bool", 1), ("n_datetime", dt.datetime(2026, 1, 1)),
    ("n_date", dt.datetime(2026, 1, 1, tzinfo=UTC)), ("n_decimal", decimal.Decimal("NaN")),
    ("n_decimal", 1.5), ("n_bytes", "x"), ("n_dict", {"a": float("nan")}), ("n_uuid", "x"),
    ("n_enum", "blue"), ("n_list", [Hostile()]), ("n_str", Hostile()),
])
def test_a_refused_value_raises_the_python_error_word_for_word(field: str, value: Any) -> None:
    got = assert_same("Everything", valid_everything(**{field: value}))
    assert got[0] == "raised" and got[1] is kvfast.ValidationError


def test_a_missing_attribute_or_a_foreign_object_raise_as_in_python() -> None:
    obj = valid_everything()
    object.__delattr__(obj, "n_str")
    assert assert_same("Everything", obj)[1] is AttributeError
    assert assert_same("Everything", object())[1] is kvfast.ValidationError
    assert assert_same("Everything", None)[1] is kvfast.ValidationError


def test_normalized_values_come_out_as_python_normalizes_them() -> None:
    plus5 = dt.timezone(dt.timedelta(hours=5))
    got = assert_same("Everything", valid_everything(
        n_datetime=dt.datetime(2026, 1, 2, 3, tzinfo=plus5), n_int=MyInt(3), n_str=Shade.DARK,
        n_bytes=bytearray(b"ab")))
    assert got[0] == "encoded" and b"2026-01-01T22:00:00+00:00" in got[3]


def test_a_tuple_of_key_indexes_gives_a_tuple_key() -> None:
    """Composite keys: the plan names the key fields; C returns them as a tuple in order."""
    obj = valid_everything()
    info = kvfast.model_info(type(obj))
    from kvfast.cencoders import field_plan
    plan = tuple(field_plan(info, f) for f in info.fields)
    by = {f.name: f.index for f in info.fields}
    c = kvfast.impl.require_speedups().Encoder(info.cls, plan, (by["n_str"], by["id"]),
                                                PY["Everything"])
    key, fields, count, wire = c(obj)
    assert key == ("héllo", 1)
    assert (fields, count, wire) == PY["Everything"](obj)[1:]


def _plan(kind: int, nullable: bool = False, prefix: Any = b"$1\r\na\r\n") -> tuple[Any, ...]:
    return ("a", "a", prefix, kind, nullable, 0, 0, None, b'"a":')


@pytest.mark.parametrize(("args", "error"), [
    ((int, (), (0,), print), ValueError),
    ((int, ((),), (0,), print), TypeError),
    ((int, (_plan(99),), (0,), print), ValueError),
    ((int, (_plan(K_PY),), (0,), print), TypeError),
    ((int, (_plan(K_INT, nullable=True),), (0,), print), ValueError),
    ((int, (_plan(K_INT),), (5,), print), ValueError),
    ((int, (_plan(K_INT, prefix="not bytes"),), (0,), print), TypeError),
    ((int, (_plan(K_INT)[:8],), (0,), print), TypeError),
    ((5, (_plan(K_INT),), (0,), print), TypeError),
])
def test_a_bad_plan_is_a_clear_error_not_a_crash(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        kvfast.impl.require_speedups().Encoder(*args)


def test_an_uninitialized_encoder_refuses_calls() -> None:
    encoder_type = kvfast.impl.require_speedups().Encoder
    raw = encoder_type.__new__(encoder_type)
    with pytest.raises(TypeError, match="not initialized"):
        raw(1)
    with pytest.raises(TypeError, match="exactly one argument"):
        C["Everything"]()


@dataclasses.dataclass
class _Dyn:
    id: int


def test_a_per_field_function_returning_garbage_is_a_type_error() -> None:
    speedups = kvfast.impl.require_speedups()
    enc = speedups.Encoder(_Dyn, (("id", "id", b"$2\r\nid\r\n", K_PY, False, 0, 0,
                                   lambda v: "not a tuple", b'"id":'),), (0,), print)
    with pytest.raises(TypeError, match="must return"):
        enc(_Dyn(1))


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "KVFAST_IMPL"} | env
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=60, check=False)


BLOCK = "import sys; sys.modules['kvfast._speedups'] = None; "


@pytest.mark.parametrize(("env", "code", "out", "err"), [
    ({}, "", "c", ""),
    ({"KVFAST_IMPL": "c"}, "", "c", ""),
    ({"KVFAST_IMPL": "python"}, "", "python", ""),
    ({"KVFAST_IMPL": "python"}, BLOCK, "python", ""),
    ({}, BLOCK, "python", "RuntimeWarning: kvfast: the C extension kvfast._speedups is not built"),
    ({"KVFAST_IMPL": "c"}, BLOCK, "", "ImportError: KVFAST_IMPL=c but the C extension"),
    ({"KVFAST_IMPL": "fast"}, "", "", "ImportError: KVFAST_IMPL='fast' is not an implementation"),
])
def test_kvfast_impl_chooses_the_implementation(env: dict[str, str], code: str, out: str,
                                                err: str) -> None:
    run = _python(code + "import kvfast, kvfast.impl; print(kvfast.impl.IMPL)", **env)
    assert run.stdout.strip() == out
    assert err in run.stderr
    assert run.stderr.count("RuntimeWarning") == (1 if "RuntimeWarning" in err else 0)


def test_the_producer_uses_the_chosen_encoder() -> None:
    run = _python("import kvfast, sys; sys.path.insert(0, 'tests'); from models import Session;"
                  "from kvfast.producer import WriteBuilder; from kvfast.keys import Keys;"
                  "print(type(WriteBuilder(Keys('ns', 4), kvfast.model_info(Session))._encode)"
                  ".__name__)", KVFAST_IMPL="python")
    assert run.stdout.strip() == "function", run.stderr
    assert type(C["Session"]).__name__ == "Encoder"
    if kvfast.impl.IMPL == "c":
        from kvfast.keys import Keys
        from kvfast.producer import WriteBuilder
        builder = WriteBuilder(Keys("ns", 4), kvfast.model_info(ALL_MODELS[0]))
        assert type(builder._encode).__name__ == "Encoder"


# -- whole records: WriteBuilder.create_pieces framed in C vs in Python ----------------


def _builders(model: type) -> tuple[Any, Any]:
    from kvfast.keys import Keys
    from kvfast.producer import WriteBuilder
    info = kvfast.model_info(model)
    py, c = WriteBuilder(Keys("kv", 7), info), WriteBuilder(Keys("kv", 7), info)
    py._encode, c._encode = PY[info.name], C[info.name]
    return py, c


def _batch_outcome(builder: Any, objs: list[Any]) -> tuple[Any, ...]:
    try:
        request = builder.build_create(objs)
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    return ("packed", request.payload, request.nreplies, request.records)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@hsettings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_a_create_batch_framed_in_c_is_the_python_batch_byte_for_byte(
        model: type, data: st.DataObject, monkeypatch_module: Any) -> None:
    objs = data.draw(st.lists(objects(model, max_bad=0), max_size=6))
    if data.draw(st.booleans()):  # and one object that may be refused, anywhere
        objs.insert(data.draw(st.integers(0, len(objs))), data.draw(objects(model)))
    # repeated keys inside one piece get their own DEL: repeat some objects
    objs += data.draw(st.lists(st.sampled_from(objs), max_size=3)) if objs else []
    py, c = _builders(model)
    want, got = _batch_outcome(py, objs), _batch_outcome(c, objs)
    assert got == want


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@hsettings(max_examples=4, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_a_batch_of_many_pieces_framed_in_c_is_the_python_batch_byte_for_byte(
        model: type, data: st.DataObject, monkeypatch_module: Any) -> None:
    """Framer.run files whole pieces (250 records) in C: across piece boundaries,
    with keys repeated inside a piece and across pieces, TTL write ids counting
    up (Session), and tuple keys handed back to Python one by one (SpPair)."""
    seeds = data.draw(st.lists(objects(model, max_bad=0), min_size=1, max_size=40))
    rng = data.draw(st.randoms(use_true_random=False))
    objs = [rng.choice(seeds) for _ in range(700)]
    py, c = _builders(model)
    want, got = _batch_outcome(py, objs), _batch_outcome(c, objs)
    assert want[0] == "packed"
    assert got == want
    assert want[3] == 700


def test_the_framer_loop_stops_at_its_limit_and_at_the_end() -> None:
    from models import Account
    info = kvfast.model_info(Account)
    _, c = _builders(Account)
    objs = [Account(name=f"n{i}", balance=decimal.Decimal(i), active=True) for i in range(5)]
    from kvfast.cencoders import framer_for
    frame = framer_for(c._encode, info, 2, [b"a:", b"b:"], b"{", b",", b"}", 2000, b"w")
    assert frame is not None
    it = iter([*objs, objs[0]])
    commands: list[bytes] = []
    keys: list[bytes] = []
    seen: set[bytes] = set()
    entries: dict[int, list[bytes]] = {}
    assert frame.run(it, 4, b"ff", 9, commands, keys, seen, entries) == (4, 13, None)  # type: ignore[attr-defined]
    assert len(commands) == 4 and len(keys) == 4 and sum(map(len, entries.values())) == 4
    # the rest: one new key, then objs[0] again, which gets its own DEL first
    assert frame.run(it, 4, None, 13, commands, keys, seen, entries) == (2, 13, None)  # type: ignore[attr-defined]
    assert commands[-2].startswith(b"*2\r\n$3\r\nDEL\r\n") and len(keys) == 5
    assert b"ff9" in commands[0] and b"ff" + b"c" in commands[3]
    with pytest.raises(TypeError):
        frame.run(it, 4, "not bytes", 0, commands, keys, seen, entries)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    """The write ids' random prefix and the batch time fixed: both framings get the same."""
    import kvfast.codec
    import kvfast.producer
    mp = pytest.MonkeyPatch()
    mp.setattr(kvfast.producer.secrets, "token_hex", lambda n: "ab" * n)
    mp.setattr(kvfast.codec, "now_us", lambda: 1_700_000_000_000_000)
    yield mp
    mp.undo()


def test_keys_the_c_framing_leaves_to_python(monkeypatch_module: Any) -> None:
    from models import Account, Token
    py, c = _builders(Account)
    long_key = "é" * 1001  # 2002 bytes: longer than PostgreSQL indexes (Python words it)
    objs = [Account(name=long_key, balance=decimal.Decimal(1), active=True)]
    got = _batch_outcome(c, objs)
    assert got == _batch_outcome(py, objs) and got[0] == "raised"
    py, c = _builders(Token)
    objs = [Token(token=uuid.UUID(int=7), owner="o", scopes=[])]
    assert _batch_outcome(c, objs) == _batch_outcome(py, objs)


def test_the_framer_returns_tuple_keys_to_python() -> None:
    """Composite keys come out of the encoder as tuples: the Python framing takes them."""
    obj = valid_everything()
    info = kvfast.model_info(type(obj))
    from kvfast.cencoders import field_plan, framer_for
    speedups = kvfast.impl.require_speedups()
    plan = tuple(field_plan(info, f) for f in info.fields)
    enc = speedups.Encoder(info.cls, plan, (0, 2), PY["Everything"])
    frame = framer_for(enc, info, 2, [b"a:", b"b:"], b"{", b",", b"}", 2000, b"w")
    assert frame is not None
    (encoded,) = frame(obj)
    assert encoded[0] == (1, "héllo")
    assert framer_for(PY["Everything"], info, 2, [b"a:", b"b:"], b"{", b",", b"}", 2000,
                      b"w") is None


@pytest.mark.parametrize(("args", "error"), [
    ((print, b"t\x00", 0, (), b"", b"", b"", print, 10, b"w"), ValueError),
    ((print, b"t\x00", 2, (b"a",), b"", b"", b"", print, 10, b"w"), ValueError),
    ((print, b"t\x00", 1, ("a",), b"", b"", b"", print, 10, b"w"), TypeError),
    ((5, b"t\x00", 1, (b"a",), b"", b"", b"", print, 10, b"w"), TypeError),
])
def test_a_bad_framer_is_a_clear_error(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        kvfast.impl.require_speedups().Framer(*args)


def test_a_framer_over_a_bad_encoder_is_a_type_error() -> None:
    framer = kvfast.impl.require_speedups().Framer(
        lambda obj: obj, b"t\x00", 1, (b"a",), b"", b"", b"", orjson.dumps, 10, b"w")
    for bad in [None, (1, 2, 3), (1, "x", 1, {}), (1, b"x", "1", {}), (1, b"x", -1, {})]:
        with pytest.raises((TypeError, ValueError)):
            framer(bad)
    with pytest.raises(TypeError):
        framer((1, b"", 0, {}), "not bytes")
    assert framer((1, b"", 0, {}))[0] == 0


@pytest.mark.parametrize("text", ['a"b', "a\\b", "a\nb", "\x1f", "\x7f", "\u2028\u2029", "é✓",
                                  "</script>", "\ud7ff\ue000\U0010ffff"])
def test_text_the_entry_json_escapes_is_framed_as_orjson_writes_it(
        text: str, monkeypatch_module: Any) -> None:
    from models import Account
    py, c = _builders(Account)
    objs = [Account(name=text, balance=decimal.Decimal("1.5"), active=True,
                    shade=Shade.DARK)]
    got = _batch_outcome(c, objs)
    assert got[0] == "packed" and got == _batch_outcome(py, objs)


PACK_ARGS = st.one_of(st.binary(max_size=20), st.text(max_size=10),
                      st.text(st.characters(codec=None, exclude_categories=()), max_size=3),
                      st.integers(), st.floats(allow_nan=False), st.binary().map(bytearray),
                      st.builds(MyStr, st.text(max_size=3)))


@hsettings(max_examples=500, deadline=None)
@given(st.lists(PACK_ARGS, min_size=1, max_size=8))
def test_the_c_pack_command_writes_hiredis_bytes_or_raises_its_error(args: list[Any]) -> None:
    import hiredis
    speedups = kvfast.impl.require_speedups()
    want = outcome_of(hiredis.pack_command, tuple(args))
    assert outcome_of(lambda a: speedups.pack_command(hiredis.pack_command, a),
                      tuple(args)) == want


def outcome_of(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, ...]:
    try:
        return ("ok", fn(arg))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def test_pack_command_refuses_what_is_not_a_tuple() -> None:
    speedups = kvfast.impl.require_speedups()
    with pytest.raises(TypeError, match="pack_command"):
        speedups.pack_command(print, ["GET", "x"])
    with pytest.raises(TypeError, match="pack_command"):
        speedups.pack_command(("GET",))


# -- models with indexes: the index hash values and the SADDs in C ---------------------


def valid_indexed(**changes: Any) -> SpIndexed:
    values: dict[str, Any] = dict(
        id=1, i=-2, small=3, s="ünï ✓", vc="abcd", ch="x", u=uuid.UUID(int=5), b=False,
        d=dt.date(2024, 2, 29), tz=dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        ts=dt.datetime(2026, 1, 2), color=next(iter(Color)), shade=Shade.DARK,
        status=next(iter(RideStatus)), kind="", o_s="", o_u=uuid.UUID(int=0))
    values.update(changes)
    return SpIndexed(**values)


def test_every_indexable_type_is_encoded_in_c_with_its_index_values() -> None:
    """A valid object of every indexable type never reaches the Python encoder, and
    its index values are the Python encoder's (bytes; None for NULL)."""
    info = kvfast.model_info(SpIndexed)
    calls: list[Any] = []
    py = PY["SpIndexed"]

    def counting(obj: Any) -> Any:
        calls.append(obj)
        return py(obj)

    from kvfast.cencoders import field_plan
    plan = tuple(field_plan(info, f) for f in info.fields)
    c = kvfast.impl.require_speedups().Encoder(
        info.cls, plan, (0,), counting, tuple(info.by_name[n].index for n in info.indexes))
    for obj in [valid_indexed(), valid_indexed(o_i=7, o_d=dt.date(1, 1, 1), o_s=None,
                                               o_tz=dt.datetime(9999, 1, 1, tzinfo=UTC))]:
        got = outcome(c, obj)
        assert got == outcome(py, obj) and len(got[8][0]) == len(info.indexes)
    assert calls == []
    assert c(valid_indexed())[4][info.indexes.index("o_i")] is None
    # a refused indexed value: Python words the error
    with pytest.raises(kvfast.ValidationError, match=r"SpIndexed\.vc"):
        c(valid_indexed(vc="abcde"))
    assert len(calls) == 1


@pytest.mark.parametrize("size", [1, 2, 251, 600])
@hsettings(max_examples=5, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_an_indexed_batch_of_one_or_many_framed_in_c_is_the_python_batch(
        size: int, data: st.DataObject, monkeypatch_module: Any) -> None:
    """Batches of 1 and of several pieces, keys repeated, index values NULL or not."""
    for model in INDEXED:
        seeds = data.draw(st.lists(objects(model, max_bad=0), min_size=1, max_size=30))
        rng = data.draw(st.randoms(use_true_random=False))
        objs = [rng.choice(seeds) for _ in range(size)]
        py, c = _builders(model)
        want, got = _batch_outcome(py, objs), _batch_outcome(c, objs)
        assert want[0] == "packed"
        if model is SpIndexed:  # 14 of its indexed fields are never NULL
            assert want[1].count(b"\r\nSADD\r\n") >= 14 * size
        assert got == want


def test_an_index_value_the_c_encoder_refuses_is_the_python_error_in_a_batch(
        monkeypatch_module: Any) -> None:
    py, c = _builders(SpIndexed)
    objs = [valid_indexed(id=k) for k in range(300)] + [valid_indexed(id=9, o_u="not a uuid")]
    got = _batch_outcome(c, objs)
    assert got[0] == "raised" and got == _batch_outcome(py, objs)


_FRAMER_ARGS = (b"t\x00", 1, (b"a",), b"", b"", b"", orjson.dumps, 10, b"w")


@pytest.mark.parametrize(("index_prefixes", "error"), [
    ((), TypeError), (((b"x",), (b"y",)), TypeError), (((),), TypeError),
    ((("x",),), TypeError), ([(b"x",)], TypeError), (((b"x", b"y"),), ValueError),
])
def test_bad_index_prefixes_are_a_clear_framer_error(index_prefixes: Any, error: type) -> None:
    """The C encoder of SpIndexedStr has one indexed field: one prefix per partition."""
    with pytest.raises(error):
        kvfast.impl.require_speedups().Framer(C["SpIndexedStr"], *_FRAMER_ARGS, index_prefixes)
    with pytest.raises(ValueError, match="index prefixes"):  # an encoder with indexes needs them
        kvfast.impl.require_speedups().Framer(C["SpIndexedStr"], *_FRAMER_ARGS)


def test_a_framer_over_an_encoder_of_bad_index_values_is_a_type_error() -> None:
    framer = kvfast.impl.require_speedups().Framer(lambda obj: obj, *_FRAMER_ARGS, ((b"x:",),))
    for bad in [(1, b"", 0, {}), (1, b"", 0, {}, ()), (1, b"", 0, {}, ("s",)),
                (1, b"", 0, {}, [b"v"])]:
        with pytest.raises(TypeError):
            framer(bad)
    assert framer((1, b"", 0, {}, (None,)))[4] == ()
    assert framer((1, b"", 0, {}, (b"v",)))[4] == (b"*3\r\n$4\r\nSADD\r\n$3\r\nx:v\r\n$1\r\n1\r\n",)
