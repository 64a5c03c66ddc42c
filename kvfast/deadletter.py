"""``python -m kvfast.deadletter``: list, show, requeue and purge dead letters.

A dead letter is a JSON document in its partition's list ``{ns:p}:d``::

    {"entry": "<the queue entry>", "error": "<why>", "partition": p, "time": …, "drainer": …}

(``entry_b64`` instead of ``entry`` when the bytes were not UTF-8; written and
read by ``kvfast.deadletters``).  ``requeue``
puts entries back at the *tail* of their partition's queue, in the order they
failed, e.g. after fixing the table; an entry for a key written again since
then will be applied after that newer write, so filter with ``--model`` or
requeue soon.  ``purge`` deletes; it asks first unless ``--yes``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

import orjson

from kvfast.client import Client
from kvfast.deadletters import DeadLetter, parse
from kvfast.drivers import redis_errors
from kvfast.errors import KvfastError
from kvfast.scripts import Requeue
from kvfast.settings import Settings

# DeadLetter (the document's reader, next to its writer) lives in kvfast.deadletters.
__all__ = ["DeadLetter", "count", "iter_dead", "main", "purge", "requeue"]


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


def requeue(client: Client, letters: Sequence[DeadLetter]) -> int:
    """Move ``letters`` back to their queues (in order); returns how many moved."""
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for dl in letters:
        entry = dl.entry
        if entry is not None:  # garbage bytes would only be dead-lettered again
            by_partition.setdefault(dl.partition, []).append((dl.raw, entry))
    calls = [Requeue.call(client.keys, p, pairs) for p, pairs in by_partition.items()]
    return sum(Requeue.decode(r) for r in client.eval_many(Requeue.name, calls))


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
    head = f"{dl.ident:>8}  {dl.model or '?':<16} "
    return (head + error)[:width]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvfast.deadletter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # The queue layout only: the tool needs no PostgreSQL.
    Settings.add_arguments(p, ("redis_url", "namespace", "partitions"))
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("list", "one line per dead letter, and counts"),
                       ("requeue", "put dead letters back on their queues"),
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
        print(f"requeued {requeue(client, letters)} of {len(letters)} dead letters")
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
