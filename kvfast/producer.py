"""Pipelined, atomic writes: the producer side of the data path.

A create or delete call is one MULTI/EXEC, whatever its size: every object's
hash and every queue entry of the call are applied together or not at all (a
full Redis refuses the whole call with ``RedisFull``; nothing of it is written).
Queue entries are grouped into one RPUSH per partition, in the order the caller
gave them.

The trade-off of one block: Redis runs an EXEC without interruption, so a big
call holds the server for its whole EXEC, and Redis keeps every queued command
in memory until then.  Measured on this 2-core machine under load (average
7): a 100k-record ``create_many`` of demo bookings holds Redis for 0.6–1.1 s in
its one EXEC (5,000-record blocks held it ~25–50 ms each, ~0.5 s in all), takes
2.0–2.5 s end to end (1.5–1.9 s in blocks), and peaks at ~190 MB of Redis memory;
a 100k ``delete_many``'s EXEC holds it ~0.3 s.  Calls of up to a few thousand
records (the benchmark's 5,000) cost the same as before.  Callers that care
about other clients' latency more than about all-or-nothing cut their batches
themselves.  On Redis Cluster a call spans several slots and cannot be one
MULTI: it will raise ``PartialWrite`` naming the keys written.

Commands are packed by hand (per-model RESP templates, hiredis for the
rest) into buffers on a raw socket; redis-py's per-command pipeline objects cost
more than the Redis work itself (bench/test_1_producer.py: ``create_many`` runs
at 3–5x the redis-py pipeline of the same records in the same run).  A create
batch is sent in pieces while it is still being encoded
(``create_pieces``): Redis queues the commands on its own core meanwhile, and
only the EXEC waits until every record is validated; a record refused half-way
turns it into DISCARD.

Partial updates are one Lua call each (update.lua): the script checks that the
object exists, so an update never leaves a partial hash behind.

Nothing of a batch runs before every record has passed validation: a batch with
one bad record writes nothing.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from kvfast import codec
from kvfast.cencoders import create_encoder, framer_for
from kvfast.cluster import Unit
from kvfast.errors import (
    ConnectionFailed,
    KvfastError,
    PartialWrite,
    RedisFull,
    WriteOutcomeUnknown,
)
from kvfast.indexmeta import record_first
from kvfast.keys import MAX_KEY_BYTES, WRITE_FIELD, key_string, key_wire
from kvfast.model import TOMBSTONE_FIELD, model_version
from kvfast.replicas import check_wait
from kvfast.resp import EXEC as _EXEC
from kvfast.resp import MULTI as _MULTI
from kvfast.resp import Piece, Request, check_replies
from kvfast.resp import pack as _pack
from kvfast.scripts import Call, Hydrate, Update

if TYPE_CHECKING:
    from kvfast.client import Client
    from kvfast.keys import Keys
    from kvfast.model import ModelInfo
    from kvfast.settings import Settings

# Piece, Request (kvfast.resp) and Call (kvfast.scripts) stay importable from here.
__all__ = ["Block", "BlocksOutcome", "Producer", "WriteBuilder", "gc_paused"]

#: HSET header: argument count, then the object key as a bulk string; the
#: fields come from the model's encoder already in RESP (see encoders).
_HSET = b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%b\r\n%b"
_WRITE_FIELD = WRITE_FIELD.encode()
#: seconds before a producer tries again to record its indexes after a failure
_RECORD_RETRY_S = 10.0
#: SADD of one member to an index set (name = prefix + value), in RESP
_SADD = b"*3\r\n$4\r\nSADD\r\n$%d\r\n%b%b\r\n$%d\r\n%b\r\n"


def _bulk_pair(name: bytes, value: bytes) -> bytes:
    """A field/value pair of an HSET, in RESP (appended to the encoder's fields)."""
    return b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(name), name, len(value), value)


# Records per piece streamed while the rest is encoded (~60 KB).
_PIECE = 250


def _piece(commands: list[bytes], piece_keys: list[bytes], records: int, *,
           opens: bool, ends: bool) -> Piece:
    """[MULTI] DEL of the piece's keys, its commands [RPUSHes EXEC: in ``commands``]."""
    head = [_MULTI] if opens else []
    if piece_keys:
        head.append(_pack(("DEL", *piece_keys)))
    head += commands  # one join: every byte of the piece is copied once here
    return Piece(b"".join(head), len(head), records, ends)


