"""The Redis wire, as kvfast speaks it on its own sockets: RESP out, replies in.

Both transports (``kvfast.client`` on a redis-py pooled socket, ``kvfast.aioclient``
on an asyncio stream) pack commands with ``pack`` into one buffer per batch and
parse the replies with a ``hiredis.Reader``; error replies come back as values
and are classified here: "cannot serve now" (``UNAVAILABLE_PREFIXES``) is
``RedisUnavailable``, ``OOM`` (Redis at maxmemory) ``RedisFull``, anything else a
``RedisCommandError``.  Nothing here does
I/O beyond reading replies off a socket it is given.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import hiredis
import redis

from kvfast import impl
from kvfast.errors import AuthenticationFailed, RedisCommandError, RedisFull, RedisUnavailable

__all__ = [
    "AUTH_PREFIXES",
    "DISCARD",
    "EXEC",
    "FULL_PREFIX",
    "MULTI",
    "REPLY_ERRORS",
    "UNAVAILABLE_PREFIXES",
    "Piece",
    "Request",
    "check_replies",
    "pack",
    "read_replies",
    "reply_exception",
    "unavailable_reply",
]

#: one command in RESP form; hiredis' stub types the argument as a 1-tuple, it takes any length
#: one command in RESP: hiredis.pack_command, or kvfast._speedups's for bytes/str
#: arguments (the same bytes, ~7x fewer instructions per argument) when C is chosen
pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command if impl.speedups is None
            else functools.partial(impl.speedups.pack_command, hiredis.pack_command))
MULTI = pack(("MULTI",))
EXEC = pack(("EXEC",))
DISCARD = pack(("DISCARD",))

#: an error reply, as hiredis.Reader (raw path) or redis-py returns it
REPLY_ERRORS = (hiredis.ReplyError, redis.ResponseError)
#: error replies that mean "this server cannot serve now", not "this command is wrong":
#: retried like a lost connection (a restarted Redis answers LOADING while it
#: reads its AOF; a failover answers READONLY / MASTERDOWN / TRYAGAIN).
UNAVAILABLE_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "READONLY", "CLUSTERDOWN")
#: Redis at maxmemory under noeviction refused a command that may grow memory (a
#: script's refused write says so too: "OOM command not allowed … script: …")
FULL_PREFIX = "OOM"

#: error replies that refuse the credentials: a configuration error, never retried
AUTH_PREFIXES = ("WRONGPASS", "NOAUTH", "ERR invalid password", "ERR AUTH")

_RECV_SIZE = 1 << 16


class Piece(NamedTuple):
    """Part of a packed batch, produced while later records are still being encoded."""

    payload: bytes
    nreplies: int
    records: int
    ends_block: bool


class Request(NamedTuple):
    """A packed batch: the bytes to send, how many replies come back, records in it."""

    payload: bytes
    nreplies: int
    records: int


def unavailable_reply(replies: list[Any]) -> Any:
    """The first reply saying the server cannot serve now (see above), else None."""
    for reply in replies:
        if isinstance(reply, REPLY_ERRORS) and str(reply).startswith(UNAVAILABLE_PREFIXES):
            return reply
    return None


def reply_exception(
    reply: BaseException, what: str, where: str = ""
) -> RedisUnavailable | RedisFull | RedisCommandError | AuthenticationFailed:
    """The kvfast leaf for an error reply: ``what`` names the refused call.

    ``where`` (a redacted URL) is shown for "cannot serve now" replies, which are
    about the server rather than the command.
    """
    text = str(reply)
    if text.startswith(UNAVAILABLE_PREFIXES):
        at = f" at {where}" if where else ""
        return RedisUnavailable(f"Redis{at} cannot serve: {text}")
    if text.startswith(FULL_PREFIX):
        return RedisFull(f"Redis is full, it refused {what} (nothing of it was written): {text}")
    if text.startswith(AUTH_PREFIXES):
        at = f" at {where}" if where else ""
        return AuthenticationFailed(f"Redis{at} refused the credentials ({what}): {text} "
                                    "(check the user and password in the Redis URL)")
    return RedisCommandError(f"Redis refused {what}: {text}")


def check_replies(replies: list[Any], what: str, item: str | None = None) -> None:
    """Raise the leaf for the first error reply, looking one level into EXEC arrays.

    ``item`` names an error inside an EXEC array (default ``what``).
    """
    for reply in replies:
        if isinstance(reply, REPLY_ERRORS):
            raise reply_exception(reply, what) from reply
        if isinstance(reply, list):
            for inner in reply:
                if isinstance(inner, REPLY_ERRORS):
                    raise reply_exception(inner, item or what) from inner


def read_replies(sock: socket.socket, nreplies: int) -> list[Any]:
    """Read ``nreplies`` replies off ``sock`` with a hiredis Reader (errors as values).

    redis-py's read_response() costs ~2 µs of Python per reply, more than Redis
    spends executing most commands.  A closed socket raises ConnectionError
    (an OSError: translated to RedisUnavailable by ``kvfast.drivers``).
    """
    reader = hiredis.Reader()
    replies: list[Any] = []
    gets = reader.gets
    append = replies.append
    while len(replies) < nreplies:
        data = sock.recv(_RECV_SIZE)
        if not data:
            raise ConnectionError("Redis closed the connection")
        reader.feed(data)
        reply = gets()
        while reply is not False:
            append(reply)
            reply = gets()
    return replies
