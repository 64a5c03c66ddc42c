"""The wire layer without servers: error translation, reply classification, the typed
script wrappers and the dead-letter document; and the dead-letter tool's functions
translating a Redis that is away."""

from __future__ import annotations

from typing import Any

import hiredis
import orjson
import psycopg
import pytest
import redis

import kvfast
from kvfast import deadletter, deadletters
from kvfast.drivers import pg_errors, redis_errors
from kvfast.holds import Hold
from kvfast.keys import WRITE_FIELD, Keys
from kvfast.resp import reply_exception
from kvfast.scripts import (
    Ack,
    Claim,
    HoldAction,
    Hydrate,
    Prune,
    Rebase,
    Renew,
    Requeue,
    Update,
    source,
)

SECRET = "s3cr3t-Pw"
SETTINGS = kvfast.Settings(redis_url=f"redis://:{SECRET}@127.0.0.1:1/0",
                           pg_dsn=f"postgresql://app:{SECRET}@127.0.0.1:1/app", partitions=4)


def _raise(exc: BaseException) -> None:
    raise exc


REDIS_CASES = [
    (redis.ConnectionError(f"Error 111 connecting with {SECRET}"), kvfast.RedisUnavailable),
    (redis.TimeoutError("Timeout reading"), kvfast.RedisUnavailable),
    (redis.BusyLoadingError("LOADING Redis is loading"), kvfast.RedisUnavailable),
    (ConnectionResetError("reset"), kvfast.RedisUnavailable),
    (hiredis.ProtocolError("bad reply"), kvfast.RedisUnavailable),
    (redis.ReadOnlyError("READONLY You can't write against a replica"), kvfast.RedisUnavailable),
    (redis.ResponseError("MASTERDOWN Link with MASTER is down"), kvfast.RedisUnavailable),
    (redis.ResponseError("WRONGTYPE Operation against a key"), kvfast.RedisCommandError),
    (redis.ResponseError("OOM command not allowed"), kvfast.RedisCommandError),
    (redis.DataError("Invalid input"), kvfast.RedisCommandError),
]
PG_CASES = [
    (psycopg.OperationalError(f"connection failed: password {SECRET}"),
     kvfast.PostgresUnavailable),
    (psycopg.InterfaceError("the connection is closed"), kvfast.PostgresUnavailable),
    (psycopg.errors.UndefinedTable('relation "t" does not exist'), kvfast.SchemaMismatch),
    (psycopg.errors.UndefinedColumn('column "c" does not exist'), kvfast.SchemaMismatch),
    (psycopg.errors.UniqueViolation("duplicate key"), kvfast.PostgresQueryError),
    (psycopg.ProgrammingError("syntax"), kvfast.PostgresQueryError),
]


@pytest.mark.parametrize(
    ("translate", "driver_error", "leaf"),
    [(redis_errors, *case) for case in REDIS_CASES] + [(pg_errors, *case) for case in PG_CASES],
)
def test_driver_errors_become_leaves_most_specific_first_with_the_cause_and_no_password(
    translate: Any, driver_error: BaseException, leaf: type[kvfast.KvfastError]
) -> None:
    with pytest.raises(leaf) as excinfo, translate(SETTINGS):
        _raise(driver_error)
    assert type(excinfo.value) is leaf
    assert excinfo.value.__cause__ is driver_error
    assert SECRET not in str(excinfo.value)


def test_kvfast_errors_and_foreign_errors_pass_the_tables_untouched() -> None:
    error = kvfast.ValidationError("M", "f", 1, "bad")
    with pytest.raises(kvfast.ValidationError) as excinfo, redis_errors(SETTINGS):
        _raise(error)
    assert excinfo.value is error
    with pytest.raises(KeyError), pg_errors(SETTINGS):
        _raise(KeyError("not a driver error"))


@pytest.mark.parametrize("prefix", ["LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN",
                                    "CLUSTERDOWN"])
def test_cannot_serve_now_replies_are_redis_unavailable(prefix: str) -> None:
    leaf = reply_exception(hiredis.ReplyError(f"{prefix} try later"), "claim.lua", "redis://h")
    assert isinstance(leaf, kvfast.RedisUnavailable)
    assert "redis://h" in str(leaf)


def test_other_error_replies_are_command_errors_naming_the_call() -> None:
    leaf = reply_exception(hiredis.ReplyError("ERR user_script:1: boom"), "claim.lua")
    assert isinstance(leaf, kvfast.RedisCommandError)
    assert str(leaf) == "Redis refused claim.lua: ERR user_script:1: boom"


# -- the typed script wrappers ---------------------------------------------------------


def test_claim_from_reply_maps_groups_back_to_partitions() -> None:
    order = [5, 6, 7, 0]
    hold = b'{"kind":"table","reason":"42703 boom","since":1.5,"tries":2}'
    reply = [2, 1, 10, 0, 2, 0, 3, 11, 1, 1, 2, b"e1", b"e2", b"e3",
             b"t:rides", hold, b"next", b"1234"]
    claim = Claim.from_reply(reply, order)
    assert claim is not None
    assert [(p.partition, p.epoch, p.retaken, p.entries) for p in claim.parts] == [
        (6, 10, False, [b"e1", b"e2"]), (0, 11, True, [b"e3"])]
    assert claim.parts[0].holds == {} and claim.parts[0].holds_next is None
    assert claim.parts[1].holds_next == 1234
    assert claim.parts[1].holds == {"rides": Hold("rides", "table", "42703 boom", 1.5, 2)}
    assert claim.entries == [b"e1", b"e2", b"e3"]
    assert Claim.from_reply(None, order) is None