def _close_block(commands: list[bytes], entries: dict[int, list[bytes]], queues: list[str]) -> None:
    """End a block: one RPUSH per partition of its entries, in order, then EXEC."""
    for p, items in entries.items():
        commands.append(_pack(("RPUSH", queues[p], *items)))
    commands.append(_EXEC)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a batch is encoded and sent.

    Encoding allocates a few containers per record (the wire dict, tuples), so
    a 5,000-record batch triggers dozens of collections, and each older-
    generation pass walks every object the application holds: with 100k live
    objects that was 15–25% of ``create_many``.  Nothing the batch allocates is
    cyclic (reference counting frees it), so pausing the collector for the call
    loses nothing.  It is switched back on only if it was on (a caller that
    disabled it keeps it disabled).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


#: one partition's MULTI block on a Redis Cluster: (partition, request, its keys)
Block = tuple[int, Request, list[Any]]


@dataclass(slots=True)
class BlocksOutcome:
    """The blocks of one call after the nodes answered (``WriteBuilder.blocks_outcome``)."""

    records: int
    total: int
    written: list[Any] = field(default_factory=list)
    unknown: list[Any] = field(default_factory=list)
    unreplicated: list[Any] = field(default_factory=list)
    fewest: int = 0
    #: the first block's error (a ``RedisFull`` the shell may enrich with the backlog)
    first: BaseException | None = None

    def settle(self, settings: Settings, name: str) -> int:
        """The records written, or the error: the first one when nothing was written,
        else ``PartialWrite`` naming exactly the keys written (and those whose
        node took the block without answering); ``NotReplicated`` when every
        block was written but too few replicas confirmed some."""
        first = self.first
        if first is None:
            if self.unreplicated:
                check_wait(settings, self.fewest, lambda: self.unreplicated, f"{name} write")
            return self.records
        if not self.written and not self.unknown:
            raise first
        raise PartialWrite(
            f"{name}: {len(self.written)} of {self.total} keys were written, "
            f"{len(self.unknown)} may have been, the rest were not: {first}",
            self.written, self.unknown) from first


