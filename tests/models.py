"""Models used by the tests, declared once at module level.

kvfast registers models by table name for the whole process, so every table here
starts with ``t_`` (or is deliberately odd) and is used by no other module.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import kvfast


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    EMPTY = ""
    ODD = "ünï cödé ✓"


class Shade(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling, on purpose
    """A str-mixin enum: its members *are* str instances, but ``str(Shade.DARK)`` is
    ``"Shade.DARK"`` (unlike ``enum.StrEnum``)."""

    LIGHT = "light"
    DARK = "dark"


@kvfast.model(table="t_everything", key="id")
class Everything:
    """One field per supported type, and an Optional twin of each."""

    id: int
    n_int: int
    n_str: str
    n_float: float
    n_bool: bool
    n_datetime: dt.datetime
    n_date: dt.date
    n_decimal: Decimal
    n_bytes: bytes
    n_dict: dict[str, Any]
    n_list: list[Any]
    n_uuid: uuid.UUID
    n_enum: Color
    o_int: int | None = None
    o_str: str | None = None
    o_float: float | None = None
    o_bool: bool | None = None
    o_datetime: dt.datetime | None = None
    o_date: dt.date | None = None
    o_decimal: Decimal | None = None
    o_bytes: bytes | None = None
    o_dict: dict[str, Any] | None = None
    o_list: list[Any] | None = None
    o_uuid: uuid.UUID | None = None
    o_enum: Color | None = None


REQUIRED_FIELDS = (
    "n_int", "n_str", "n_float", "n_bool", "n_datetime", "n_date", "n_decimal",
    "n_bytes", "n_dict", "n_list", "n_uuid", "n_enum",
)
OPTIONAL_FIELDS = tuple("o_" + name[2:] for name in REQUIRED_FIELDS)


@kvfast.model(table="t_session", key="id", ttl=1)
class Session:
    """A model whose Redis copies expire after one second."""

    id: int
    user: str
    note: str | None = None


@kvfast.model(table="t_token", key="token")
class Token:
    """A model keyed by a UUID."""

    token: uuid.UUID
    owner: str
    scopes: list[Any]
    expires: dt.datetime | None = None


@kvfast.model(table="t_account", key="name")
class Account:
    """A model keyed by a str."""

    name: str
    balance: Decimal
    active: bool
    shade: Shade | None = None


#: A table name made of quotes, spaces, SQL keywords and an injection attempt.
ODD_TABLE = 'select "odd" table; drop table t_everything; --'


@kvfast.model(table=ODD_TABLE, key="order")
class Odd:
    """Identifiers that only work when every one of them is quoted."""

    order: str
    select: int
    user: str | None = None
    group: dict[str, Any] | None = None


# Two tables whose names differ by a ':' suffix; used to show that their object
# keys must not collide (t_colon key "b:c" vs t_colon:b key "c").
@kvfast.model(table="t_colon", key="id")
class Colon:
    id: str
    x: int


@kvfast.model(table="t_colon:b", key="id")
class ColonB:
    id: str
    y: str


ALL_MODELS = (Everything, Session, Token, Account, Odd, Colon, ColonB)


# -- declared column types (issue 10): appended, the classes above are unchanged ------------

from typing import Annotated  # noqa: E402


class RideStatus(enum.Enum):
    NEW = "new"
    ASSIGNED = "assigned"
    DONE = "dünn ✓"


@kvfast.model(table="t_typed", key="id")
class Typed:
    """One field per declared column type (issue 10), an Optional twin of some."""

    id: Annotated[str, kvfast.Char(36)]
    small: Annotated[int, kvfast.SmallInt]
    integer: Annotated[int, kvfast.Integer]
    big: Annotated[int, kvfast.BigInt()]
    char: Annotated[str, kvfast.Char(5)]
    varchar: Annotated[str, kvfast.VarChar(5)]
    text: Annotated[str, kvfast.Text]
    money: Annotated[Decimal, kvfast.Numeric(7, 2)]
    num: Annotated[Decimal, kvfast.Numeric]
    real: Annotated[float, kvfast.Real]
    double: Annotated[float, kvfast.Double]
    tstz: Annotated[dt.datetime, kvfast.TimestampTZ]
    ts: Annotated[dt.datetime, kvfast.Timestamp]
    day: Annotated[dt.date, kvfast.Date]
    clock: dt.time
    span: dt.timedelta
    js: Annotated[dict[str, Any], kvfast.Json]
    jsb: Annotated[list[Any], kvfast.Jsonb]
    flag: Annotated[bool, kvfast.Boolean]
    blob: Annotated[bytes, kvfast.Bytea]
    uid: Annotated[uuid.UUID, kvfast.Uuid]
    status: Annotated[RideStatus, kvfast.PgEnum("t_ride_status")]
    kind: Annotated[str, kvfast.PgEnum("t_ride_kind", labels=("auto", "cab", ""))]
    tags: Annotated[list[str], kvfast.Array]
    codes: Annotated[list[str | None], kvfast.Array(kvfast.VarChar(3))]
    pads: Annotated[list[str], kvfast.Array(kvfast.Char(3))]
    ints: Annotated[list[int], kvfast.Array(kvfast.Integer)]
    smalls: Annotated[list[int], kvfast.Array(kvfast.SmallInt)]
    bigs: Annotated[list[int], kvfast.Array]
    ids: Annotated[list[uuid.UUID], kvfast.Array]
    reals: Annotated[list[float], kvfast.Array(kvfast.Real)]
    moneys: Annotated[list[Decimal | None], kvfast.Array(kvfast.Numeric(5, 1))]
    stamps: Annotated[list[dt.datetime], kvfast.Array(kvfast.Timestamp)]
    tstzs: Annotated[list[dt.datetime], kvfast.Array(kvfast.TimestampTZ)]
    days: Annotated[list[dt.date], kvfast.Array]
    clocks: Annotated[list[dt.time], kvfast.Array]
    spans: Annotated[list[dt.timedelta], kvfast.Array]
    flags: Annotated[list[bool], kvfast.Array]
    class_: Annotated[str | None, kvfast.Column("class")] = None
    camel: Annotated[int | None, kvfast.Integer, kvfast.Column("camelCase")] = None
    o_small: Annotated[int, kvfast.SmallInt] | None = None
    o_char: Annotated[str | None, kvfast.Char(5)] = None
    o_money: Annotated[Decimal, kvfast.Numeric(7, 2)] | None = None
    o_real: Annotated[float, kvfast.Real] | None = None
    o_ts: Annotated[dt.datetime, kvfast.Timestamp] | None = None
    o_clock: dt.time | None = None
    o_span: dt.timedelta | None = None
    o_js: Annotated[dict[str, Any], kvfast.Json] | None = None
    o_status: Annotated[RideStatus, kvfast.PgEnum("t_ride_status")] | None = None
    o_kind: Annotated[str, kvfast.PgEnum("t_ride_kind", labels=("auto", "cab", ""))] | None = None
    o_tags: Annotated[list[str], kvfast.Array] | None = None
