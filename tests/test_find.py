"""``find`` by indexed fields: exactly what ``get_by_id`` answers, while the drain lags.

The main test keeps a model of the truth (key → object) and plays rounds of
random creates, moves, NULLs, deletes, re-creates and batch writes over a few
thousand keys and a few dozen values, on top of rows inserted directly into
PostgreSQL (written "before kvfast"); after every round ``find`` of every value
must equal the truth, with the drain not running, run half-way (in-process
claims, or a supervisor stopped mid-round) and caught up.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from drainhelpers import wait_idle
from drainprocs import start_supervisor
from findmodels import Expiring, Request, Stage, Typed
from helpers import create_tables, insert_row

import kvfast
import kvfast.aio
import kvfast.impl
from kvfast.deadletter import main as deadletter_main
from kvfast.drainer import Drainer
from kvfast.find import Overlapped, find_plan
from kvfast.keys import Keys
from kvfast.model import TOMBSTONE_FIELD
from kvfast.scripts import Prune
from kvfast.sweep import IndexSweeper

RIDERS = [f"rider-{i}" for i in range(30)] + ["", "ünï ✓", "a:b%c"]
STATUSES = [None, "new", "assigned", "done"]
NKEYS = 2500

Truth = dict[int, Request]


def _random_request(rng: random.Random, key: int) -> Request:
    return Request(key, rng.choice(RIDERS), rng.randrange(10**6), rng.choice(STATUSES))


@dataclasses.dataclass
class Game:
    """The repository under test and the truth it must answer."""

    repo: kvfast.Repository[Request]
    rng: random.Random
    truth: Truth

    def round(self, ops: int) -> None:
        """``ops`` random writes, applied to Redis and to the truth alike."""
        rng, truth, repo = self.rng, self.truth, self.repo
        for _ in range(ops):
            op = rng.random()
            key = rng.randrange(NKEYS)
            if op < 0.25:  # create, or re-create over an existing / deleted key
                obj = _random_request(rng, key)
                repo.create(obj)
                truth[key] = obj
            elif op < 0.35:  # a batch of creates, one key possibly twice
                objs = [_random_request(rng, rng.randrange(NKEYS)) for _ in range(20)]
                repo.create_many(objs)
                truth.update((o.id, o) for o in objs)
            elif op < 0.65 and key in truth:  # move between riders, or change status
                changes: dict[str, Any] = (
                    {"rider": rng.choice(RIDERS)} if rng.random() < 0.6
                    else {"status": rng.choice(STATUSES), "fare": rng.randrange(10**6)})
                repo.update(key, **changes)
                truth[key] = dataclasses.replace(truth[key], **changes)
            elif op < 0.8 and key in truth:
                repo.delete(key)
                del truth[key]
            elif op < 0.85:  # a batch delete, of keys present or not
                keys = [rng.randrange(NKEYS) for _ in range(15)]
                repo.delete_many(keys)
                for k in keys:
                    truth.pop(k, None)

    def check(self, repo: kvfast.Repository[Request] | None = None) -> None:
        """``find`` of every rider, and of a few rider AND status pairs, equals the truth."""
        repo = repo or self.repo
        problems: list[str] = []
        for rider in RIDERS:
            want = sorted((o for o in self.truth.values() if o.rider == rider),
                          key=lambda o: o.id)
            got = repo.find(rider=rider)
            if got != want:
                problems.append(_diff(f"rider={rider!r}", want, got))
        for rider in RIDERS[:4]:
            for status in STATUSES[1:]:
                want = sorted((o for o in self.truth.values()
                               if o.rider == rider and o.status == status), key=lambda o: o.id)
                got = repo.find(rider=rider, status=status)
                if got != want:
                    problems.append(_diff(f"rider={rider!r} status={status!r}", want, got))
        assert not problems, "\n".join(problems)


def _diff(what: str, want: list[Request], got: list[Request]) -> str:
    w, g = {o.id: o for o in want}, {o.id: o for o in got}
    ids = [o.id for o in got]
    return (f"{what}: missing {[w[k] for k in w.keys() - g.keys()]}, "
            f"extra {[g[k] for k in g.keys() - w.keys()]}, "
            f"stale {[(w[k], g[k]) for k in w.keys() & g.keys() if w[k] != g[k]]}, "
            f"twice {sorted({k for k in ids if ids.count(k) > 1})}")


@pytest.fixture
def game(settings: kvfast.Settings, pg: psycopg.Connection[Any],
         r: redis.Redis) -> Iterator[Game]:
    create_tables(pg, Request)
    rng = random.Random(11)
    truth: Truth = {}
    # Rows from before kvfast: in PostgreSQL only (keys the rounds will also touch).
    for key in rng.sample(range(NKEYS), 600):
        obj = _random_request(rng, key)
        insert_row(pg, obj)
        truth[key] = obj
    with kvfast.Repository(Request, settings) as repo:
        yield Game(repo, rng, truth)


def _drain_some(settings: kvfast.Settings, claims: int) -> None:
    with Drainer(settings) as drainer:
        for _ in range(claims):
            claim = drainer.claim()
            if claim is None:
                return
            assert drainer.process(claim).acked


@pytest.mark.parametrize("drain", ["none", "half", "caught_up"])
def test_find_equals_the_truth_after_every_round(
    game: Game, settings: kvfast.Settings, r: redis.Redis, drain: str
) -> None:
    game.check()  # PostgreSQL rows only
    for _ in range(5):
        game.round(500)
        if drain == "half":
            _drain_some(settings, 2)
        elif drain == "caught_up":
            with Drainer(settings) as drainer:
                drainer.drain_until_empty(max_idle_polls=1)
        game.check()
    if drain == "caught_up":
        # Redis's copies gone (a TTL would take them): PostgreSQL alone answers the same.
        r.delete(*r.keys("*:o:*"))
        game.check()


def test_find_is_exact_while_a_supervisor_drains_and_after_it_stopped_mid_round(
    game: Game, settings: kvfast.Settings, r: redis.Redis, pg: psycopg.Connection[Any]
) -> None:
    create_tables(pg, Expiring, Typed)  # the supervisor checks every model it loads
    sup = start_supervisor(settings, workers=2, models=("findmodels",))
    with sup:
        sup.wait_drainers(2)
        for _ in range(3):
            game.round(400)
            game.check()  # while the drainers apply that round
        game.round(400)
        sup.send(signal.SIGTERM)
        game.round(200)  # the supervisor stops during these writes
        assert sup.wait(60) == 0, sup.output()[-3000:]
    game.check()
    with Drainer(settings) as drainer:
        drainer.drain_until_empty(max_idle_polls=1)
    wait_idle(r, settings)
    game.check()


def test_a_delete_drained_between_the_select_and_the_redis_check_does_not_resurrect(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    """The race find closes: the SELECT sees the row (the delete is not committed), then
    the delete drains and its ack removes the tombstone before Redis is asked about
    the row's key.  The partition's drained counter moved, so the row is read again."""
    create_tables(pg, Request)
    insert_row(pg, Request(1, "R", 10, None))
    insert_row(pg, Request(2, "R", 20, None))
    with kvfast.Repository(Request, settings) as repo:
        repo.delete(1)
        plan = find_plan(repo.core, {"rider": "R"})
        step = next(plan)
        assert isinstance(step, Overlapped)  # the index sets, and the SELECT
        sets, hashes, rows = repo._perform(step)
        assert sorted(row[0] for row in rows) == [1, 2]
        with Drainer(settings) as drainer:
            drainer.drain_until_empty(max_idle_polls=1)
        assert r.exists(repo.producer.locate(1)[2]) == 0  # the tombstone is gone
        steps = []
        try:
            step = plan.send((sets, hashes, rows))
            while True:
                steps.append(type(step).__name__)
                step = plan.send(repo._perform(step))
        except StopIteration as done:
            found = done.value
        assert found == [Request(2, "R", 20, None)]
        assert steps == ["Commands", "Select"]  # the rows of the drained partition read again
        # Without a drain in between, nothing is read again.
        repo.delete(2)
        steps = []
        plan = find_plan(repo.core, {"rider": "R"})
        try:
            step = next(plan)
            while True:
                steps.append(type(step).__name__)
                step = plan.send(repo._perform(step))
        except StopIteration as done:
            assert done.value == []
        assert steps == ["Overlapped", "Commands"]


def test_rows_whose_redis_copy_expired_after_the_drain_are_found_in_postgresql(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    create_tables(pg, Expiring)
    with kvfast.Repository(Expiring, settings) as repo:
        repo.create_many([Expiring(f"k{i}", i % 3, i) for i in range(30)])
        repo.update("k0", rider=7)  # moved before the drain
        with Drainer(settings) as drainer:
            drainer.drain_until_empty(max_idle_polls=1)
        deadline = time.monotonic() + 10
        while r.keys("*:o:*") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.keys("*:o:*") == []  # every copy expired once drained (ttl=1)
        assert [o.code for o in repo.find(rider=7)] == ["k0"]
        assert sorted(o.code for o in repo.find(rider=0)) == sorted(
            f"k{i}" for i in range(3, 30, 3))
        # The stale members of the expired objects were dropped as they were read.
        assert sum(r.scard(k) for k in r.keys("*:x:*:rider:0")) == 0
        # A write after the expiry: Redis again, and the row's old value is not found.
        repo.update("k3", rider=8)
        assert [o.code for o in repo.find(rider=8)] == ["k3"]
        assert "k3" not in [o.code for o in repo.find(rider=0)]


def test_find_by_a_field_that_is_not_indexed_is_an_error_naming_model_and_field(
    settings: kvfast.Settings,
) -> None:
    with kvfast.Repository(Request, settings) as repo:
        with pytest.raises(kvfast.ValidationError, match=r"Request\.fare .*not indexed"):
            repo.find(fare=3)
        with pytest.raises(kvfast.ValidationError, match=r"Request\.nope .*no such field"):
            repo.find(nope=3)
        with pytest.raises(kvfast.ValidationError, match="at least one indexed field"):
            repo.find()
        with pytest.raises(kvfast.ValidationError, match="NULL"):
            repo.find(status=None)
        with pytest.raises(kvfast.ValidationError, match=r"Request\.rider"):
            repo.find(rider=12)


@pytest.mark.parametrize(("indexes", "message"), [
    (("nope",), "index 'nope' is not a field"),
    (("id",), "index 'id' is the key"),
    (("rider", "rider"), "listed twice"),
    (("score",), "a double precision field cannot be indexed"),
    ("rider", "must be a tuple of field names"),
])
def test_bad_indexes_are_a_model_error(indexes: Any, message: str) -> None:
    with pytest.raises(kvfast.ModelError, match=message):
        @kvfast.model(table="f_bad_indexes", key="id", indexes=indexes)
        class Bad:
            id: int
            rider: str
            score: float


def test_uuid_and_enum_indexes_compare_by_their_canonical_form(
    settings: kvfast.Settings, pg: psycopg.Connection[Any]
) -> None:
    create_tables(pg, Typed)
    owner = uuid.UUID(int=7)
    insert_row(pg, Typed(uuid.UUID(int=1), owner, Stage.DONE))
    with kvfast.Repository(Typed, settings) as repo:
        repo.create(Typed(uuid.UUID(int=2), owner, Stage.NEW))
        assert [o.id.int for o in repo.find(owner=owner)] == [1, 2]
        assert repo.find(owner=uuid.UUID(int=8)) == []
        assert [o.id.int for o in repo.find(owner=owner, stage="done")] == [1]
        assert [o.id.int for o in repo.find(stage=Stage.NEW)] == [2]


def test_the_async_repository_finds_the_same(game: Game, settings: kvfast.Settings) -> None:
    game.round(300)

    async def go() -> list[list[Request]]:
        async with await kvfast.aio.AsyncRepository.open(Request, settings) as repo:
            return [await repo.find(rider=rider) for rider in RIDERS]

    assert kvfast.aio.run(go()) == [game.repo.find(rider=rider) for rider in RIDERS]
    assert any(kvfast.aio.run(go()))


def test_the_index_is_written_with_the_object_or_not_at_all(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    create_tables(pg, Request)
    with kvfast.Repository(Request, settings) as repo:
        good = [Request(i, "R", i, "new") for i in range(600)]  # more than one streamed piece
        with pytest.raises(kvfast.ValidationError):
            repo.create_many([*good, Request(600, "R", "not an int", None)])  # type: ignore[arg-type]
        assert r.keys("*:o:*") == [] and r.keys("*:x:*") == []  # DISCARDed whole
        with pytest.raises(kvfast.NotFound):
            repo.update(7, rider="S")  # in neither store: update.lua adds nothing
        assert not r.keys("*:x:*")
        insert_row(pg, Request(8, "P", 1, "old"))
        repo.update(8, fare=2)  # hydrated from PostgreSQL: in the sets of its values
        assert repo.find(rider="P", status="old") == [Request(8, "P", 2, "old")]
        assert sum(r.sismember(k, b"8") for k in r.keys("*:x:f_requests:rider:P")) == 1


def test_prune_keeps_a_member_whose_object_holds_the_value_again(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    """find saw the member stale, then a write moved the key back before prune.lua ran:
    prune re-checks the object in its atomic step and keeps the member."""
    create_tables(pg, Request)
    with kvfast.Repository(Request, settings) as repo:
        repo.create_many([Request(1, "R", 1, None), Request(2, "R", 2, None)])
        repo.update(1, rider="S")
        repo.update(2, rider="S")
        repo.update(1, rider="R")  # back again
        p1, p2 = repo.producer.locate(1)[1], repo.producer.locate(2)[1]
        for key, p in ((1, p1), (2, p2)):
            sets = [repo.producer.index_prefixes[p][0] + b"R"]  # type: ignore[index]
            prefix = repo.producer.keys.obj(p, "f_requests", "").encode()
            removed = repo.client.eval_many(Prune.name, [Prune.call(
                prefix, TOMBSTONE_FIELD, [("rider", b"R")], sets, [str(key).encode()])])
            assert removed == [0 if key == 1 else 1]
        assert [o.id for o in repo.find(rider="R")] == [1]


def _members(r: redis.Redis, table: str) -> dict[bytes, set[bytes]]:
    """The index sets of ``table``, every partition's merged: value (the name's tail) →
    members."""
    out: dict[bytes, set[bytes]] = {}
    for name in r.keys(f"*:x:{table}:*"):
        out.setdefault(name.rsplit(b":", 1)[1], set()).update(r.smembers(name))
    return out


def test_the_index_sets_of_expired_objects_are_pruned_without_a_find(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    """A TTL'd model: members whose objects expired would stay in their sets until a
    find of that value (never, for a value nobody looks up); the supervisor's sweep
    removes them, and keeps the members of live objects, pending or drained."""
    create_tables(pg, Expiring, Typed, Request)  # the supervisor checks every model
    with kvfast.Repository(Expiring, settings) as repo:
        repo.create_many([Expiring(f"k{i}", i % 3, i) for i in range(30)])
        repo.update("k0", rider=7)  # a stale member in the set of 0, and one in 7
        with Drainer(settings) as drainer:
            drainer.drain_until_empty(max_idle_polls=1)
        deadline = time.monotonic() + 10
        while r.keys("*:o:*") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.keys("*:o:*") == []  # expired once drained (ttl=1)
        assert sum(len(m) for m in _members(r, "f_expiring").values()) == 31  # all dead
        repo.create(Expiring("k99", 0, 99))  # pending: no TTL, its member must stay
        with start_supervisor(settings, workers=1, models=("findmodels",)) as sup:
            # (its first pass runs at start; drained at once, k99 gets its TTL then)
            deadline = time.monotonic() + 30
            while (_members(r, "f_expiring") not in ({b"0": {b"k99"}}, {})
                   and sup.proc.poll() is None and time.monotonic() < deadline):
                time.sleep(0.1)
            sup.send(signal.SIGTERM)
            assert sup.wait(60) == 0, sup.output()[-3000:]
        assert _members(r, "f_expiring") in ({b"0": {b"k99"}}, {}), _members(r, "f_expiring")
        # find answers the same from PostgreSQL alone
        assert sorted(o.code for o in repo.find(rider=0)) == sorted(
            [f"k{i}" for i in range(3, 30, 3)] + ["k99"])
        assert [o.code for o in repo.find(rider=7)] == ["k0"]


def test_the_sweep_keeps_members_of_live_objects_and_of_keys_written_again(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    create_tables(pg, Expiring)
    info = kvfast.model_info(Expiring)
    with kvfast.Repository(Expiring, settings) as repo:
        repo.create_many([Expiring(f"k{i}", i % 2, i) for i in range(20)])
        with Drainer(settings) as drainer:
            drainer.drain_until_empty(max_idle_polls=1)
        deadline = time.monotonic() + 10
        while r.keys("*:o:*") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.keys("*:o:*") == []
        repo.create(Expiring("k2", 0, 2))  # written again after it expired: pending
        repo.create(Expiring("k5", 0, 5))  # moved from 1 to 0 by a create
        repo.delete("k7")  # a tombstone: stale in every set
        sweeper = IndexSweeper(repo.client, [info, kvfast.model_info(Request)])
        assert [m.name for m in sweeper.models] == ["Expiring"]  # only TTL'd, indexed models
        assert sweeper.sweep() == 19  # all 20 but k2 (k5 is stale in the set of 1)
        assert _members(r, "f_expiring") == {b"0": {b"k2", b"k5"}}
        assert sweeper.sweep() == 0
        assert sorted(o.code for o in repo.find(rider=0)) == sorted(
            [f"k{i}" for i in range(0, 20, 2)] + ["k5"])
        assert sorted(o.code for o in repo.find(rider=1)) == sorted(
            f"k{i}" for i in range(1, 20, 2) if i not in (5, 7))


def test_find_answers_a_dead_lettered_key_before_and_after_its_requeue(
        settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis) -> None:
    """A write PostgreSQL refused waits in the dead-letter list: ``find`` answers what
    ``get_by_id`` does all along (Redis's copy), also once it moved, and the same after
    the operator's requeue has drained it."""
    create_tables(pg, Request)
    pg.execute("ALTER TABLE f_requests ADD CONSTRAINT fare_ok CHECK (fare >= 0)")
    with kvfast.Repository(Request, settings) as repo:
        repo.create_many([Request(1, "r", -5, "new"), Request(2, "r", 10, "new"),
                          Request(3, "q", -1, "new")])

        def check() -> None:
            for rider in ("r", "q", "r2"):
                want = [o for o in repo.get_many([1, 2, 3]) if o is not None
                        and o.rider == rider]
                assert repo.find(rider=rider) == want, rider

        with Drainer(settings) as drainer:
            drainer.drain_until_empty(max_idle_polls=1)
        keys = Keys(settings.namespace, settings.partitions)
        assert sum(r.llen(k) for k in keys.dead) == 2  # the creates of 1 and 3
        assert pg.execute("SELECT id FROM f_requests ORDER BY id").fetchall() == [(2,)]
        check()
        assert [o.id for o in repo.find(rider="r")] == [1, 2]
        repo.update(1, rider="r2")  # moved while its create waits in the list
        repo.delete(3)
        check()
        assert [o.id for o in repo.find(rider="r2")] == [1] and repo.find(rider="q") == []
        pg.execute("ALTER TABLE f_requests DROP CONSTRAINT fare_ok")
        args = ["--redis-url", settings.redis_url, "--partitions", str(settings.partitions),
                "--namespace", settings.namespace]
        assert deadletter_main([*args, "requeue"]) == 0
        with Drainer(settings) as drainer:
            drainer.drain_until_empty(max_idle_polls=1)
        check()
        assert pg.execute("SELECT id, rider FROM f_requests ORDER BY id").fetchall() == [
            (1, "r2"), (2, "r")]
        r.delete(*r.keys("*:o:*"))  # Redis's copies gone: PostgreSQL answers the same
        assert [o.id for o in repo.find(rider="r2")] == [1]
        assert [o.id for o in repo.find(rider="r")] == [2] and repo.find(rider="q") == []


def test_find_of_a_missing_table_is_a_schema_error_and_the_next_find_works(
        settings: kvfast.Settings, pg: psycopg.Connection[Any]) -> None:
    """The SELECT goes out before Redis is asked (kvfast.pgpending): its error is the
    same clear one, and the connection is idle again after it."""
    kvfast.create_tables(pg, [])  # kvfast's fence table only
    with kvfast.Repository(Request, settings) as repo:
        repo.create(Request(1, "R", 10, None))
        with pytest.raises(kvfast.SchemaMismatch, match='relation "f_requests" does not'):
            repo.find(rider="R")
        create_tables(pg, Request)
        assert repo.find(rider="R") == [Request(1, "R", 10, None)]


def test_redis_away_during_find_leaves_the_postgresql_connection_idle(
        settings: kvfast.Settings, pg: psycopg.Connection[Any]) -> None:
    """The SELECT was sent, then Redis failed: its result is read and dropped, the
    connection's lock released (else the next statement would hang or fail)."""
    create_tables(pg, Request)
    insert_row(pg, Request(1, "R", 10, None))
    away = dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0",
                               redis_connect_timeout=0.5)
    with kvfast.Repository(Request, away) as repo:
        conn = repo.client.pg()
        for _ in range(2):
            with pytest.raises(kvfast.RedisUnavailable):
                repo.find(rider="R")
        assert repo.client.pg() is conn and not conn.closed
        assert conn.execute("SELECT id FROM f_requests").fetchall() == [(1,)]


