"""Every Redis key kvfast uses, in one place.

Layout for namespace ``ns`` and partition ``p`` (``{ns:p}`` is the hash tag, so
an object, its partition's queue and the drain bookkeeping share one Redis
Cluster slot and every script touches one slot only)::

    {ns:p}:o:<table>:<key>   hash   the object; NULL fields are absent; ':' and '%'
                                    in the table name are %-escaped, so the table
                                    part ends at the first ':' (table "a", key "b:c"
                                    and table "a:b", key "c" are different objects);
                                    a tombstone holds only TOMBSTONE_FIELD
    {ns:p}:q                 list   queue of entries waiting to drain (RPUSH/LPOP)
    {ns:p}:f                 list   the in-flight batch (entries being applied)
    {ns:p}:fm                hash   in-flight metadata: owner, epoch, deadline (ms)
    {ns:p}:e                 string last epoch handed out for this partition (INCR)
    {ns:p}:d                 list   dead letters (JSON: entry, error, time)
    {ns:p}:s                 hash   counters: drained, dead (now in :d), purged
    {ns:p}:h                 hash   held tables: "t:<table>" → why (JSON), "next" → ms
    {ns:p}:h:<table>         list   a held table's entries, in queue order (kvfast.holds)
    {ns:p}:x:<table>:<field>:<value>
                             set    secondary index (kvfast.index): the keys (as in
                                    the object's name) of the partition's objects
                                    written with that value of the indexed field;
                                    <value> is the field's hash encoding, table and
                                    field %-escaped; members may be stale (moved,
                                    deleted, expired): find drops those (prune.lua)
    ns:meta                  hash   partitions (fixed once data exists), layout,
                                    "x:<table>" → the indexed fields the table's
                                    index sets were built for (kvfast.index)

``<key>`` is ``key_string(key)``: a key's text (``str(key)``), or a composite
key's parts %-escaped like the table and joined by ':' (``(7, "a:b")`` is
``7:a%3Ab``, so ``("a:b", "c")`` and ``("a", "b:c")`` are different objects).
Queue entries carry ``key_wire(key)``: the key itself as JSON (a UUID as its
text), a composite key as a JSON array of its parts; ``key_string`` of either
form gives the same text, so a process without the model (the requeue tool)
names the same hash.

Partitions are chosen by ``ModelInfo.partition_of`` (crc32 of ``table NUL key``).

The tag of partition ``p`` is ``{ns:p}``, or ``{ns:p:k}`` with the smallest ``k``
that puts it in the ``p``-th of ``partitions`` equal slot ranges
(``partition_tags``): the partitions' Redis Cluster slots are then evenly spaced,
so any number of masters with equal slot ranges serves an equal share of them
(``{ns:p}`` alone lands on correlated slots: the busiest of 10 masters had 1.41x
its share of 64 partitions).  Up to 1,024 partitions; more keep ``{ns:p}``, whose
spread is even enough at that count.
``ns:meta`` also records ``layout`` (this layout's version): a process that
would read another layout refuses to start instead of missing every object.
"""

from __future__ import annotations

import binascii
import functools
from typing import Any

__all__ = [
    "LAYOUT_VERSION", "MAX_KEY_BYTES", "SLOTS", "WRITE_FIELD", "Keys", "escape_table",
    "key_string", "key_wire", "partition_tags",
]

#: bump when key names or the partition function change (3: evenly spaced tags)
LAYOUT_VERSION = 3
#: Redis Cluster's slot count
SLOTS = 16384
#: above this many partitions the tags are not spread (a search of ~N tries each)
SPREAD_MAX_PARTITIONS = 1024
#: hash field of an object of a model with a TTL: the id of its last write.  ack.lua
#: gives the object its TTL only while the field still holds the id of the write it
#: acks (a newer write, not yet drained, keeps the object without a TTL).
WRITE_FIELD = "__kvfast_write"
#: the longest key (UTF-8 bytes) the producer accepts: PostgreSQL's btree refuses
#: an index row over ~2704 bytes (a third of an 8 kB page), so a longer primary key
#: would be accepted by Redis and refused at drain time (54000 program limit
#: exceeded).  2,000 leaves room for the row header and a composite key's parts.
MAX_KEY_BYTES = 2000


