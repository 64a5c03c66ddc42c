"""The write and read path against real Redis and PostgreSQL: create / update / delete /
get, atomicity, key layout, partitions, tombstones, read-through and TTL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import drainkeys
import psycopg
import pytest
import redis
import storeparams
from helpers import (
    all_entries,
    create_tables,
    differences,
    everything,
    everything_full,
    insert_row,
    obj_key,
    partition,
    queue_entries,
    queue_key,
    queue_lengths,
    snapshot,
)
from models import Account, Colon, ColonB, Everything, Session, Shade, Token
from redis.crc import key_slot

import kvfast
from kvfast.keys import Keys
from kvfast.model import TOMBSTONE_FIELD

# every case on one Redis and on the Redis Cluster (tests/storeparams.py)
store, r, settings = storeparams.both_stores()

Conn = psycopg.Connection[Any]
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def repo(pg: Conn, client: kvfast.Client) -> Iterator[kvfast.Repository[Everything]]:
    create_tables(pg, Everything)
    yield kvfast.Repository(Everything, client=client)


def repo_for(pg: Conn, client: kvfast.Client, model: type) -> kvfast.Repository[Any]:
    create_tables(pg, model)
    return kvfast.Repository(model, client=client)


def now_us() -> int:
    return time.time_ns() // 1000


# -- create and get ------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [everything, everything_full], ids=["required", "full"])
def test_create_then_get_returns_the_same_object(
    repo: kvfast.Repository[Everything], factory: Any
) -> None:
    obj = factory(1)
    repo.create(obj)
    got = repo.get_by_id(1)
    assert differences(obj, got) == []
    assert got == obj


def test_create_writes_the_hash_and_one_self_describing_queue_entry(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    before = now_us()
    repo.create(everything_full(7))
    after = now_us()
    key = obj_key(settings, Everything, 7)
    assert r.type(key) == b"hash"
    p = partition(settings, Everything, 7)
    assert queue_lengths(r, settings) == [1 if i == p else 0 for i in range(settings.partitions)]
    raw = json.loads(r.lindex(queue_key(settings, p), 0))
    assert raw["v"] == 1
    entry = all_entries(r, settings)[0]
    assert (entry.table, entry.op, entry.key) == ("t_everything", "c", 7)
    assert set(entry.fields) == set(kvfast.model_info(Everything).field_names)
    assert before <= entry.t_us <= after
    assert entry.tomb_id is None


def test_null_fields_are_absent_from_the_hash(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything(1))
    fields = {k.decode() for k in r.hkeys(obj_key(settings, Everything, 1))}
    required = {f for f in kvfast.model_info(Everything).field_names if f.startswith("n_")}
    assert fields == {"id", *required}
    entry = all_entries(r, settings)[0]
    assert entry.fields["o_str"] is None and entry.fields["o_int"] is None


def test_create_on_an_existing_key_replaces_the_whole_object(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything_full(1))
    replacement = everything(1, n_str="second", n_int=2)
    repo.create(replacement)
    got = repo.get_by_id(1)
    assert got == replacement
    assert got is not None and got.o_str is None and got.o_dict is None
    assert not any(k.startswith(b"o_") for k in r.hkeys(obj_key(settings, Everything, 1)))
    entries = all_entries(r, settings)
    assert [e.op for e in entries] == ["c", "c"]
    # The second entry carries every field, the Optional ones as NULL, so PostgreSQL
    # replaces the row exactly as Redis replaced the hash.
    assert set(entries[1].fields) == set(kvfast.model_info(Everything).field_names)
    assert all(entries[1].fields[f] is None for f in entries[1].fields if f.startswith("o_"))


def test_create_on_an_existing_key_replaces_a_pg_only_row_too(
    pg: Conn, repo: kvfast.Repository[Everything]
) -> None:
    insert_row(pg, everything_full(1))
    repo.create(everything(1, n_str="new"))
    assert repo.get_by_id(1) == everything(1, n_str="new")


def test_the_last_create_of_a_key_in_one_batch_wins(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    assert repo.create_many([everything(1, n_int=i) for i in range(5)]) == 5
    got = repo.get_by_id(1)
    assert got is not None and got.n_int == 4
    assert [e.fields["n_int"] for e in all_entries(r, settings)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("between", [0, 3, 300, 6000], ids=lambda n: f"{n}-records-between")
def test_a_repeated_key_in_one_batch_does_not_inherit_fields_of_its_first_copy(
    repo: kvfast.Repository[Everything], between: int
) -> None:
    """The second create of a key replaces the first, also inside one batch (and across
    the pieces a block is streamed in, and across the batch's transaction blocks)."""
    batch = [everything_full(1)]
    batch += [everything(k) for k in range(2, 2 + between)]
    batch.append(everything(1, n_str="second"))
    assert repo.create_many(batch) == len(batch)
    assert differences(everything(1, n_str="second"), repo.get_by_id(1)) == []
    if between:
        assert repo.get_by_id(1 + between) == everything(1 + between)


def test_get_many_keeps_order_and_reports_misses(
    pg: Conn, repo: kvfast.Repository[Everything]
) -> None:
    repo.create_many([everything(1), everything(3), everything(5, n_str="five")])
    insert_row(pg, everything(7, n_str="pg only"))
    insert_row(pg, everything(9))
    repo.create(everything(9))
    repo.delete(9)  # tombstone in Redis, row still in PostgreSQL
    assert repo.get_many([5, 2, 1, 7, 9, 3, 5, 10]) == [
        everything(5, n_str="five"),
        None,
        everything(1),
        everything(7, n_str="pg only"),
        None,
        everything(3),
        everything(5, n_str="five"),
        None,
    ]
    assert repo.get_many([]) == []
    assert repo.get_many(iter([3])) == [everything(3)]


def test_a_redis_only_repository_never_reads_postgresql(
    pg: Conn, settings: kvfast.Settings
) -> None:
    create_tables(pg, Everything)
    insert_row(pg, everything(1))
    redis_only = dataclasses.replace(settings, pg_dsn=None)
    with kvfast.Repository(Everything, redis_only) as repo:
        assert repo.get_by_id(1) is None
        with pytest.raises(kvfast.NotFound):
            repo.update(1, n_str="x")
        repo.create(everything(2))
        assert repo.get_many([1, 2]) == [None, everything(2)]


def test_repository_reads_its_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, pg: Conn, settings: kvfast.Settings
) -> None:
    create_tables(pg, Everything)
    insert_row(pg, everything(2))
    monkeypatch.setenv("KVFAST_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("KVFAST_PG_DSN", settings.pg_dsn or "")
    monkeypatch.setenv("KVFAST_PARTITIONS", str(settings.partitions))
    monkeypatch.setenv("KVFAST_NAMESPACE", "fromenv")
    with kvfast.Repository(Everything) as repo:
        assert repo.client.settings.namespace == "fromenv"
        repo.create(everything(1))
        assert repo.get_many([1, 2]) == [everything(1), everything(2)]
    explicit = dataclasses.replace(settings, namespace="fromenv")
    assert kvfast.Repository(Everything, explicit).get_by_id(1) == everything(1)


# -- update -----------------------------------------------------------------------------


def test_update_changes_only_the_given_fields_and_queues_them(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything_full(1))
    when = dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    repo.update(1, n_str="changed", o_int=None, n_datetime=when, o_dict={"new": [True]})
    expected = dataclasses.replace(
        everything_full(1), n_str="changed", o_int=None, n_datetime=when, o_dict={"new": [True]}
    )
    got = repo.get_by_id(1)
    assert differences(expected, got) == []
    assert b"o_int" not in r.hkeys(obj_key(settings, Everything, 1))
    create, update = all_entries(r, settings)
    assert (update.op, update.key, update.table) == ("u", 1, "t_everything")
    assert set(update.fields) == {"n_str", "o_int", "n_datetime", "o_dict"}
    assert update.fields["o_int"] is None
    assert update.t_us >= create.t_us


def test_update_many_takes_a_mapping_or_pairs(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create_many([everything(k) for k in range(1, 5)])
    assert repo.update_many({1: {"n_int": 10}, 2: {"n_int": 20}}) == 2
    assert repo.update_many([(3, {"n_int": 30}), (4, {"o_str": "four"}), (3, {"n_int": 31})]) == 3
    assert [o.n_int if o else None for o in repo.get_many([1, 2, 3, 4])] == [10, 20, 31, -42]
    assert repo.get_by_id(4) == everything(4, o_str="four")
    assert sum(queue_lengths(r, settings)) == 4 + 5


def test_update_of_a_key_in_neither_store_is_not_found_and_leaves_no_hash(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything(1))
    before = snapshot(r)
    with pytest.raises(kvfast.NotFound) as excinfo:
        repo.update(404, n_str="ghost")
    assert excinfo.value.keys == [404]
    assert excinfo.value.model == "Everything"
    assert "404" in str(excinfo.value)
    assert r.exists(obj_key(settings, Everything, 404)) == 0
    assert snapshot(r) == before
    assert repo.get_by_id(404) is None


def test_update_many_with_missing_keys_applies_the_others_and_names_the_missing(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create_many([everything(1), everything(2)])
    with pytest.raises(kvfast.NotFound) as excinfo:
        repo.update_many({1: {"n_int": 1}, 404: {"n_int": 2}, 2: {"n_int": 3}, 405: {"n_int": 4}})
    assert excinfo.value.keys == [404, 405]
    assert [o.n_int if o else None for o in repo.get_many([1, 2, 404, 405])] == [1, 3, None, None]
    assert r.exists(obj_key(settings, Everything, 404), obj_key(settings, Everything, 405)) == 0


def test_update_of_a_key_only_in_postgresql_loads_it_then_applies(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    insert_row(pg, everything_full(5))
    repo.update(5, n_str="after", o_bytes=None)
    expected = dataclasses.replace(everything_full(5), n_str="after", o_bytes=None)
    assert differences(expected, repo.get_by_id(5)) == []
    # The whole object is in Redis now, not just the changed fields.
    fields = {k.decode() for k in r.hkeys(obj_key(settings, Everything, 5))}
    assert fields == set(kvfast.model_info(Everything).field_names) - {"o_bytes"}
    # Only the update is queued: the row itself is already in PostgreSQL.
    (entry,) = all_entries(r, settings)
    assert (entry.op, entry.key, set(entry.fields)) == ("u", 5, {"n_str", "o_bytes"})


def test_update_of_a_deleted_key_is_not_found_though_postgresql_has_it(
    pg: Conn, r: redis.Redis, repo: kvfast.Repository[Everything]
) -> None:
    insert_row(pg, everything(6))
    repo.create(everything(6))
    repo.delete(6)
    before = snapshot(r)
    with pytest.raises(kvfast.NotFound):
        repo.update(6, n_str="resurrected?")
    assert snapshot(r) == before
    assert repo.get_by_id(6) is None


# -- delete -------------------------------------------------------------------------------


def test_delete_leaves_a_tombstone_that_hides_the_postgresql_row(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything(1))
    insert_row(pg, everything(1))  # as if the create had drained
    repo.delete(1)
    assert repo.get_by_id(1) is None
    assert repo.get_many([1]) == [None]
    tomb = r.hgetall(obj_key(settings, Everything, 1))
    assert list(tomb) == [TOMBSTONE_FIELD.encode()]
    create, delete = all_entries(r, settings)
    assert (delete.op, delete.key, delete.fields) == ("d", 1, {})
    assert delete.tomb_id is not None and delete.tomb_id.encode() == tomb[TOMBSTONE_FIELD.encode()]
    assert delete.t_us >= create.t_us


def test_create_after_delete_replaces_the_tombstone(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything(1))
    repo.delete(1)
    repo.create(everything(1, n_str="reborn"))
    assert repo.get_by_id(1) == everything(1, n_str="reborn")
    assert TOMBSTONE_FIELD.encode() not in r.hkeys(obj_key(settings, Everything, 1))
    assert [e.op for e in all_entries(r, settings)] == ["c", "d", "c"]


def test_delete_of_an_absent_key_is_queued_and_reads_as_missing(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    insert_row(pg, everything(8))  # in PostgreSQL only
    repo.delete(8)
    repo.delete(9)  # nowhere at all
    assert repo.get_many([8, 9]) == [None, None]
    assert [(e.op, e.key) for e in all_entries(r, settings)] in (
        [("d", 8), ("d", 9)],
        [("d", 9), ("d", 8)],  # different partitions: no order between them
    )


def test_delete_many_writes_every_tombstone_and_entry(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create_many([everything(k) for k in range(100)])
    assert repo.delete_many(range(0, 100, 2)) == 50
    assert sum(queue_lengths(r, settings)) == 150
    got = repo.get_many(range(100))
    assert [k for k, o in enumerate(got) if o is not None] == list(range(1, 100, 2))
    for k in range(0, 100, 2):
        assert r.hkeys(obj_key(settings, Everything, k)) == [TOMBSTONE_FIELD.encode()]


# -- keys that are not ints ---------------------------------------------------------------


def test_uuid_keys_work_in_redis_and_through_postgresql(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    repo = repo_for(pg, client, Token)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    when = dt.datetime(2031, 2, 3, tzinfo=dt.UTC)
    repo.create(Token(token=a, owner="alice", scopes=["read"], expires=when))
    insert_row(pg, Token(token=b, owner="bob", scopes=[]))
    assert repo.get_many([a, b, c]) == [
        Token(token=a, owner="alice", scopes=["read"], expires=when),
        Token(token=b, owner="bob", scopes=[]),
        None,
    ]
    assert r.exists(obj_key(settings, Token, a)) == 1
    repo.update(b, scopes=["write"])
    assert repo.get_by_id(b) == Token(token=b, owner="bob", scopes=["write"])
    repo.delete(a)
    assert repo.get_by_id(a) is None
    keys = [(e.op, e.key) for e in all_entries(r, settings)]
    assert sorted(keys) == sorted([("c", str(a)), ("u", str(b)), ("d", str(a))])


@pytest.mark.parametrize(
    "name", ["", "plain", "ünïcödé ✓", "with:colons:", "{brace}", "}{", "a b\tc\n", "x" * 1000]
)
def test_str_keys_work_in_redis_and_through_postgresql(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client, name: str
) -> None:
    repo = repo_for(pg, client, Account)
    obj = Account(name=name, balance=Decimal("10.50"), active=True, shade=Shade.DARK)
    repo.create(obj)
    assert repo.get_by_id(name) == obj
    assert r.exists(obj_key(settings, Account, name)) == 1
    r.delete(obj_key(settings, Account, name))
    insert_row(pg, obj)
    assert repo.get_by_id(name) == obj  # read through PostgreSQL
    repo.update(name, active=False)
    assert repo.get_by_id(name) == dataclasses.replace(obj, active=False)


# -- layout: hash tags, slots, partitions ---------------------------------------------------


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cluster_slot(key: bytes) -> int:
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % 16384


def test_own_slot_function_agrees_with_redis_py() -> None:
    assert crc16(b"123456789") == 0x31C3
    for key in (b"{kvfast:3}:q", b"foo", b"{}x", b"a{b}c", b"{user1000}.following"):
        assert cluster_slot(key) == key_slot(key)


def test_object_and_queue_share_a_hash_tag_and_a_slot(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    everything_repo = repo_for(pg, client, Everything)
    account_repo = repo_for(pg, client, Account)
    everything_repo.create_many([everything(k) for k in range(-50, 50)])
    names = ["{evil}", "}", "{", "a{b}c", "x:y", "ü"]
    account_repo.create_many([Account(name=n, balance=Decimal(1), active=True) for n in names])
    written = [(Everything, k) for k in range(-50, 50)] + [(Account, n) for n in names]
    for model, key in written:
        p = partition(settings, model, key)
        tag = drainkeys.tag(settings, p)
        okey = obj_key(settings, model, key)
        assert okey.startswith(tag + ":o:")
        assert r.exists(okey) == 1, okey
        qkey = queue_key(settings, p).encode()
        assert cluster_slot(okey.encode()) == cluster_slot(qkey) == key_slot(qkey)
        assert key_slot(okey.encode()) == key_slot(tag.encode())
    # Every queue entry sits in the queue of its own object's partition.
    for p, entries in queue_entries(r, settings).items():
        for e in entries:
            model = Everything if e.table == "t_everything" else Account
            assert partition(settings, model, e.key) == p


def test_every_per_partition_key_shares_the_partition_slot(settings: kvfast.Settings) -> None:
    keys = Keys(settings.namespace, settings.partitions)
    slots = set()
    for p in range(settings.partitions):
        group = [keys.queues[p], keys.inflight[p], keys.inflight_meta[p], keys.epochs[p],
                 keys.dead[p], keys.counters[p], keys.obj(p, "t_everything", "1")]
        assert len({key_slot(k.encode()) for k in group}) == 1, group
        slots.add(key_slot(keys.queues[p].encode()))
    assert len(slots) == settings.partitions  # partitions spread over distinct slots


def test_create_many_across_partitions_writes_every_hash_with_its_entry(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    n = 500
    keys = [k * 7919 for k in range(n)]
    assert repo.create_many(everything(k) for k in keys) == n
    lengths = queue_lengths(r, settings)
    assert sum(lengths) == n
    assert all(length > 0 for length in lengths)  # every partition got some
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.exists(obj_key(settings, Everything, k))
    assert pipe.execute() == [1] * n
    by_partition = queue_entries(r, settings)
    for p, entries in by_partition.items():
        # Each partition's queue holds its keys in the order the batch gave them.
        mine = [k for k in keys if partition(settings, Everything, k) == p]
        assert [e.key for e in entries] == mine
    assert r.dbsize() == n + settings.partitions + 1  # hashes, queues, meta


def test_a_batch_larger_than_one_transaction_block_is_written_whole(
    r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client, pg: Conn
) -> None:
    repo = repo_for(pg, client, Account)
    n = 12_000
    batch = (Account(name=str(k), balance=Decimal(k), active=True) for k in range(n))
    assert repo.create_many(batch) == n
    assert sum(queue_lengths(r, settings)) == n
    assert r.dbsize() == n + settings.partitions + 1


def test_the_partition_is_the_same_in_every_process(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    code = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "import kvfast\n"
        "from helpers import everything\n"
        "from models import Everything\n"
        "s = kvfast.Settings(redis_url=os.environ['T_URL'], partitions=8)\n"
        "with kvfast.Repository(Everything, s) as repo:\n"
        "    repo.create_many([everything(k) for k in range(200)])\n"
        "info = kvfast.model_info(Everything)\n"
        "print(','.join(str(info.partition_of(str(k), 8)) for k in range(200)))\n"
    )
    assert settings.partitions == 8
    parts = []
    for seed in ("1", "4242"):
        r.flushdb()
        env = {**os.environ, "PYTHONHASHSEED": seed, "T_URL": settings.redis_url}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
            check=True,
        )
        parts.append(done.stdout.strip())
        # This process finds every object the other one wrote, where the layout says.
        pipe = r.pipeline(transaction=False)
        for k in range(200):
            pipe.exists(obj_key(settings, Everything, k))
        assert pipe.execute() == [1] * 200
        fresh = kvfast.Repository(Everything, dataclasses.replace(settings, pg_dsn=None))
        assert fresh.get_many(range(200)) == [everything(k) for k in range(200)]
        fresh.close()
    assert parts[0] == parts[1]
    assert parts[0].split(",") == [str(partition(settings, Everything, k)) for k in range(200)]


def test_a_different_partition_count_is_refused(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything(1))
    assert r.hget(f"{settings.namespace}:meta", "partitions") == b"8"
    before = snapshot(r)
    with kvfast.Repository(Everything, dataclasses.replace(settings, partitions=16)) as other:
        for call in (
            lambda: other.create(everything(2)),
            lambda: other.get_by_id(1),
            lambda: other.update(1, n_str="x"),
            lambda: other.delete(1),
        ):
            with pytest.raises(kvfast.PartitionMismatch) as excinfo:
                call()
            text = str(excinfo.value)
            assert "partitions=8" in text and "partitions=16" in text
            assert "KVFAST_PARTITIONS" in text
            assert isinstance(excinfo.value, kvfast.ConfigError)
    assert snapshot(r) == before
    # Another namespace keeps its own count.
    other_ns = dataclasses.replace(settings, partitions=16, namespace="other", pg_dsn=None)
    with kvfast.Repository(Everything, other_ns) as other:
        other.create(everything(1, n_str="other"))
        assert other.get_by_id(1) == everything(1, n_str="other")
    assert r.hget("other:meta", "partitions") == b"16"
    assert repo.get_by_id(1) == everything(1)


def test_tables_whose_names_share_a_prefix_do_not_share_object_keys(
    pg: Conn, r: redis.Redis, client: kvfast.Client
) -> None:
    """``t_colon`` key ``b:c`` and ``t_colon:b`` key ``c`` are different objects."""
    colons = repo_for(pg, client, Colon)
    colons_b = repo_for(pg, client, ColonB)
    colons.create(Colon(id="b:c", x=1))
    colons_b.create(ColonB(id="c", y="hello"))
    assert colons_b.get_by_id("c") == ColonB(id="c", y="hello")
    assert colons.get_by_id("b:c") == Colon(id="b:c", x=1)


# -- TTL ---------------------------------------------------------------------------------


def wait_until_gone(r: redis.Redis, key: str, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while r.exists(key):
        if time.monotonic() >= deadline:  # a wait-loop guard, not a timing check
            pytest.fail(f"{key} never expired")
        time.sleep(0.05)


def _drain(settings: kvfast.Settings) -> int:
    from kvfast.drainer import Drainer

    with Drainer(settings) as drainer:
        return drainer.drain_until_empty()


def test_a_ttl_model_expires_only_once_its_writes_have_drained(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    """Until its writes are in PostgreSQL, Redis holds the only copy of an object:
    neither its TTL nor a volatile-* eviction may take it (ack.lua gives the TTL)."""
    repo = repo_for(pg, client, Session)
    repo.create(Session(id=1, user="in redis"))
    key = obj_key(settings, Session, 1)
    assert r.pttl(key) == -1  # queued: no TTL yet, however long the drain lags
    assert r.ttl(queue_key(settings, partition(settings, Session, 1))) == -1
    time.sleep(1.2)  # past the model's 1 s TTL: the undrained object is still there
    repo.update(1, note="still here")
    assert repo.get_by_id(1) == Session(id=1, user="in redis", note="still here")
    assert _drain(settings) == 2
    assert 0 < r.pttl(key) <= 1000  # drained: now it may expire
    wait_until_gone(r, key)
    assert repo.get_by_id(1) == Session(id=1, user="in redis", note="still here")  # from PG


def test_a_write_newer_than_the_drained_one_keeps_the_object_without_a_ttl(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    from kvfast.drainer import Drainer

    repo = repo_for(pg, client, Session)
    repo.create(Session(id=5, user="first"))
    key = obj_key(settings, Session, 5)
    with Drainer(settings) as drainer:
        claim = drainer.claim()
        assert claim is not None
        repo.update(5, note="written while the create drains")
        drainer.process(claim)  # acks the create: the newer update is not in PG yet
        assert r.pttl(key) == -1
        drainer.drain_until_empty()
    assert 0 < r.pttl(key) <= 1000


def test_read_through_load_sets_the_ttl_and_an_update_lifts_it_until_drained(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    repo = repo_for(pg, client, Session)
    insert_row(pg, Session(id=2, user="pg"))
    assert repo.get_by_id(2) == Session(id=2, user="pg")
    repo.update(2, note="loaded from PostgreSQL")  # hydrated (drained data), then updated
    key = obj_key(settings, Session, 2)
    assert r.pttl(key) == -1
    assert repo.get_by_id(2) == Session(id=2, user="pg", note="loaded from PostgreSQL")
    assert _drain(settings) == 1
    assert 0 < r.pttl(key) <= 1000


def test_a_tombstone_of_a_ttl_model_does_not_expire(
    pg: Conn, r: redis.Redis, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    """The tombstone must outlive the copy until the delete has drained."""
    repo = repo_for(pg, client, Session)
    repo.create(Session(id=4, user="x"))
    insert_row(pg, Session(id=4, user="x"))
    repo.delete(4)
    assert r.ttl(obj_key(settings, Session, 4)) == -1
    assert repo.get_by_id(4) is None


def test_a_model_without_ttl_never_expires(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    repo.create(everything(1))
    repo.update(1, n_str="x")
    assert r.ttl(obj_key(settings, Everything, 1)) == -1


# -- damaged data and driver errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw"), [("n_int", b"not a number"), ("n_str", b"\xff\xfe"), ("n_dict", b"{")]
)
def test_a_hash_that_does_not_decode_is_a_decode_error(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything],
    field: str, raw: bytes,
) -> None:
    repo.create(everything(1))
    r.hset(obj_key(settings, Everything, 1), field, raw)
    with pytest.raises(kvfast.DecodeError, match="Everything"):
        repo.get_by_id(1)


def test_a_read_through_to_a_missing_table_raises_a_kvfast_error(
    pg: Conn, settings: kvfast.Settings, client: kvfast.Client
) -> None:
    """errors.py: driver exceptions are translated where they enter kvfast."""
    repo = kvfast.Repository(Everything, client=client)  # no create_tables
    with pytest.raises(kvfast.KvfastError) as excinfo:
        repo.get_by_id(1)
    assert "t_everything" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, psycopg.Error)


def test_a_redis_reply_error_on_read_raises_a_kvfast_error(
    r: redis.Redis, settings: kvfast.Settings, repo: kvfast.Repository[Everything]
) -> None:
    """A key of the wrong type is a kvfast error, not a bare redis.ResponseError."""
    repo.create(everything(2))  # records the partition count
    r.set(obj_key(settings, Everything, 1), b"not a hash")
    with pytest.raises(kvfast.KvfastError) as excinfo:
        repo.get_by_id(1)
    assert isinstance(excinfo.value.__cause__, redis.ResponseError)


@pytest.mark.parametrize("bad_at", [0, 300, 5_100], ids=["first", "second_piece", "second_block"])
def test_a_bad_record_anywhere_in_a_streamed_batch_writes_nothing(
    r: redis.Redis, repo: kvfast.Repository[Everything], bad_at: int
) -> None:
    """create_many sends the first MULTI block while it is still encoding the rest
    (Client.execute_pieces): a record refused after some of it went out is
    DISCARDed with everything else, and the connection stays usable."""
    repo.create(everything(1))
    before = snapshot(r)
    objs = [everything(k) for k in range(10, 5_300)]
    objs[bad_at] = everything(objs[bad_at].id, n_int=2**63)  # out of bigint range
    with pytest.raises(kvfast.ValidationError) as info:
        repo.create_many(objs)
    assert info.value.field == "n_int" and info.value.value == 2**63
    assert snapshot(r) == before
    # The same pooled connection carries on in step with its replies.
    assert repo.create_many(objs[:bad_at] + objs[bad_at + 1 :]) == len(objs) - 1
    assert repo.get_by_id(objs[1].id) == objs[1]
    assert sum(queue_lengths(r, repo.client.settings)) == len(objs)


def test_create_many_leaves_the_garbage_collector_as_it_found_it(
    repo: kvfast.Repository[Everything],
) -> None:
    """The collector is paused during a batch (producer.gc_paused) and restored
    after it, also when the batch is refused; a caller's gc.disable() is kept."""
    import gc

    assert gc.isenabled()
    repo.create_many([everything(1), everything(2)])
    assert gc.isenabled()
    with pytest.raises(kvfast.ValidationError):
        repo.create_many([everything(3), everything(4, n_int=2**64)])
    assert gc.isenabled()
    gc.disable()
    try:
        repo.create_many([everything(5)])
        repo.delete_many([5])
        assert not gc.isenabled()
    finally:
        gc.enable()
