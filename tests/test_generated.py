"""The generated encoders and decoders, called directly (no Redis, no PostgreSQL).

``encoders.build_create_encoder`` and ``decoders.build_row_decoder`` compile
Python source per model.  These tests feed them every field type of
``models.Everything`` (each required field and its Optional twin): good values,
including the ones that leave the inline fast path, and every error path; and
they check that a failure inside generated code shows the generated line in its
traceback (the source is registered with ``linecache``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import linecache
import re
import traceback
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import hiredis
import pytest
from helpers import everything, everything_full
from models import REQUIRED_FIELDS, Color, Everything

import kvfast
from kvfast.decoders import build_row_decoder
from kvfast.encoders import build_create_encoder

INFO = kvfast.model_info(Everything)
UTC = dt.UTC
TYPES = [name[2:] for name in REQUIRED_FIELDS]
BOTH = [prefix + t for t in TYPES for prefix in ("n_", "o_")]


@pytest.fixture(scope="module")
def encode() -> Callable[[Any], Any]:
    return build_create_encoder(INFO)


@pytest.fixture(scope="module")
def decode() -> Callable[[dict[str, Any]], list[Any]]:
    return build_row_decoder(INFO)


def hash_fields(h: bytes, n: int) -> dict[bytes, bytes]:
    """The encoder's RESP bulk strings ("field value ...") as a dict."""
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % (2 * n) + h)
    flat = reader.gets()
    assert isinstance(flat, list) and len(flat) == 2 * n and reader.gets() is False
    return dict(zip(flat[::2], flat[1::2], strict=True))


def copy_row(obj: Any) -> list[Any]:
    """What the decoder must return for ``obj``'s create: checked values, COPY-ready."""
    out = []
    for f in INFO.fields:
        value = INFO.check_value(f, getattr(obj, f.name))
        out.append(None if value is None else f.ftype.to_copy(value))
    return out


def raises_with_line(exc: BaseException, filename: str, line_text: str) -> None:
    """The formatted traceback holds a frame of ``filename`` followed by ``line_text``."""
    lines = "".join(traceback.format_exception(exc)).splitlines()
    # the same source built again (another test made this model's encoder first) is
    # registered as "<kvfast encoder Everything #2>" (kvfast.generated)
    name = re.compile(r'File "' + re.escape(filename[:-1]) + r'( #\d+)?>"')
    frames = [i for i, line in enumerate(lines) if name.search(line)]
    assert frames, f"no frame of {filename} in:\n" + "\n".join(lines)
    shown = [lines[i + 1].strip() for i in frames if i + 1 < len(lines)]
    assert line_text in shown, f"{line_text!r} not shown under {filename}: {shown}"


# -- good values ----------------------------------------------------------------------------


#: per type, values that pass (several leave the inline fast path for the full check)
GOOD: dict[str, list[Any]] = {
    "int": [0, -(2**63), 2**63 - 1],
    "str": ["", "plain ascii", "ünï cödé ✓", "🚕"],
    "float": [0.0, -0.0, 1e-300, 1.7976931348623157e308, 1 / 3],
    "bool": [True, False],
    "datetime": [dt.datetime(1970, 1, 1, tzinfo=UTC),
                 dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
                 dt.datetime(2024, 5, 6, 9, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))],
    "date": [dt.date(1, 1, 1), dt.date(2024, 2, 29), dt.date(9999, 12, 31)],
    "decimal": [Decimal(0), Decimal("-12345.678900"), Decimal("1E+20")],
    "bytes": [b"", b"\x00\xff binary"],
    "dict": [{}, {"a": [1, 2.5, None, True], "ü": {"x": ""}}],
    "list": [[], [1, "two", {"three": 3}, None]],
    "uuid": [uuid.UUID(int=0), uuid.UUID("12345678-1234-5678-1234-567812345678")],
    "enum": list(Color),
}


