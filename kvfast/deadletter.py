"""``python -m kvfast.deadletter``: list, show, requeue and purge dead letters.

A dead letter is a JSON document in its partition's list ``{ns:p}:d``::

    {"entry": "<the queue entry>", "error": "<why>", "partition": p, "time": …, "drainer": …}

(``entry_b64`` instead of ``entry`` when the bytes were not UTF-8; written and
read by ``kvfast.deadletters``).

``requeue`` (e.g. after fixing the table) does not push the old entry back: the
key may have been written again since, and the old entry, drained after those
newer writes, would take PostgreSQL back to an older state than Redis.  It
pushes a *resync* of the key instead, at the tail of its partition's queue: the
drainer that takes it applies the key's current Redis hash (the whole object;
nothing for a key deleted since, whose delete drains on its own; a delete for a
dead-lettered delete whose key is still absent).  PostgreSQL then holds a state
Redis really had, never an older one, however often the key was written since.
Dead letters whose bytes are not a queue entry this kvfast reads stay where
they are (reported): pushed back they would only die again, or, if a newer
kvfast wrote them, be applied out of order; inspect them with ``show`` and
``purge`` them.  ``purge`` deletes; it asks first unless ``--yes``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson

from kvfast import codec
from kvfast.client import Client
from kvfast.deadletters import DeadLetter, parse
from kvfast.drivers import redis_errors
from kvfast.errors import DecodeError, KvfastError
from kvfast.keys import key_string
from kvfast.scripts import Requeue
from kvfast.settings import Settings

# DeadLetter (the document's reader, next to its writer) lives in kvfast.deadletters.
__all__ = ["DeadLetter", "Requeued", "count", "iter_dead", "main", "purge", "requeue",
           "resync_of"]


def count(client: Client) -> dict[int, int]:
    """Dead letters per partition (one pipelined LLEN per partition)."""
    keys = client.keys
    with redis_errors(client.settings):
        pipe = client.redis.pipeline(transaction=False)
        for p in range(keys.partitions):
            pipe.llen(keys.dead[p])
        lengths = pipe.execute()
    return {p: int(n) for p, n in enumerate(lengths) if n}


def iter_dead(
    client: Client, *, model: str | None = None, partition: int | None = None
) -> Iterator[DeadLetter]:
    keys = client.keys
    parts = range(keys.partitions) if partition is None else [partition]
    for p in parts:
        with redis_errors(client.settings):
            items: list[bytes] = client.redis.lrange(keys.dead[p], 0, -1)  # type: ignore[assignment]
        for i, raw in enumerate(items):
            dl = parse(p, i, raw)
            if model is None or dl.model == model:
                yield dl


@dataclass(frozen=True, slots=True)
class Requeued:
    """What ``requeue`` did: resyncs pushed, of how many keys, dead letters left alone."""

    resyncs: int
    keys: int
    #: not a queue entry kvfast reads: left in the dead-letter list
    skipped: int
    #: selected but gone meanwhile (another operator requeued or purged them)
    vanished: int

    def __str__(self) -> str:
        text = f"requeued {self.resyncs} dead letters as resyncs of {self.keys} keys"
        if self.skipped:
            text += (f"; {self.skipped} left dead-lettered: not a queue entry this kvfast "
                     "reads (see show, purge)")
        if self.vanished:
            text += f"; {self.vanished} gone meanwhile (requeued or purged by someone else)"
        return text


def resync_of(dl: DeadLetter, t_us: int) -> tuple[tuple[str, str], bytes] | None:
    """((table, key string), the resync entry) replacing ``dl``, None if its bytes are
    not a queue entry this kvfast reads."""
    entry = dl.entry_bytes
    if entry is None:
        return None
    try:
        table, op, key, _, _, _ = codec.check(codec.parse(entry))
    except DecodeError:
        return None
    # A resync of a dead-lettered delete (or a resync of one) keeps saying so.
    gone = op == codec.OP_DELETE or (op == codec.OP_RESYNC and
                                     codec.parse(entry).get("g") is True)
    return (table, key_string(key)), codec.encode_resync(table, key, t_us, gone=gone)


def requeue(client: Client, letters: Sequence[DeadLetter]) -> Requeued:
    """Replace each of ``letters`` by a resync of its key at the tail of its queue.

    Each document is removed and its resync pushed atomically (requeue.lua); one
    resync per dead letter keeps drained + dead = produced.
    """
    t_us = codec.now_us()
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    keys_of: dict[int, list[tuple[str, str]]] = {}
    skipped = 0
    for dl in letters:
        resync = resync_of(dl, t_us)
        if resync is None:
            skipped += 1
            continue
        by_partition.setdefault(dl.partition, []).append((dl.raw, resync[1]))
        keys_of.setdefault(dl.partition, []).append(resync[0])
    parts = list(by_partition)
    calls = [Requeue.call(client.keys, p, by_partition[p]) for p in parts]
    moved = [Requeue.decode(r) for r in client.eval_many(Requeue.name, calls)]
    # A partition whose documents all went meanwhile moved none of its keys; a
    # partial one is counted by its keys all the same (the report is a summary).
    keys = {k for p, n in zip(parts, moved, strict=True) if n for k in keys_of[p]}
    total = sum(moved)
    return Requeued(total, len(keys), skipped, len(letters) - skipped - total)


def purge(client: Client, letters: Sequence[DeadLetter]) -> int:
    """Delete ``letters``; the partition counters move them from ``dead`` to ``purged``."""
    keys = client.keys
    by_partition: dict[int, list[bytes]] = {}
    for dl in letters:
        by_partition.setdefault(dl.partition, []).append(dl.raw)
    removed = 0
    with redis_errors(client.settings):
        for p, raws in by_partition.items():
            pipe = client.redis.pipeline(transaction=False)
            for raw in raws:
                pipe.lrem(keys.dead[p], 1, raw)  # type: ignore[arg-type]
            n = sum(int(x) for x in pipe.execute())
            if n:
                client.redis.hincrby(keys.counters[p], "dead", -n)
                client.redis.hincrby(keys.counters[p], "purged", n)
            removed += n
    return removed


def _line(dl: DeadLetter, width: int = 100) -> str:
    error = str(dl.doc.get("error", "")).replace("\n", " ")
    key = dl.key
    head = f"{dl.ident:>8}  {dl.model or '?':<16} {'?' if key is None else repr(key):<12} "
    return (head + error)[:width]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvfast.deadletter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # The queue layout only: the tool needs no PostgreSQL.
    Settings.add_arguments(p, ("redis_url", "namespace", "partitions"))
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("list", "one line per dead letter, and counts"),
                       ("requeue", "re-sync each dead letter's key from its current "
                                   "Redis object (never the old entry: it could undo "
                                   "newer writes)"),
                       ("purge", "delete dead letters")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--model", help="only entries of this model (table name)")
        s.add_argument("--partition", type=int, help="only this partition")
        if name == "purge":
            s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if name == "list":
            s.add_argument("--limit", type=int, default=50, help="lines shown (default 50)")
    s = sub.add_parser("show", help="the whole document of one dead letter")
    s.add_argument("ident", help="PARTITION:INDEX as printed by list")
    sub.add_parser("count", help="dead letters per partition")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_args(args)
        with Client(settings) as client:
            client.check_partitions()
            return _run(client, args)
    except KvfastError as exc:
        print(f"kvfast.deadletter: {exc}", file=sys.stderr)
        return 2


def _run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "count":
        counts = count(client)
        for p, n in sorted(counts.items()):
            print(f"partition {p}: {n}")
        print(f"total: {sum(counts.values())}")
        return 0
    if args.command == "show":
        try:
            p_text, i_text = args.ident.split(":", 1)
            with redis_errors(client.settings):
                raw = client.redis.lindex(client.keys.dead[int(p_text)], int(i_text))
        except (ValueError, IndexError):
            print(f"kvfast.deadletter: bad id {args.ident!r}: use PARTITION:INDEX", file=sys.stderr)
            return 2
        if raw is None:
            print(f"kvfast.deadletter: no dead letter {args.ident}", file=sys.stderr)
            return 1
        sys.stdout.write(orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0
    letters = list(iter_dead(client, model=args.model, partition=args.partition))
    if args.command == "list":
        for dl in letters[: args.limit]:
            print(_line(dl))
        more = len(letters) - args.limit
        print(f"{len(letters)} dead letters" + (f" ({more} not shown)" if more > 0 else ""))
        return 0
    if args.command == "requeue":
        print(requeue(client, letters))
        return 0
    if not letters:
        print("nothing to purge")
        return 0
    if not args.yes:
        try:
            answer = input(f"delete {len(letters)} dead letters for good? [y/N] ")
        except EOFError:  # no terminal to ask: the safe answer
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return 1
    print(f"purged {purge(client, letters)} dead letters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
