"""kvfast: write-behind key-value storage, Redis now, PostgreSQL in order soon after.

    import kvfast

    @kvfast.model(table="bookings", key="id")
    class Booking: ...

    repo = kvfast.Repository(Booking)          # settings from KVFAST_* variables
    repo.create(Booking(id=1, ...))
    repo.update(1, status="assigned")
    repo.get_by_id(1)
"""

from kvfast.client import Client
from kvfast.columns import (
    Array,
    BigInt,
    Boolean,
    Bytea,
    Char,
    Column,
    ColumnType,
    Date,
    Double,
    Integer,
    Interval,
    Json,
    Jsonb,
    Numeric,
    PgEnum,
    Real,
    SmallInt,
    Text,
    Time,
    Timestamp,
    TimestampTZ,
    Uuid,
    VarChar,
)
from kvfast.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    DecodeError,
    KvfastError,
    LayoutMismatch,
    ModelError,
    NotFound,
    NotReplicated,
    PartialWrite,
    PartitionMismatch,
    PostgresQueryError,
    PostgresUnavailable,
    RedisCommandError,
    RedisFull,
    RedisUnavailable,
    SchemaMismatch,
    ValidationError,
    WriteOutcomeUnknown,
)
from kvfast.model import ModelInfo, model, model_info, registered_models
from kvfast.repository import Repository
from kvfast.schema import check_tables, create_tables
from kvfast.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "Array",
    "AuthenticationFailed",
    "BigInt",
    "Boolean",
    "Bytea",
    "Char",
    "Client",
    "Column",
    "ColumnType",
    "ConfigError",
    "ConnectionFailed",
    "Date",
    "DecodeError",
    "Double",
    "Integer",
    "Interval",
    "Json",
    "Jsonb",
    "KvfastError",
    "LayoutMismatch",
    "ModelError",
    "ModelInfo",
    "NotFound",
    "NotReplicated",
    "Numeric",
    "PartialWrite",
    "PartitionMismatch",
    "PgEnum",
    "PostgresQueryError",
    "PostgresUnavailable",
    "Real",
    "RedisCommandError",
    "RedisFull",
    "RedisUnavailable",
    "Repository",
    "SchemaMismatch",
    "Settings",
    "SmallInt",
    "Text",
    "Time",
    "Timestamp",
    "TimestampTZ",
    "Uuid",
    "ValidationError",
    "VarChar",
    "WriteOutcomeUnknown",
    "__version__",
    "check_tables",
    "create_tables",
    "model",
    "model_info",
    "registered_models",
]
