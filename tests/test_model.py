"""Model declaration: field types, PostgreSQL columns, keys, TTL and declaration errors.

No ``from __future__ import annotations`` here: the classes declared inside the
tests use real annotation objects, so an error is about the type, not about an
unresolvable name.
"""

import dataclasses
import datetime as dt
import enum
import typing
import uuid
from decimal import Decimal

import pytest
from models import Account, Color, Everything, Odd, Session, Token

import kvfast
from kvfast.model import get_model


class IntCode(enum.Enum):
    ONE = 1
    TWO = 2


class Mixed(enum.Enum):
    A = "a"
    B = 2


EXPECTED_PG_TYPES = {
    "int": "bigint",
    "str": "text",
    "float": "double precision",
    "bool": "boolean",
    "datetime": "timestamp with time zone",
    "date": "date",
    "decimal": "numeric",
    "bytes": "bytea",
    "dict": "jsonb",
    "list": "jsonb",
    "uuid": "uuid",
    "enum": "text",
}


@pytest.mark.parametrize(("suffix", "pg_type"), sorted(EXPECTED_PG_TYPES.items()))
def test_each_supported_type_maps_to_its_column(suffix: str, pg_type: str) -> None:
    info = kvfast.model_info(Everything)
    required = info.by_name["n_" + suffix]
    optional = info.by_name["o_" + suffix]
    assert required.ftype.pg_type == pg_type
    assert optional.ftype.pg_type == pg_type
    assert required.nullable is False
    assert optional.nullable is True


def test_model_info_describes_table_key_ttl_and_field_order() -> None:
    info = kvfast.model_info(Everything)
    assert info.cls is Everything
    assert info.name == "Everything"
    assert info.table == "t_everything"
    assert info.key == "id"
    assert info.ttl is None
    assert info.field_names == tuple(f.name for f in dataclasses.fields(Everything))
    assert [f.index for f in info.fields] == list(range(len(info.fields)))
    assert kvfast.model_info(Session).ttl == 1
    assert kvfast.model_info(Token).key_fields[0].ftype.pg_type == "uuid"
    assert kvfast.model_info(Account).key_fields[0].ftype.pg_type == "text"
    assert "t_everything" in repr(info)


def test_models_are_registered_by_table_name() -> None:
    for model in (Everything, Session, Token, Account, Odd):
        info = kvfast.model_info(model)
        assert get_model(info.table) is info
        assert info in kvfast.registered_models()
    assert get_model("t_no_such_table") is None


def test_the_decorator_makes_a_dataclass_and_accepts_one() -> None:
    assert dataclasses.is_dataclass(Everything)

    @kvfast.model(table="t_model_frozen", key="code")
    @dataclasses.dataclass(frozen=True)
    class Frozen:
        code: str
        amount: Decimal

    assert dataclasses.is_dataclass(Frozen)
    assert kvfast.model_info(Frozen).key == "code"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Frozen(code="a", amount=Decimal(1)).code = "b"  # type: ignore[misc]


def test_typing_forms_of_optional_and_containers_are_supported() -> None:
    @kvfast.model(table="t_model_typing", key="id")
    class Typing:
        id: int
        a: typing.Optional[int]  # noqa: UP045 - the old spelling must work too
        b: typing.Union[str, None]  # noqa: UP007
        c: typing.Dict[str, int]  # noqa: UP006
        d: typing.List[str]  # noqa: UP006
        e: dict
        f: list

    info = kvfast.model_info(Typing)
    assert [(f.name, f.ftype.pg_type, f.nullable) for f in info.fields] == [
        ("id", "bigint", False),
        ("a", "bigint", True),
        ("b", "text", True),
        ("c", "jsonb", False),
        ("d", "jsonb", False),
        ("e", "jsonb", False),
        ("f", "jsonb", False),
    ]