class Keys:
    """Key names for one namespace and partition count (strings are precomputed)."""

    def __init__(self, namespace: str, partitions: int) -> None:
        self.namespace = namespace
        self.partitions = partitions
        self.tags = [f"{{{tag}}}" for tag in partition_tags(namespace, partitions)]
        self._obj_prefix = [f"{t}:o:" for t in self.tags]
        self.queues = [f"{t}:q" for t in self.tags]
        self.inflight = [f"{t}:f" for t in self.tags]
        self.inflight_meta = [f"{t}:fm" for t in self.tags]
        self.epochs = [f"{t}:e" for t in self.tags]
        self.dead = [f"{t}:d" for t in self.tags]
        self.counters = [f"{t}:s" for t in self.tags]
        self.holds = [f"{t}:h" for t in self.tags]
        self.meta = f"{namespace}:meta"

    def obj(self, partition: int, table: str, key_str: str) -> str:
        return f"{self._obj_prefix[partition]}{escape_table(table)}:{key_str}"

    def index_prefix(self, partition: int, table: str, field: str) -> bytes:
        """The index set name of ``field`` in ``partition`` without its value (bytes:
        the value is appended as its hash encoding, which may be any bytes)."""
        return f"{self.tags[partition]}:x:{escape_table(table)}:{escape_table(field)}:".encode()

    def table_pattern(self, kind: str, table: str) -> str:
        """A SCAN pattern, all partitions, for ``table``'s objects (kind "o") or index
        sets ("x")."""
        return (f"{{{_glob_escape(self.namespace)}:*}}:{kind}:"
                f"{_glob_escape(escape_table(table))}:*")

    def partition_in(self, name: bytes) -> int:
        """The partition of a key name read back (``{ns:p}:…`` or ``{ns:p:k}:…``)."""
        return int(name[len(self.namespace) + 2 : name.index(b"}")].split(b":", 1)[0])

    def held(self, partition: int, table: str) -> str:
        """The held list of ``table`` in ``partition`` (see kvfast.holds)."""
        return f"{self.holds[partition]}:{escape_table(table)}"

    def obj_pattern(self, partition: int | None = None) -> str:
        """A SCAN pattern for object hashes (all partitions when None)."""
        if partition is None:
            return f"{{{_glob_escape(self.namespace)}:*}}:o:*"
        return f"{_glob_escape(self.tags[partition])}:o:*"


@functools.cache
def partition_tags(namespace: str, partitions: int) -> tuple[str, ...]:
    """The hash tag (without braces) of each partition: see the module docstring.

    A pure function of its arguments, so every process derives the same names;
    about 4 ms for 64 partitions, cached per process."""
    if partitions > SPREAD_MAX_PARTITIONS:
        return tuple(f"{namespace}:{p}" for p in range(partitions))
    out = []
    for p in range(partitions):
        low, high = p * SLOTS // partitions, (p + 1) * SLOTS // partitions
        tag = f"{namespace}:{p}"
        k = 0
        while not low <= binascii.crc_hqx(tag.encode(), 0) % SLOTS < high:
            tag = f"{namespace}:{p}:{k}"
            k += 1
        out.append(tag)
    return tuple(out)


def escape_table(table: str) -> str:
    return table.replace("%", "%25").replace(":", "%3A")


def key_string(key: Any) -> str:
    """A key's text in object names (see the module docstring): a normalized key
    (a tuple for a composite one) or its ``key_wire`` form (a list)."""
    if type(key) is tuple or type(key) is list:
        return ":".join(escape_table(str(part)) for part in key)
    return str(key)


def key_wire(key: Any) -> Any:
    """A normalized key as queue entries carry it: an int as itself, a str or UUID
    as text, a composite key as a list of those."""
    if type(key) is tuple:
        return [part if type(part) is int else str(part) for part in key]
    return key if type(key) is int else str(key)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\{}" else c for c in text)