def _written_and_found(settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis,
                       c: bool, objs: list[Any]) -> tuple[Any, ...]:
    """One implementation's batch write of ``objs`` (Request and Typed objects): what
    Redis then holds (every index set's members, every object hash) and what ``find``
    answers from Redis and, once drained, from PostgreSQL."""
    from kvfast.cencoders import build_c_create_encoder
    from kvfast.encoders import build_create_encoder
    r.flushdb()
    pg.execute("DROP SCHEMA public CASCADE")
    pg.execute("CREATE SCHEMA public")
    create_tables(pg, Request, Typed)
    found: list[Any] = []
    with kvfast.Repository(Request, settings) as requests, \
            kvfast.Repository(Typed, settings) as typed:
        for repo in (requests, typed):
            info = repo.info
            repo.producer._encode = build_c_create_encoder(info) if c \
                else build_create_encoder(info)
            assert (type(repo.producer._encode).__name__ == "Encoder") is c
            repo.create_many([o for o in objs if type(o) is info.cls])
        sets = {k: sorted(r.smembers(k)) for k in r.keys("*:x:*")}
        hashes = {k: r.hgetall(k) for k in r.keys("*:o:*")}
        for drained in (False, True):
            if drained:
                _drain_some(settings, 1000)
                wait_idle(r, settings)
            found.append([requests.find(rider=rider) for rider in RIDERS])
            found.append([requests.find(status=s) for s in STATUSES[1:]])
            found.append([typed.find(owner=uuid.UUID(int=o)) for o in range(4)])
            found.append([typed.find(stage=s) for s in Stage])
    return sets, hashes, found


