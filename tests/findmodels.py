"""Models of the find tests (tables prefixed ``f_``), importable by a supervisor
subprocess with ``--models findmodels`` (``tests/`` is on its PYTHONPATH)."""

from __future__ import annotations

import enum
import uuid

import kvfast


class Stage(enum.Enum):
    NEW = "new"
    DONE = "done"


@kvfast.model(table="f_requests", key="id", indexes=("rider", "status"))
class Request:
    id: int
    rider: str
    fare: int
    status: str | None = None


@kvfast.model(table="f_expiring", key="code", ttl=1, indexes=("rider",))
class Expiring:
    code: str
    rider: int
    fare: int


@kvfast.model(table="f_typed", key="id", indexes=("owner", "stage"))
class Typed:
    id: uuid.UUID
    owner: uuid.UUID
    stage: Stage
