"""Bad input is refused before anything is written, with an error naming model, field, value.

Every case runs against a Redis that already holds objects and queue entries, and
compares a full snapshot (every key, its serialized value and TTL) before and after.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
import storeparams
from helpers import create_tables, everything, snapshot
from models import Account, Color, Everything, Shade, Token

import kvfast

# every case on one Redis and on the Redis Cluster (tests/storeparams.py)
store, r, settings = storeparams.both_stores()

NAN = float("nan")
INF = float("inf")
AWARE = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


BAD_VALUES: list[tuple[str, Any]] = [
    # wrong types
    ("n_int", "1"),
    ("n_int", 1.0),
    ("n_int", True),
    ("n_int", Decimal(1)),
    ("n_str", 5),
    ("n_str", b"bytes"),
    ("n_float", "1.5"),
    ("n_float", True),
    ("n_float", Decimal("1.5")),
    ("n_bool", 1),
    ("n_bool", "true"),
    ("n_datetime", dt.date(2024, 1, 2)),
    ("n_datetime", "2024-01-02T03:04:05+00:00"),
    ("n_datetime", 1704164645),
    ("n_date", AWARE),
    ("n_date", "2024-01-02"),
    ("n_decimal", 1.5),
    ("n_decimal", "1.5"),
    ("n_decimal", 3),
    ("n_bytes", "text"),
    ("n_bytes", [1, 2]),
    ("n_dict", [1]),
    ("n_dict", "{}"),
    ("n_list", {"a": 1}),
    ("n_list", (1, 2)),
    ("n_uuid", "12345678-1234-5678-1234-567812345678"),
    ("n_uuid", 5),
    ("n_enum", "purple"),
    ("n_enum", 1),
    ("n_enum", Shade.DARK),
    ("o_int", "x"),
    ("o_enum", "purple"),
    # values PostgreSQL cannot hold
    ("n_int", 2**63),
    ("n_int", -(2**63) - 1),
    ("o_int", 10**30),
    ("n_str", "a\x00b"),
    ("n_str", "\ud800 lone surrogate"),
    ("o_str", "\x00"),
    ("n_float", 10**400),
    ("n_datetime", dt.datetime(2024, 1, 2, 3, 4, 5)),  # naive
    ("o_datetime", dt.datetime(2024, 1, 2, 3, 4, 5)),  # naive
    ("n_datetime", dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))),
    ("n_decimal", Decimal("NaN")),
    ("n_decimal", Decimal("sNaN")),
    ("n_decimal", Decimal("Infinity")),
    ("o_decimal", Decimal("-Infinity")),
    ("n_decimal", Decimal("1E-16384")),
    ("n_dict", {"a": NAN}),
    ("n_dict", {"a": [1, {"b": INF}]}),
    ("n_dict", {1: "non-str key"}),
    ("n_dict", {"nul\x00key": 1}),
    ("n_dict", {"a": "nul\x00value"}),
    ("n_dict", {"a": 2**64}),
    ("n_dict", {"a": 1e300}),
    ("n_dict", {"a": {1, 2}}),
    ("n_dict", {"a": b"bytes"}),
    ("n_dict", {"a": (1, 2)}),
    ("n_dict", {"a": Decimal(1)}),
    ("n_dict", nested(300)),
    ("n_list", [NAN]),
    ("o_list", ["\x00"]),
    ("n_list", [dt.date(2024, 1, 2)]),
    # None where the field is not Optional
    ("n_int", None),
    ("n_str", None),
    ("n_enum", None),
]


def case_id(case: tuple[str, Any]) -> str:
    field, value = case
    return f"{field}={type(value).__name__}:{repr(value)[:30]}"


@pytest.fixture
def repo(
    pg: psycopg.Connection[Any], r: redis.Redis, client: kvfast.Client
) -> Iterator[kvfast.Repository[Everything]]:
    """A repository over a Redis that already holds objects, tombstones and queue entries."""
    create_tables(pg, Everything)
    repository = kvfast.Repository(Everything, client=client)
    repository.create_many([everything(k) for k in range(1, 11)])
    repository.update(3, n_str="updated")
    repository.delete(4)
    yield repository


def assert_refused(
    r: redis.Redis, call: Callable[[], object], field: str, value: Any, model: str = "Everything"
) -> kvfast.ValidationError:
    before = snapshot(r)
    with pytest.raises(kvfast.ValidationError) as excinfo:
        call()
    exc = excinfo.value
    assert exc.model == model
    assert exc.field == field
    assert exc.value is value
    text = str(exc)
    assert f"{model}.{field} = " in text
    assert repr(value)[:40] in text
    assert exc.reason and exc.reason in text
    assert snapshot(r) == before, "a refused write changed Redis"
    return exc


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[case_id(c) for c in BAD_VALUES])
def test_create_refuses_bad_values(
    r: redis.Redis, repo: kvfast.Repository[Everything], field: str, value: Any
) -> None:
    assert_refused(r, lambda: repo.create(everything(20, **{field: value})), field, value)


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[case_id(c) for c in BAD_VALUES])
def test_a_batch_with_one_bad_record_writes_nothing(
    r: redis.Redis, repo: kvfast.Repository[Everything], field: str, value: Any
) -> None:
    batch = [everything(k) for k in range(100, 150)]
    batch.insert(37, everything(137_000, **{field: value}))
    assert_refused(r, lambda: repo.create_many(batch), field, value)


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[case_id(c) for c in BAD_VALUES])
def test_update_refuses_bad_values(
    r: redis.Redis, repo: kvfast.Repository[Everything], field: str, value: Any
) -> None:
    assert_refused(r, lambda: repo.update(1, **{field: value}), field, value)


BAD_KEYS: list[Any] = [None, "1", 1.0, True, 2**63, -(2**63) - 1, Decimal(1)]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_a_missing_or_bad_key_is_refused_everywhere(
    r: redis.Redis, repo: kvfast.Repository[Everything], key: Any
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: repo.create(everything(key)),
        lambda: repo.create_many([everything(50), everything(key)]),
        lambda: repo.update(key, n_str="x"),
        lambda: repo.update_many([(1, {"n_str": "x"}), (key, {"n_str": "y"})]),
        lambda: repo.delete(key),
        lambda: repo.delete_many([1, 2, key]),
        lambda: repo.get_by_id(key),
        lambda: repo.get_many([1, key]),
    ]
    for call in calls:
        assert_refused(r, call, "id", key)


def test_a_uuid_key_must_be_a_uuid(pg: psycopg.Connection[Any], r: redis.Redis,
                                   client: kvfast.Client) -> None:
    create_tables(pg, Token)
    repo = kvfast.Repository(Token, client=client)
    text_key = "12345678-1234-5678-1234-567812345678"
    assert_refused(r, lambda: repo.get_by_id(text_key), "token", text_key, model="Token")
    assert_refused(
        r, lambda: repo.create(Token(token=None, owner="o", scopes=[])),  # type: ignore[arg-type]
        "token", None, model="Token",
    )


def test_a_str_key_cannot_hold_a_nul_byte(pg: psycopg.Connection[Any], r: redis.Redis,
                                          client: kvfast.Client) -> None:
    create_tables(pg, Account)
    repo = kvfast.Repository(Account, client=client)
    obj = Account(name="a\x00b", balance=Decimal(1), active=True)
    assert_refused(r, lambda: repo.create(obj), "name", "a\x00b", model="Account")
    assert_refused(r, lambda: repo.delete("a\x00b"), "name", "a\x00b", model="Account")


# -- update-only refusals ---------------------------------------------------------------


def test_update_refuses_an_unknown_field(r: redis.Redis,
                                         repo: kvfast.Repository[Everything]) -> None:
    exc = assert_refused(r, lambda: repo.update(1, no_such_field=5), "no_such_field", 5)
    assert "no such field" in str(exc)


def test_update_refuses_the_key_field(r: redis.Redis,
                                      repo: kvfast.Repository[Everything]) -> None:
    exc = assert_refused(r, lambda: repo.update(1, id=2), "id", 2)
    assert "key" in exc.reason


def test_update_refuses_an_empty_change(r: redis.Redis,
                                        repo: kvfast.Repository[Everything]) -> None:
    before = snapshot(r)
    with pytest.raises(kvfast.ValidationError, match="Everything"):
        repo.update(1)
    assert snapshot(r) == before


def test_an_update_batch_with_one_bad_change_applies_none(
    r: redis.Redis, repo: kvfast.Repository[Everything]
) -> None:
    changes = {1: {"n_str": "fine"}, 2: {"n_int": 7}, 5: {"n_int": "bad"}, 6: {"o_str": "fine"}}
    assert_refused(r, lambda: repo.update_many(changes), "n_int", "bad")
    assert repo.get_by_id(1) == everything(1)


def test_create_refuses_an_object_of_another_type(
    r: redis.Redis, repo: kvfast.Repository[Everything]
) -> None:
    account = Account(name="x", balance=Decimal(1), active=True)
    exc = assert_refused(r, lambda: repo.create(account), "<object>", account)  # type: ignore[arg-type]
    assert "Account" in exc.reason
    as_dict = {"id": 30}
    assert_refused(r, lambda: repo.create_many([everything(31), as_dict]), "<object>", as_dict)  # type: ignore[list-item]


def test_accepted_conversions_are_normalized(
    r: redis.Redis, repo: kvfast.Repository[Everything]
) -> None:
    """What is accepted is stored as the field's own type (an int for a float, a member
    for an enum value)."""
    repo.create(everything(60, n_float=3, n_enum="red", n_bytes=bytearray(b"ab"), o_float=-1))
    got = repo.get_by_id(60)
    assert got is not None
    assert (type(got.n_float), got.n_float) == (float, 3.0)
    assert got.o_float == -1.0 and type(got.o_float) is float
    assert got.n_enum is Color.RED
    assert (type(got.n_bytes), got.n_bytes) == (bytes, b"ab")
    repo.update(60, n_enum="", n_datetime=dt.datetime(2024, 1, 1, 5, tzinfo=dt.timezone(
        dt.timedelta(hours=5))))
    got = repo.get_by_id(60)
    assert got is not None
    assert got.n_enum is Color.EMPTY
    assert got.n_datetime == dt.datetime(2024, 1, 1, 0, tzinfo=dt.UTC)
    assert got.n_datetime.utcoffset() == dt.timedelta(0)


def test_validation_does_not_touch_the_objects_passed_in(
    repo: kvfast.Repository[Everything],
) -> None:
    when = dt.datetime(2024, 1, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    obj = everything(70, n_datetime=when, n_enum="green")
    repo.create(obj)
    assert obj.n_datetime is when
    assert obj.n_enum == "green"


def test_uuid_values_are_any_uuid_version(repo: kvfast.Repository[Everything]) -> None:
    for value in (uuid.uuid1(), uuid.uuid4(), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)):
        repo.update(1, n_uuid=value, o_uuid=value)
        got = repo.get_by_id(1)
        assert got is not None and got.n_uuid == value and got.o_uuid == value