def test_a_batch_the_c_encoder_wrote_is_found_exactly_like_the_python_written_one(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    """The C framer writes the index sets' SADDs itself: the same sets, the same
    objects and the same answers as the Python path, over several streamed pieces,
    keys repeated in the batch (with other values) and NULL index values."""
    try:
        kvfast.impl.require_speedups()  # whatever KVFAST_IMPL chose: both are compared
    except ImportError:
        pytest.skip("the C extension is not built")
    rng = random.Random(5)
    objs: list[Any] = [_random_request(rng, rng.randrange(700)) for _ in range(900)]
    objs += [Typed(uuid.UUID(int=rng.randrange(300)), uuid.UUID(int=rng.randrange(4)),
                   rng.choice(list(Stage))) for _ in range(400)]
    want = _written_and_found(settings, pg, r, False, objs)
    got = _written_and_found(settings, pg, r, True, objs)
    assert got == want
    truth: dict[int, Request] = {o.id: o for o in objs if type(o) is Request}
    sets, _, found = got
    assert found[0] == found[4] == [sorted((o for o in truth.values() if o.rider == rider),
                                           key=lambda o: o.id) for rider in RIDERS]
    assert sum(map(len, found[1])) < len(truth)  # some statuses were NULL: in no set
    assert len(sets) > len(RIDERS)