def test_each_wrapper_builds_the_keys_and_argv_its_script_documents() -> None:
    keys = Keys("ns", 8)
    T = keys.tags  # partition tags are not {ns:p} (keys.partition_tags)
    ks, args = Claim.call(keys, [3, 4], "me", 2000, 500)
    assert ks == [T[3] + ":q", T[3] + ":f", T[3] + ":fm", T[3] + ":e", T[3] + ":h",
                  T[4] + ":q", T[4] + ":f", T[4] + ":fm", T[4] + ":e", T[4] + ":h"]
    assert args == ["me", 2000, 500, "0"]
    assert Claim.call(keys, [3], "me", 2000, 500, recover=True)[1] == ["me", 2000, 500, "1"]
    # on a cluster node: the first group declared, the others in ARGV
    ks, args = Claim.call(keys, [3, 4], "me", 2000, 500, one_slot=True)
    assert ks == [T[3] + ":q", T[3] + ":f", T[3] + ":fm", T[3] + ":e", T[3] + ":h"]
    assert args == ["me", 2000, 500, "0",
                    T[4] + ":q", T[4] + ":f", T[4] + ":fm", T[4] + ":e", T[4] + ":h"]
    ks, args = Ack.call(keys, 2, "me", 9, "_tomb", 5, [b"d1"], [T[2] + ":o:t:1"], ["id1"],
                        [HoldAction("rides", 3, [b"e9"], b"{}")], 500,
                        [(T[2] + ":o:t:7", 60, "w1")])
    assert ks == [T[2] + ":f", T[2] + ":fm", T[2] + ":d", T[2] + ":s", T[2] + ":h", T[2] + ":o:t:1",
                  T[2] + ":h:rides", T[2] + ":o:t:7"]
    assert args == ["me", 9, "_tomb", 5, 1, 1, 1, WRITE_FIELD, 500, b"d1", "id1",
                    "t:rides", 3, b"{}", 1, b"e9", 60, "w1"]
    assert Renew.call(keys, 1, "me", 3, 2000) == ([T[1] + ":fm"], ["me", 3, 2000])
    assert Rebase.call(keys, 1, "me", 3, 40) == ([T[1] + ":fm", T[1] + ":e"], ["me", 3, 40])
    assert Requeue.call(keys, 1, [(b"doc", b"entry")]) == (
        [T[1] + ":d", T[1] + ":q", T[1] + ":s"], [b"doc", b"entry"])
    assert Update.call("o", "q", "_tomb", None, b"e", [("a", "1")], ["b"]) == (
        ["o", "q"], ["_tomb", "", "", b"e", 1, "", "a", "1", "b"])
    assert Update.call("o", "q", "_tomb", "w7", b"e", [], ["b"]) == (
        ["o", "q"], ["_tomb", WRITE_FIELD, "w7", b"e", 0, "", "b"])
    assert Update.call("o", "q", "_tomb", None, b"e", [("a", "1")], [], [b"x:a:1"], "7") == (
        ["o", "q", b"x:a:1"], ["_tomb", "", "", b"e", 1, "7", "a", "1"])
    assert Prune.call(b"{ns:1}:o:t:", "_tomb", [("a", b"1")], [b"{ns:1}:x:t:a:1"], [b"7"]) == (
        [b"{ns:1}:x:t:a:1"], [b"{ns:1}:o:t:", "_tomb", "a", b"1", b"7"])
    assert Hydrate.call("o", 60, [("a", "1")]) == (["o"], ["60", "", "a", "1"])
    assert Hydrate.call("o", 0, [("a", "1")], [b"x:a:1"], "7") == (
        ["o", b"x:a:1"], ["0", "7", "a", "1"])
    for wrapper in (Claim, Ack, Renew, Rebase, Requeue, Update, Hydrate, Prune):
        assert f"\n-- {wrapper.name}.lua: ".encode() in b"\n" + source(wrapper.name)


# -- the dead-letter document ----------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"m":"t_rides","o":"c","k":1}', b"\xff\xfe not utf-8"])
def test_a_dead_letter_document_reads_back_as_written(raw: bytes) -> None:
    doc = deadletters.document(raw, "row rejected: boom", 3, "host:1:ab", now=12.5)
    letter = deadletters.parse(3, 0, doc)
    assert letter.raw == doc and letter.ident == "3:0"
    assert letter.error == "row rejected: boom"
    assert letter.entry_bytes == raw
    assert letter.doc["partition"] == 3 and letter.doc["drainer"] == "host:1:ab"
    assert letter.doc["time"] == 12.5
    utf8 = raw.decode("utf-8", errors="strict") if raw.isascii() else None
    assert letter.entry == (raw if utf8 is not None else None)  # only UTF-8 is requeued
    assert letter.model == ("t_rides" if utf8 is not None else None)


def test_an_unreadable_dead_letter_still_lists() -> None:
    letter = deadletters.parse(0, 4, b"not json")
    assert letter.error == "unreadable dead letter" and letter.entry is None
    assert deadletters.parse(0, 0, orjson.dumps([1, 2])).doc == {}


def test_the_dead_letter_functions_report_an_absent_redis_as_unavailable() -> None:
    with kvfast.Client(SETTINGS) as client:
        # A real entry: requeue skips one that does not decode without touching Redis.
        entry = b'{"v":1,"m":"t_rides","o":"c","k":1,"f":{"id":1},"t":1}'
        letter = deadletters.parse(0, 0, deadletters.document(entry, "x", 0, "me"))
        for call in (lambda: deadletter.count(client),
                     lambda: list(deadletter.iter_dead(client)),
                     lambda: deadletter.requeue(client, [letter]),
                     lambda: deadletter.purge(client, [letter])):
            with pytest.raises(kvfast.RedisUnavailable) as excinfo:
                call()
            assert SECRET not in str(excinfo.value)
