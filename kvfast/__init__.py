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
from kvfast.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    DecodeError,
    KvfastError,
    LayoutMismatch,
    ModelError,
    NotFound,
    PartitionMismatch,
    PostgresQueryError,
    PostgresUnavailable,
    RedisCommandError,
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
    "AuthenticationFailed",
    "Client",
    "ConfigError",
    "ConnectionFailed",
    "DecodeError",
    "KvfastError",
    "LayoutMismatch",
    "ModelError",
    "ModelInfo",
    "NotFound",
    "PartitionMismatch",
    "PostgresQueryError",
    "PostgresUnavailable",
    "RedisCommandError",
    "RedisUnavailable",
    "Repository",
    "SchemaMismatch",
    "Settings",
    "ValidationError",
    "WriteOutcomeUnknown",
    "__version__",
    "check_tables",
    "create_tables",
    "model",
    "model_info",
    "registered_models",
]
