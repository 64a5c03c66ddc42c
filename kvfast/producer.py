"""Pipelined, atomic writes: the producer side of the data path.

A create or delete batch is one MULTI/EXEC: every object's hash and every queue
entry of the batch are applied together or not at all (a failure in between
leaves neither).  Queue entries are grouped into one RPUSH per partition, in the
order the caller gave them.  Commands are packed by hiredis into one buffer and
sent in one round trip; redis-py's per-command pipeline objects cost more than
the Redis work itself (DESIGN.md: 105k records/s vs 265k for packed buffers).

Partial updates are one Lua call each (update.lua): the script checks that the
object exists, so an update never leaves a partial hash behind.

Everything is validated before the first byte is sent: a batch with one bad
record writes nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import hiredis
import redis

from kvfast import codec
from kvfast.client import redis_errors
from kvfast.errors import KvfastError
from kvfast.model import TOMBSTONE_FIELD

if TYPE_CHECKING:
    from kvfast.client import Client
    from kvfast.model import ModelInfo

__all__ = ["Producer"]

# hiredis' stub types the argument as a 1-tuple; it takes any length.
_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
_MULTI = _pack(("MULTI",))
_EXEC = _pack(("EXEC",))
# Records per MULTI/EXEC block: a block runs without interruption inside Redis,
# so a 100k-record create_many is cut into blocks that each hold the server for
# a few ms.  All blocks still travel in one round trip.
_BLOCK = 5000


class Producer:
    """Builds and sends the write batches of one model."""

    def __init__(self, client: Client, info: ModelInfo) -> None:
        self.client = client
        self.info = info
        self.keys = client.keys
        self.table = info.table
        self.ttl = info.ttl or 0
        self._key_index = info.key_field.index
        self._codecs = [
            (f.name, f.ftype, f.ftype.wire_is_value) for f in info.fields
        ]

    # -- helpers ---------------------------------------------------------------

    def locate(self, key: Any) -> tuple[Any, int, str]:
        """(wire key, partition, object hash name) of a normalized key."""
        info = self.info
        key_str = str(key)
        p = info.partition_of(key_str, self.keys.partitions)
        wire = key if type(key) is int else key_str
        return wire, p, self.keys.obj(p, self.table, key_str)

    def _send(self, payload: bytes, nreplies: int) -> list[Any]:
        """Send one packed buffer; return every reply (error replies as exceptions)."""
        self.client.check_partitions()
        pool = self.client.redis.connection_pool
        with redis_errors(self.client.settings):
            conn = pool.get_connection()
            try:
                conn.send_packed_command([payload])  # type: ignore[no-untyped-call]
                replies: list[Any] = []
                for _ in range(nreplies):
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
            except BaseException:
                conn.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                pool.release(conn)
        return replies

    def _send_blocks(self, blocks: list[tuple[list[bytes], dict[int, list[bytes]]]]) -> None:
        """Wrap each block's commands and its per-partition RPUSHes in MULTI/EXEC."""
        parts: list[bytes] = []
        nreplies = 0
        queues = self.keys.queues
        for commands, entries in blocks:
            parts.append(_MULTI)
            parts.extend(commands)
            for p, items in entries.items():
                parts.append(_pack(("RPUSH", queues[p], *items)))
            parts.append(_EXEC)
            nreplies += 2 + len(commands) + len(entries)
        replies = self._send(b"".join(parts), nreplies)
        for reply in replies:
            if isinstance(reply, Exception):
                raise KvfastError(f"Redis refused a write batch: {reply}") from reply
            if isinstance(reply, list):
                for item in reply:
                    if isinstance(item, Exception):
                        raise KvfastError(f"Redis refused a write: {item}") from item

    # -- writes ----------------------------------------------------------------

    def create(self, objs: Iterable[Any]) -> int:
        info = self.info
        t_us = codec.now_us()
        table = self.table
        ttl = self.ttl
        codecs = self._codecs
        key_index = self._key_index
        # Validate everything first: nothing is packed for sending until all pass.
        checked = [info.check_object(obj) for obj in objs]
        blocks: list[tuple[list[bytes], dict[int, list[bytes]]]] = []
        for start in range(0, len(checked), _BLOCK):
            commands: list[bytes] = []
            entries: dict[int, list[bytes]] = {}
            for values in checked[start : start + _BLOCK]:
                wire_key, p, obj_key = self.locate(values[key_index])
                hash_args: list[Any] = ["HSET", obj_key]
                wire: dict[str, Any] = {}
                for (name, ftype, same), value in zip(codecs, values, strict=True):
                    if value is None:
                        wire[name] = None
                        continue
                    hash_args.append(name)
                    hash_args.append(ftype.to_hash(value))
                    wire[name] = value if same else ftype.to_wire(value)
                # DEL first: create replaces the whole object (NULL = absent field,
                # and a pending tombstone must go), exactly like the upsert in PG.
                commands.append(_pack(("DEL", obj_key)))
                commands.append(_pack(tuple(hash_args)))
                if ttl:
                    commands.append(_pack(("EXPIRE", obj_key, ttl)))
                entry = codec.encode_write(table, codec.OP_CREATE, wire_key, wire, t_us)
                entries.setdefault(p, []).append(entry)
            blocks.append((commands, entries))
        if blocks:
            self._send_blocks(blocks)
        return len(checked)

    def delete(self, keys: Iterable[Any]) -> int:
        info = self.info
        t_us = codec.now_us()
        normalized = [info.check_key(k) for k in keys]
        blocks: list[tuple[list[bytes], dict[int, list[bytes]]]] = []
        for start in range(0, len(normalized), _BLOCK):
            commands: list[bytes] = []
            entries: dict[int, list[bytes]] = {}
            for key in normalized[start : start + _BLOCK]:
                wire_key, p, obj_key = self.locate(key)
                # The tombstone keeps a pending delete from reading through to the
                # old PostgreSQL row; ack.lua removes it once the delete has drained.
                tomb_id = secrets.token_hex(8)
                commands.append(_pack(("DEL", obj_key)))
                commands.append(_pack(("HSET", obj_key, TOMBSTONE_FIELD, tomb_id)))
                entry = codec.encode_delete(self.table, wire_key, tomb_id, t_us)
                entries.setdefault(p, []).append(entry)
            blocks.append((commands, entries))
        if blocks:
            self._send_blocks(blocks)
        return len(normalized)

    def update(self, changes: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[int]:
        """Apply partial updates; returns update.lua's status per change (1, 0, -1)."""
        info = self.info
        t_us = codec.now_us()
        ttl = str(self.ttl)
        by_name = info.by_name
        prepared: list[tuple[list[Any], list[Any]]] = []
        for key, fields in changes:
            key = info.check_key(key)
            checked = info.check_changes(fields)
            wire_key, p, obj_key = self.locate(key)
            sets: list[Any] = []
            nulls: list[Any] = []
            wire: dict[str, Any] = {}
            for name, value in checked.items():
                ftype = by_name[name].ftype
                if value is None:
                    nulls.append(name)
                    wire[name] = None
                else:
                    sets.append(name)
                    sets.append(ftype.to_hash(value))
                    wire[name] = value if ftype.wire_is_value else ftype.to_wire(value)
            entry = codec.encode_write(self.table, codec.OP_UPDATE, wire_key, wire, t_us)
            args = [TOMBSTONE_FIELD, ttl, entry, len(sets) // 2, *sets, *nulls]
            prepared.append(([obj_key, self.keys.queues[p]], args))
        return self._eval_many("update", prepared)

    def hydrate(self, rows: Sequence[tuple[Any, list[Any]]]) -> list[int]:
        """Load (key, row values in field order) read from PostgreSQL into Redis."""
        prepared: list[tuple[list[Any], list[Any]]] = []
        for key, values in rows:
            _, _, obj_key = self.locate(key)
            args: list[Any] = [str(self.ttl)]
            for (name, ftype, _), value in zip(self._codecs, values, strict=True):
                if value is not None:
                    args.append(name)
                    args.append(ftype.to_hash(value))
            prepared.append(([obj_key], args))
        return self._eval_many("hydrate", prepared)

    def _eval_many(self, script: str, calls: list[tuple[list[Any], list[Any]]]) -> list[int]:
        """Pipeline EVALSHA calls in one round trip; reload the scripts on NOSCRIPT."""
        if not calls:
            return []
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            payload = b"".join(
                self.client.scripts.pack(script, *calls[i]) for i in pending
            )
            replies = self._send(payload, len(pending))
            retry = []
            for i, reply in zip(pending, replies, strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                    retry.append(i)
                elif isinstance(reply, Exception):
                    raise KvfastError(f"Redis refused {script}.lua: {reply}") from reply
                else:
                    results[i] = reply
            if not retry:
                break
            with redis_errors(self.client.settings):
                self.client.scripts.load_all()
            pending = retry
        return [int(r) for r in results]
