"""The Lua scripts in ``kvfast/lua/``: read once, called by SHA.

Scripts are files with a header documenting KEYS and ARGV, never strings built
from user data.  Calls are packed here as EVALSHA (one buffer for many calls)
and sent by the sync or asyncio client; ``EvalBatch`` loads the script and
resends the calls a NOSCRIPT reply refused (a restarted Redis forgets scripts).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import hiredis
import redis

from kvfast.errors import KvfastError

__all__ = [
    "REPLY_ERRORS",
    "SCRIPT_NAMES",
    "UNAVAILABLE_PREFIXES",
    "EvalBatch",
    "pack",
    "source",
    "unavailable_reply",
]

#: an error reply, as hiredis.Reader (raw path) or redis-py returns it
REPLY_ERRORS = (hiredis.ReplyError, redis.ResponseError)
#: error replies that mean "this server cannot serve now", not "this command is wrong":
#: retried like a lost connection (a restarted Redis answers LOADING while it
#: reads its AOF; a failover answers READONLY / MASTERDOWN / TRYAGAIN).
UNAVAILABLE_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "READONLY", "CLUSTERDOWN")


def unavailable_reply(replies: list[Any]) -> Any:
    """The first reply saying the server cannot serve now (see above), else None."""
    for reply in replies:
        if isinstance(reply, REPLY_ERRORS) and str(reply).startswith(UNAVAILABLE_PREFIXES):
            return reply
    return None

SCRIPT_NAMES = ("update", "hydrate", "claim", "ack", "renew", "rebase", "requeue")


@cache
def source(name: str) -> bytes:
    return resources.files("kvfast").joinpath("lua", f"{name}.lua").read_bytes()


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name)).hexdigest()


def pack(name: str, keys: list[Any], args: list[Any]) -> bytes:
    """One EVALSHA in RESP form, for a hand-built pipeline."""
    command = ("EVALSHA", sha(name), len(keys), *keys, *args)
    return hiredis.pack_command(command)  # type: ignore[no-any-return]


class EvalBatch:
    """Pipelined EVALSHA calls of one script, with the NOSCRIPT retry, for any transport.

    ``payload()`` packs the calls still pending; ``take(replies)`` keeps the
    results and returns True when a NOSCRIPT asks for SCRIPT LOAD and a resend
    (a Redis restart empties its script cache; the failed calls did nothing).
    """

    def __init__(self, name: str, calls: list[tuple[list[Any], list[Any]]]) -> None:
        self.name = name
        self.calls = calls
        self.results: list[Any] = [None] * len(calls)
        self.pending = list(range(len(calls)))
        self._retried = False

    def payload(self) -> bytes:
        return b"".join(pack(self.name, *self.calls[i]) for i in self.pending)

    def take(self, replies: list[Any]) -> bool:
        retry = []
        for i, reply in zip(self.pending, replies, strict=True):
            if isinstance(reply, REPLY_ERRORS):
                if str(reply).startswith("NOSCRIPT") and not self._retried:
                    retry.append(i)
                    continue
                raise KvfastError(f"Redis refused {self.name}.lua: {reply}") from reply
            self.results[i] = reply
        self.pending = retry
        self._retried = True
        return bool(retry)

    @property
    def load_command(self) -> bytes:
        return hiredis.pack_command(("SCRIPT", "LOAD", source(self.name)))  # type: ignore[arg-type,no-any-return]
