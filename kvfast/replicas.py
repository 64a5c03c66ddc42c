"""``wait_replicas``: the WAIT that ends a write's payload, and what its reply means.

No I/O: ``Client`` and ``AsyncClient`` both append ``wait_command`` to the payload
of a write (WAIT waits for the connection's own last write, so it must ride on
the connection that wrote) and hand its reply to ``check_wait``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvfast.errors import NotReplicated
from kvfast.resp import REPLY_ERRORS, pack, reply_exception
from kvfast.settings import Settings

__all__ = ["check_wait", "wait_command"]


def wait_command(settings: Settings) -> bytes:
    """``WAIT wait_replicas wait_timeout_ms``, or nothing without ``wait_replicas``."""
    n = settings.wait_replicas
    return pack(("WAIT", n, settings.wait_timeout_ms)) if n else b""


def check_wait(settings: Settings, reply: Any, keys: Callable[[], list[Any]], what: str) -> None:
    """``NotReplicated`` when ``reply`` (to ``wait_command``) counts too few replicas."""
    if isinstance(reply, REPLY_ERRORS):
        raise reply_exception(reply, "WAIT") from reply
    need = settings.wait_replicas
    if int(reply) < need:
        raise NotReplicated(
            f"{what}: written, but {int(reply)} of the {need} replicas asked for "
            f"(wait_replicas) confirmed it within {settings.wait_timeout_ms} ms: a "
            "failover now could lose it (write it again, or check the replicas)", keys())