class WriteBuilder:
    """Validates and packs the write batches of one model; no I/O (shared by sync and aio)."""

    def __init__(self, keys: Keys, info: ModelInfo) -> None:
        self.info = info
        self.keys = keys
        self.table = info.table
        self.ttl = info.ttl or 0
        self._codecs = [
            (f.name, f.ftype, f.ftype.wire_is_value) for f in info.fields
        ]
        self._encode = create_encoder(info)  # C or Python: kvfast.impl
        self._partition_of = info.partition_of
        self._obj_prefix = [keys.obj(p, info.table, "") for p in range(keys.partitions)]
        self._obj_prefix_b = [prefix.encode() for prefix in self._obj_prefix]
        self._partitions = keys.partitions
        self.version = model_version(info)
        self._create_head = codec.entry_head(info.table, codec.OP_CREATE, self.version)
        #: per partition, the index set prefixes of the model's indexed fields (kvfast.index)
        self.index_prefixes = [[keys.index_prefix(p, info.table, name) for name in info.indexes]
                               for p in range(keys.partitions)] if info.indexes else None

    # -- helpers ---------------------------------------------------------------

    def locate(self, key: Any) -> tuple[Any, int, str]:
        """(wire key, partition, object hash name) of a normalized key."""
        key_str = key_string(key)
        p = self._partition_of(key_str, self._partitions)
        return key_wire(key), p, self._obj_prefix[p] + key_str

    @staticmethod
    def check_block_replies(replies: list[Any]) -> None:
        """RedisCommandError (or RedisUnavailable) for the first error reply of a batch."""
        check_replies(replies, "a write batch", "a write")

    # -- writes ----------------------------------------------------------------

    def build_create(self, objs: Iterable[Any]) -> Request:
        """Validate and pack a whole create batch (no I/O)."""
        parts: list[bytes] = []
        nreplies = records = 0
        for piece in self.create_pieces(objs):
            parts.append(piece.payload)
            nreplies += piece.nreplies
            records += piece.records
        return Request(b"".join(parts), nreplies, records)

    def create_pieces(self, objs: Iterable[Any]) -> Iterator[Piece]:
        """A create batch as it is encoded: one MULTI/EXEC block, in pieces.

        The block is ``MULTI``, then for every ``_PIECE`` records one ``DEL`` of
        their keys and their ``HSET``s, then one ``RPUSH`` per partition and
        ``EXEC``.  Redis only queues the commands until ``EXEC``, so the sender
        may write the pieces while later records are still being encoded (Redis
        parses them meanwhile, on the other core) and send ``DISCARD`` instead
        if a record fails validation: nothing runs.  The last piece (the RPUSHes
        and ``EXEC``) has ``ends_block`` set; it is sent once every record has
        been validated.
        """
        ttl = self.ttl
        encode = self._encode
        partition_of = self.info.partition_of_bytes
        partitions = self._partitions
        prefixes = self._obj_prefix_b
        queues = self.keys.queues
        # The queue entry is codec.encode_write's bytes, from pieces made once.
        head = self._create_head
        sep = codec.FIELDS_SEP
        tail = codec.entry_tail(codec.now_us())
        dumps = orjson.dumps
        id_prefix = secrets.token_hex(6).encode()
        serial = 0
        max_key = MAX_KEY_BYTES
        commands: list[bytes] = []
        opens = True
        entries: dict[int, list[bytes]] = {}
        piece_keys: list[bytes] = []
        seen: set[bytes] = set()
        in_piece = 0
        index_prefixes = self.index_prefixes
        ivalues: tuple[bytes | None, ...] = ()
        # The C encoder frames whole records too (the same bytes as below, the
        # index sets' SADDs included).
        frame = framer_for(encode, self.info, partitions, prefixes, head, sep, tail, max_key,
                           _WRITE_FIELD, index_prefixes)
        write_id = None

        def frame_py(key: Any, fields: bytes, nfields: int, wire: Any,
                     write_id: bytes | None) -> tuple[int, bytes, bytes, bytes, bytes]:
            """locate(), over bytes: the key is encoded once for the partition, the
            object key and the entry -> (partition, key, object key, HSET, entry)."""
            if type(key) is int:
                key_b = b"%d" % key
                wire_key = key_b
            elif type(key) is tuple:  # a composite key (keys.key_string's rule)
                key_b = key_string(key).encode()
                if len(key_b) > max_key:
                    self.info.check_key_size(key_b, key)
                wire_key = dumps(key_wire(key))
            else:
                key_s = key if type(key) is str else str(key)  # UUID keys: their text
                key_b = key_s.encode()
                if len(key_b) > max_key:
                    self.info.check_key_size(key_b, key)
                wire_key = dumps(key_s)
            p = partition_of(key_b, partitions)
            obj_key = prefixes[p] + key_b
            if write_id is not None:
                command = _HSET % (4 + 2 * nfields, len(obj_key), obj_key,
                                   fields + _bulk_pair(_WRITE_FIELD, write_id))
                entry = head + wire_key + sep + dumps(wire) + codec.mark(write_id) + tail
            else:
                command = _HSET % (2 + 2 * nfields, len(obj_key), obj_key, fields)
                entry = head + wire_key + sep + dumps(wire) + tail
            return p, key_b, obj_key, command, entry

        def add_to_index_sets(commands: list[bytes], p: int, key_b: bytes,
                              ivalues: tuple[bytes | None, ...]) -> None:
            """In the same MULTI as the HSET, on the object's slot.  The sets of the
            values an overwritten object had keep it: find drops it."""
            assert index_prefixes is not None
            for prefix, value in zip(index_prefixes[p], ivalues, strict=True):
                if value is not None:
                    commands.append(_SADD % (len(prefix) + len(value), prefix, value,
                                             len(key_b), key_b))

        if frame is not None:
            # The C framer's loop frames and files whole runs of records (Framer.run
            # in kvfast/_speedups.c: the loop below, in C); a record it declines (a
            # tuple key, an over-long key) comes back as `rest` to be framed here.
            run = frame.run  # type: ignore[attr-defined]
            it = iter(objs)
            run_prefix = id_prefix if ttl else None
            while True:
                want = _PIECE - in_piece
                filed, serial, rest = run(it, want, run_prefix, serial, commands, piece_keys,
                                          seen, entries)
                in_piece += filed
                if rest is not None:
                    _, write_id, (encoded,) = rest
                    key, fields, nfields, wire = encoded[:4]
                    p, key_b, obj_key, command, entry = frame_py(key, fields, nfields, wire,
                                                                 write_id)
                    if obj_key in seen:  # as below
                        commands.append(_pack(("DEL", obj_key)))
                    else:
                        seen.add(obj_key)
                        piece_keys.append(obj_key)
                    commands.append(command)
                    if index_prefixes is not None:
                        add_to_index_sets(commands, p, key_b, encoded[4])
                    entries.setdefault(p, []).append(entry)
                    in_piece += 1
                elif filed < want:
                    break  # the records ran out
                if in_piece == _PIECE:
                    yield _piece(commands, piece_keys, in_piece, opens=opens, ends=False)
                    commands, piece_keys, seen = [], [], set()
                    in_piece = 0
                    opens = False
            objs = ()
        for obj in objs:  # the Python encoder's records
            if ttl:
                # No EXPIRE here: the object gets its TTL when this write has
                # drained (ack.lua), if the write id is still the one it left.
                write_id = b"%b%x" % (id_prefix, serial)
                serial += 1
            if index_prefixes is not None:
                key, fields, nfields, wire, ivalues = encode(obj)
            else:
                key, fields, nfields, wire = encode(obj)
            p, key_b, obj_key, command, entry = frame_py(key, fields, nfields, wire, write_id)
            # create replaces the whole object (NULL = absent field, a pending
            # tombstone must go), like the upsert in PostgreSQL: each piece starts
            # with one DEL of all its keys; a key repeated inside the piece gets
            # its own DEL so its second HSET does not inherit fields of the first.
            if obj_key in seen:
                commands.append(_pack(("DEL", obj_key)))
            else:
                seen.add(obj_key)
                piece_keys.append(obj_key)
            commands.append(command)
            if index_prefixes is not None:
                add_to_index_sets(commands, p, key_b, ivalues)
            queue = entries.get(p)
            if queue is None:
                entries[p] = [entry]
            else:
                queue.append(entry)
            in_piece += 1
            if in_piece == _PIECE:
                yield _piece(commands, piece_keys, in_piece, opens=opens, ends=False)
                commands, piece_keys, seen = [], [], set()
                in_piece = 0
                opens = False
        if entries:
            _close_block(commands, entries, queues)
            yield _piece(commands, piece_keys, in_piece, opens=opens, ends=True)

    def by_partition(self, objs: Iterable[Any]) -> dict[int, list[Any]]:
        """Objects grouped by the partition of their key (for a Redis Cluster, where
        each partition's MULTI block goes to the node of its slot).

        An object whose key does not check raises the encoder's own error (the
        same ValidationError a create on one Redis gives)."""
        info = self.info
        groups: dict[int, list[Any]] = {}
        for obj in objs:
            try:
                key = info.check_key(info.key_of(obj))
            except (KvfastError, AttributeError) as exc:
                self._encode(obj)  # raises the error that names field and value
                raise exc  # pragma: no cover - the encoder refuses what check_key refuses
            p = self.locate(key)[1]
            group = groups.get(p)
            if group is None:
                groups[p] = [obj]
            else:
                group.append(obj)
        return groups

    def create_blocks(self, objs: Iterable[Any]) -> list[Block]:
        """A create batch for a Redis Cluster: one MULTI block per partition."""
        groups = self.by_partition(objs)
        return [(p, self.build_create(group), [self.info.key_of(o) for o in group])
                for p, group in groups.items()]

    def delete_blocks(self, keys: Iterable[Any]) -> list[Block]:
        """A delete batch for a Redis Cluster: one MULTI block per partition (every key
        checked before any block is built)."""
        info = self.info
        groups: dict[int, list[Any]] = {}
        for key in [info.check_key(k) for k in keys]:
            groups.setdefault(self.locate(key)[1], []).append(key)
        return [(p, self.build_delete(group), group) for p, group in groups.items()]

    @staticmethod
    def block_units(blocks: Sequence[Block], slots: Sequence[int]) -> list[Unit]:
        return [Unit(slots[p], request.payload, request.nreplies) for p, request, _ in blocks]

    def blocks_outcome(self, blocks: Sequence[Block], results: Sequence[list[Any] | BaseException],
                       wait_replicas: int) -> BlocksOutcome:
        """What the nodes did with each block (``results``: each block's replies, WAIT's
        last when ``wait_replicas``, or its node's error)."""
        out = BlocksOutcome(sum(request.records for _, request, _ in blocks),
                            sum(len(keys) for _, _, keys in blocks), fewest=wait_replicas)
        for (_, _, keys), result in zip(blocks, results, strict=True):
            if not isinstance(result, BaseException):
                waited = result.pop() if wait_replicas else None
                try:
                    self.check_block_replies(result)
                    out.written += keys
                    if wait_replicas and (not isinstance(waited, int) or waited < wait_replicas):
                        out.unreplicated += keys
                        out.fewest = min(out.fewest, waited if isinstance(waited, int) else 0)
                    continue
                except KvfastError as exc:
                    result = exc
            out.first = out.first or result
            if isinstance(result, WriteOutcomeUnknown):
                out.unknown += keys
        return out

    def build_delete(self, keys: Iterable[Any]) -> Request:
        """Validate and pack a delete batch (no I/O)."""
        info = self.info
        t_us = codec.now_us()
        normalized = [info.check_key(k) for k in keys]
        queues = self.keys.queues
        if not normalized:
            return Request(b"", 0, 0)
        commands: list[bytes] = [_MULTI]
        entries: dict[int, list[bytes]] = {}
        for key in normalized:
            wire_key, p, obj_key = self.locate(key)
            # The tombstone keeps a pending delete from reading through to the
            # old PostgreSQL row; ack.lua removes it once the delete has drained.
            tomb_id = secrets.token_hex(8)
            commands.append(_pack(("DEL", obj_key)))
            commands.append(_pack(("HSET", obj_key, TOMBSTONE_FIELD, tomb_id)))
            entry = codec.encode_delete(self.table, wire_key, tomb_id, t_us)
            entries.setdefault(p, []).append(entry)
        _close_block(commands, entries, queues)
        return Request(b"".join(commands), len(commands), len(normalized))

    def build_update(self, changes: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[Call]:
        """Validate partial updates into update.lua calls (no I/O)."""
        info = self.info
        t_us = codec.now_us()
        by_name = info.by_name
        prepared: list[Call] = []
        id_prefix = secrets.token_hex(6)
        indexes = info.indexes
        for i, (key, fields) in enumerate(changes):
            key = info.check_key(key)
            checked = info.check_changes(fields)
            wire_key, p, obj_key = self.locate(key)
            sets: list[tuple[str, Any]] = []
            nulls: list[str] = []
            wire: dict[str, Any] = {}
            index_sets: list[bytes] = []
            for name, value in checked.items():
                ftype = by_name[name].ftype
                if value is None:
                    nulls.append(name)
                    wire[name] = None
                else:
                    sets.append((name, ftype.to_hash(value)))
                    wire[name] = value if ftype.wire_is_value else ftype.to_wire(value)
                    if name in indexes and self.index_prefixes is not None:
                        index_sets.append(self.index_prefixes[p][indexes.index(name)]
                                          + ftype.hash_bytes(value))
            write_id = f"{id_prefix}{i:x}" if self.ttl else None
            entry = codec.encode_write(self.table, codec.OP_UPDATE, wire_key, wire, t_us,
                                       self.version, write_id)
            prepared.append(Update.call(obj_key, self.keys.queues[p], TOMBSTONE_FIELD,
                                        write_id, entry, sets, nulls,
                                        index_sets, obj_key[len(self._obj_prefix[p]):]))
        return prepared

    def build_hydrate(self, rows: Sequence[tuple[Any, list[Any]]]) -> list[Call]:
        """hydrate.lua calls for (key, row values in field order) read from PostgreSQL."""
        prepared: list[Call] = []
        indexes = self.info.indexes
        for key, values in rows:
            _, p, obj_key = self.locate(key)
            pairs = [(name, ftype.to_hash(value))
                     for (name, ftype, _), value in zip(self._codecs, values, strict=True)
                     if value is not None]
            index_sets: list[bytes] = []
            if self.index_prefixes is not None:
                for slot, name in enumerate(indexes):
                    f = self.info.by_name[name]
                    if values[f.index] is not None:
                        index_sets.append(self.index_prefixes[p][slot]
                                          + f.ftype.hash_bytes(values[f.index]))
            prepared.append(Hydrate.call(obj_key, self.ttl, pairs, index_sets,
                                         obj_key[len(self._obj_prefix[p]):] if indexes else ""))
        return prepared


class Producer(WriteBuilder):
    """Sends the batches of one model over the client's Redis connection pool."""

    def __init__(self, client: Client, info: ModelInfo) -> None:
        super().__init__(client.keys, info)
        self.client = client
        self._recorded = False
        self._record_retry_at = 0.0

    def record_indexes(self) -> None:
        """Once, before the first write: the model's indexes recorded unless something
        is (``kvfast.indexmeta``: a supervisor started later sees them recorded)."""
        if self._recorded or time.monotonic() < self._record_retry_at:
            return
        try:
            record_first(self.client, self.info)
        except ConnectionFailed:
            # On a cluster the meta hash may live on a node that is away while the
            # write's own nodes answer: the write goes ahead (with its own outcome,
            # e.g. PartialWrite); the record is tried again by a later write.
            if self.client.topology is None:
                raise
            self._record_retry_at = time.monotonic() + _RECORD_RETRY_S
            return
        self._recorded = True

    def create(self, objs: Iterable[Any]) -> int:
        client = self.client
        if client.topology is not None:
            with gc_paused():
                blocks = self.create_blocks(objs)
            return self._recorded_after(self._send_blocks(blocks))
        wait = client.wait_command
        if wait:  # WAIT rides at the end of the batch's own payload (same connection)
            objs = list(objs)
            if not objs:
                return 0
            pieces: Iterable[Piece] = itertools.chain(self.create_pieces(objs),
                                                      [Piece(wait, 1, 0, False)])
        else:
            pieces = self.create_pieces(objs)
        with gc_paused():
            replies, records = client.execute_pieces(self._recorded_first(pieces))
        if wait:
            waited = replies.pop()
            self._check(replies)
            client.check_wait(waited, lambda: [self.info.key_of(o) for o in objs],
                              f"{self.info.name} create")
        else:
            self._check(replies)
        return records

    def _recorded_after(self, written: int) -> int:
        """On a cluster the indexes are recorded after a write succeeded (best effort,
        see ``record_indexes``): a record sent before it to a node that does not answer
        would delay every block past the cluster's failover timeout."""
        if written:
            self.record_indexes()
        return written

    def _recorded_first(self, pieces: Iterable[Piece]) -> Iterator[Piece]:
        """``pieces``, the indexes recorded once the first is encoded (a batch whose first
        records are refused sends nothing, not even the record)."""
        it = iter(pieces)
        first = next(it, None)
        if first is None:
            return
        self.record_indexes()
        yield first
        yield from it

    def delete(self, keys: Iterable[Any]) -> int:
        client = self.client
        if client.topology is not None:
            return self._recorded_after(self._send_blocks(self.delete_blocks(keys)))
        keys = list(keys)
        with gc_paused():
            request = self.build_delete(keys)
        if request.records:
            self.record_indexes()
            wait = client.wait_command
            replies = client.execute(request.payload + wait, request.nreplies + bool(wait))
            waited = replies.pop() if wait else None
            self._check(replies)
            if wait:
                client.check_wait(waited, lambda: keys, f"{self.info.name} delete")
        return request.records

    def _send_blocks(self, blocks: list[Block]) -> int:
        """One MULTI block per partition, each to the node of its slot, all at once.

        A node that fails leaves the other nodes' blocks written: ``PartialWrite``
        then names exactly the keys written (and those whose outcome is unknown)."""
        client = self.client
        client.check_partitions()
        topology = client.topology
        assert topology is not None
        need = client.settings.wait_replicas
        results = client.send_units(self.block_units(blocks, topology.partition_slots),
                                    bool(need))
        outcome = self.blocks_outcome(blocks, results, need)
        if isinstance(outcome.first, RedisFull):
            full = client.full(outcome.first)
            full.__cause__ = outcome.first.__cause__
            outcome.first = full
        return outcome.settle(client.settings, self.info.name)

    def _check(self, replies: list[Any]) -> None:
        try:
            self.check_block_replies(replies)
        except RedisFull as exc:
            raise self.client.full(exc) from exc.__cause__

    def update(self, changes: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[int]:
        """Apply partial updates; returns update.lua's status per change (1, 0, -1)."""
        replies = self.client.eval_many(Update.name, self.build_update(changes),
                                        wait_keys=[key for key, _ in changes])
        return [Update.decode(r) for r in replies]

    def hydrate(self, rows: Sequence[tuple[Any, list[Any]]]) -> list[int]:
        """Load rows read from PostgreSQL into Redis where Redis has nothing."""
        replies = self.client.eval_many(Hydrate.name, self.build_hydrate(rows),
                                        wait_keys=[key for key, _ in rows])
        return [Hydrate.decode(r) for r in replies]