def test_a_full_object_encodes_to_its_hash_and_wire_and_decodes_to_its_row(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    obj = everything_full(7)
    key, h, n, wire = encode(obj)
    assert key == 7
    assert n == len(INFO.fields)
    assert INFO.from_hash(hash_fields(h, n)) == obj
    assert list(wire) == list(INFO.field_names)
    assert decode(wire) == copy_row(obj)


def test_none_optionals_are_left_out_of_the_hash_and_null_in_the_row(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    obj = everything(8)
    _, h, n, wire = encode(obj)
    fields = hash_fields(h, n)
    assert n == 1 + len(REQUIRED_FIELDS)
    assert not [name for name in fields if name.startswith(b"o_")]
    assert all(wire[name] is None for name in INFO.field_names if name.startswith("o_"))
    assert INFO.from_hash(fields) == obj
    row = decode(wire)
    assert row == copy_row(obj)
    assert row[INFO.by_name["o_int"].index] is None


@pytest.mark.parametrize("name", BOTH)
def test_every_good_value_of_every_type_round_trips(
    name: str, encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    for value in GOOD[name[2:]]:
        obj = dataclasses.replace(everything_full(9), **{name: value})
        _, h, n, wire = encode(obj)
        back = INFO.from_hash(hash_fields(h, n))
        assert getattr(back, name) == INFO.check_value(INFO.by_name[name], value), value
        assert decode(wire) == copy_row(obj), value


def test_the_encoder_reuses_its_datetime_text_only_for_the_same_object(
    encode: Callable[[Any], Any],
) -> None:
    a = dt.datetime(2024, 1, 1, tzinfo=UTC)
    b = dt.datetime(2025, 1, 1, tzinfo=UTC)
    first = encode(everything(1, n_datetime=a))[3]["n_datetime"]
    second = encode(everything(2, n_datetime=b))[3]["n_datetime"]
    again = encode(everything(3, n_datetime=a))[3]["n_datetime"]
    assert (first, second, again) == (a.isoformat(), b.isoformat(), a.isoformat())


# -- the encoder's errors ----------------------------------------------------------------------


#: per type, values the producer must refuse
BAD: dict[str, list[Any]] = {
    "int": ["1", 1.5, 2**63, -(2**63) - 1],
    "str": [5, b"bytes", "nul \x00 inside"],
    "float": ["1.0", b"1"],
    "bool": [1, "true", 0.0],
    "datetime": [dt.datetime(2024, 1, 1), "2024-01-01T00:00:00+00:00", dt.date(2024, 1, 1)],
    "date": ["2024-01-01", 20240101],
    "decimal": ["1.5", Decimal("NaN")],
    "bytes": ["text", 5],
    "dict": ["{}", {1: "non-str key"}, {"a": {1, 2}}],
    "list": ["[]", [{1, 2}]],
    "uuid": ["not a uuid", 5],
    "enum": ["purple", 5],
}


def test_an_object_of_another_class_is_refused(encode: Callable[[Any], Any]) -> None:
    @dataclasses.dataclass
    class Lookalike:
        id: int

    for obj in (Lookalike(1), {"id": 1}, None):
        with pytest.raises(kvfast.ValidationError, match="expected a Everything") as info:
            encode(obj)
        assert info.value.field == "<object>"


@pytest.mark.parametrize("name", BOTH)
def test_every_bad_value_of_every_type_is_refused_naming_its_field(
    name: str, encode: Callable[[Any], Any]
) -> None:
    for value in BAD[name[2:]]:
        with pytest.raises(kvfast.ValidationError) as info:
            encode(dataclasses.replace(everything_full(1), **{name: value}))
        assert info.value.field == name, value


@pytest.mark.parametrize("name", ["id", *REQUIRED_FIELDS])
def test_none_in_a_required_field_is_refused(name: str, encode: Callable[[Any], Any]) -> None:
    with pytest.raises(kvfast.ValidationError, match="not Optional") as info:
        encode(dataclasses.replace(everything(1), **{name: None}))
    assert info.value.field == name


# -- the decoder's errors ----------------------------------------------------------------------


#: per type, raw wire values a queue entry may hold that are not a value of the column
BAD_RAW: dict[str, list[Any]] = {
    "int": ["1", 1.5, 2**63, [1]],
    "str": [5, "nul \x00 inside", ["x"]],
    "float": ["x", [1.0]],
    "bool": [1, "true"],
    "datetime": ["x", "2024-01-01T00:00:00", 5],
    "date": ["x", 5, "2024-02-30"],
    "decimal": [[1], {"a": 1}],
    "bytes": [5, ["AA=="]],
    "dict": ["x", [1]],
    "list": ["x", {"a": 1}],
    "uuid": ["x", 5],
    "enum": ["purple", 5],
}


def _wire(encode: Callable[[Any], Any]) -> dict[str, Any]:
    return dict(encode(everything_full(3))[3])


@pytest.mark.parametrize("name", BOTH)
def test_every_bad_raw_value_is_a_decode_error_naming_its_field(
    name: str, encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    for raw in BAD_RAW[name[2:]]:
        wire = _wire(encode)
        wire[name] = raw
        with pytest.raises(kvfast.DecodeError, match=f"Everything.{name} ="):
            decode(wire)


def test_a_decimal_that_is_not_a_number_is_a_decode_error(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    wire = _wire(encode)
    wire["n_decimal"] = "twelve"
    with pytest.raises(kvfast.DecodeError):
        decode(wire)


def test_bytes_that_are_not_base64_are_a_decode_error(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    wire = _wire(encode)
    wire["n_bytes"] = "!!!!"  # not base64: b64decode drops it all and returns b""
    with pytest.raises(kvfast.DecodeError):
        decode(wire)


@pytest.mark.parametrize("name", ["id", *REQUIRED_FIELDS])
def test_null_in_a_required_field_is_a_decode_error(
    name: str, encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    wire = _wire(encode)
    wire[name] = None
    with pytest.raises(kvfast.DecodeError, match="is NULL but not Optional"):
        decode(wire)


def test_a_wrong_number_of_fields_is_a_decode_error(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    missing = _wire(encode)
    del missing["n_str"]
    with pytest.raises(kvfast.DecodeError, match=r"missing fields \['n_str'\], unknown \[\]"):
        decode(missing)
    extra = {**_wire(encode), "surprise": 1}
    with pytest.raises(kvfast.DecodeError, match=r"missing fields \[\], unknown \['surprise'\]"):
        decode(extra)
    with pytest.raises(kvfast.DecodeError, match="missing fields"):
        decode({})


def test_the_right_number_of_fields_with_a_wrong_name_is_a_decode_error(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    wire = _wire(encode)
    wire["renamed"] = wire.pop("n_date")
    with pytest.raises(kvfast.DecodeError, match=r"missing fields \['n_date'\], unknown"):
        decode(wire)


# -- tracebacks and the source kept for debugging ------------------------------------------------


def test_a_failure_in_an_encoder_shows_the_generated_line(encode: Callable[[Any], Any]) -> None:
    with pytest.raises(kvfast.ValidationError) as wrong_class:
        encode(object())
    raises_with_line(wrong_class.value, "<kvfast encoder Everything>", "bad_object(obj)")
    with pytest.raises(kvfast.ValidationError) as bad_int:
        encode(everything(1, n_int="one"))
    i = INFO.by_name["n_int"].index
    raises_with_line(bad_int.value, "<kvfast encoder Everything>", f"v{i} = chk{i}(v{i})")


def test_a_failure_in_a_decoder_shows_the_generated_line(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    with pytest.raises(kvfast.DecodeError) as short:
        decode({"id": 1})
    raises_with_line(short.value, "<kvfast decoder Everything>", "bad_shape(f)")
    wire = _wire(encode)
    wire["n_uuid"] = "x"
    i = INFO.by_name["n_uuid"].index
    with pytest.raises(kvfast.DecodeError) as bad:
        decode(wire)
    raises_with_line(bad.value, "<kvfast decoder Everything>", f"v{i} = slow{i}(v{i})")


def test_the_generated_source_is_kept_on_the_function_and_in_linecache(
    encode: Callable[[Any], Any], decode: Callable[[dict[str, Any]], list[Any]]
) -> None:
    for fn, first in ((encode, "def encode(obj):"), (decode, "def decode(f):")):
        source = fn.__kvfast_source__  # type: ignore[attr-defined]
        assert source.splitlines()[0] == first
        filename = fn.__code__.co_filename
        assert linecache.getlines(filename) == source.splitlines(True)


@kvfast.model(table="t_codegen_twin", key="id")
class _Twin:
    id: int
    label: str


def test_two_models_of_one_name_keep_their_own_source() -> None:
    twin_info = kvfast.model_info(_Twin)
    twin = copy.copy(twin_info)
    twin.name = INFO.name
    encode_twin = build_create_encoder(twin)
    encode_everything = build_create_encoder(INFO)
    names = {encode_twin.__code__.co_filename, encode_everything.__code__.co_filename}
    assert len(names) == 2
    for fn in (encode_twin, encode_everything):
        assert linecache.getlines(fn.__code__.co_filename) == \
            fn.__kvfast_source__.splitlines(True)  # type: ignore[attr-defined]
