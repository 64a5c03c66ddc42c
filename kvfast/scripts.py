"""The Lua scripts in ``kvfast/lua/``: read once, called by SHA.

Scripts are files with a header documenting KEYS and ARGV, never strings built
from user data.  Single calls go through redis-py's ``Script`` (which reloads on
NOSCRIPT after a Redis restart); pipelined calls are packed here as EVALSHA and
``load_all`` is run again when a reply says NOSCRIPT.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import hiredis
import redis

__all__ = ["SCRIPT_NAMES", "ScriptSet", "source"]

SCRIPT_NAMES = ("update", "hydrate", "claim", "ack", "renew", "rebase", "requeue")


@cache
def source(name: str) -> bytes:
    return resources.files("kvfast").joinpath("lua", f"{name}.lua").read_bytes()


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name)).hexdigest()


class ScriptSet:
    """The scripts registered on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._scripts = {name: client.register_script(source(name)) for name in SCRIPT_NAMES}

    def __call__(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        return self._scripts[name](keys=keys, args=args)

    def load_all(self) -> None:
        for name in SCRIPT_NAMES:
            self.client.script_load(source(name))

    @staticmethod
    def pack(name: str, keys: list[Any], args: list[Any]) -> bytes:
        """One EVALSHA in RESP form, for a hand-built pipeline."""
        command = ("EVALSHA", sha(name), len(keys), *keys, *args)
        return hiredis.pack_command(command)  # type: ignore[no-any-return]