@pytest.mark.parametrize(
    "annotation",
    [
        set[int],
        tuple[int, int],
        complex,
        object,
        typing.Any,
        int | str,
        int | str | None,
        IntCode,
        Mixed,
        bytearray,
    ],
    ids=repr,
)
def test_an_unsupported_type_is_a_model_error_naming_the_field(annotation: object) -> None:
    with pytest.raises(kvfast.ModelError) as excinfo:
        kvfast.model(table="t_model_bad", key="id")(
            dataclasses.make_dataclass("Bad", [("id", int), ("the_bad_field", annotation)])
        )
    assert "the_bad_field" in str(excinfo.value)
    assert "Bad" in str(excinfo.value)
    assert isinstance(excinfo.value, kvfast.KvfastError)
    assert get_model("t_model_bad") is None  # nothing was registered


@pytest.mark.parametrize(
    "key_annotation",
    [float, bool, Decimal, bytes, dt.datetime, int | None, uuid.UUID | None, Color],
    ids=repr,
)
def test_the_key_must_be_a_plain_int_str_or_uuid(key_annotation: object) -> None:
    cls = dataclasses.make_dataclass("BadKey", [("pk", key_annotation), ("x", int)])
    with pytest.raises(kvfast.ModelError, match="pk"):
        kvfast.model(table="t_model_badkey", key="pk")(cls)


def test_the_key_must_be_a_field() -> None:
    cls = dataclasses.make_dataclass("NoKey", [("x", int)])
    with pytest.raises(kvfast.ModelError, match="'id'"):
        kvfast.model(table="t_model_nokey", key="id")(cls)


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "60", True])
def test_a_bad_ttl_is_a_model_error(ttl: object) -> None:
    cls = dataclasses.make_dataclass("BadTtl", [("id", int)])
    with pytest.raises(kvfast.ModelError, match="ttl"):
        kvfast.model(table="t_model_ttl", key="id", ttl=ttl)(cls)  # type: ignore[arg-type]


@pytest.mark.parametrize("table", ["", "x" * 64, "nul\x00table", "é" * 32])
def test_a_bad_table_name_is_a_model_error(table: str) -> None:
    cls = dataclasses.make_dataclass("BadTable", [("id", int)])
    with pytest.raises(kvfast.ModelError, match="table"):
        kvfast.model(table=table, key="id")(cls)


def test_a_63_byte_table_name_is_accepted() -> None:
    table = "t_" + "x" * 61
    cls = dataclasses.make_dataclass("LongTable", [("id", int)])
    assert kvfast.model_info(kvfast.model(table=table, key="id")(cls)).table == table


def test_the_tombstone_field_name_is_reserved() -> None:
    cls = dataclasses.make_dataclass("Reserved", [("id", int), ("__kvfast_deleted", str)])
    with pytest.raises(kvfast.ModelError, match="reserved"):
        kvfast.model(table="t_model_reserved", key="id")(cls)


def test_a_field_name_longer_than_a_postgresql_identifier_is_refused() -> None:
    cls = dataclasses.make_dataclass("LongField", [("id", int), ("f" * 64, int)])
    with pytest.raises(kvfast.ModelError, match="f" * 64):
        kvfast.model(table="t_model_longfield", key="id")(cls)


def test_a_table_cannot_belong_to_two_models() -> None:
    cls = dataclasses.make_dataclass("Impostor", [("id", int)])
    with pytest.raises(kvfast.ModelError, match="t_everything"):
        kvfast.model(table="t_everything", key="id")(cls)
    assert get_model("t_everything") is kvfast.model_info(Everything)


def test_model_info_of_a_plain_class_is_a_model_error() -> None:
    @dataclasses.dataclass
    class Plain:
        id: int

    with pytest.raises(kvfast.ModelError, match="not a kvfast model"):
        kvfast.model_info(Plain)
    with pytest.raises(kvfast.ModelError):
        kvfast.Repository(Plain, kvfast.Settings())


def test_a_subclass_of_a_model_is_not_that_model() -> None:
    class Sub(Everything):
        pass

    with pytest.raises(kvfast.ModelError):
        kvfast.model_info(Sub)
