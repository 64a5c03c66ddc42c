"""The connection a thread keeps between its sends (``kvfast.client._Lease``), against a
real Redis: a connection Redis closed is never written on, a thread that ends gives
its connection back, a forked child never shares its parent's socket."""

from __future__ import annotations

import multiprocessing
import threading
from decimal import Decimal
from typing import Any

import redis
from models import Account

import kvfast


def _account(name: str) -> Account:
    return Account(name=name, balance=Decimal("1.50"), active=True)


def _in_use(repo: kvfast.Repository[Any]) -> int:
    return len(repo.client.redis.connection_pool._in_use_connections)  # type: ignore[attr-defined]


def test_a_connection_redis_closed_is_replaced_before_the_next_write(
        settings: kvfast.Settings, r: redis.Redis) -> None:
    with kvfast.Repository(Account, settings) as repo:
        repo.create(_account("a"))
        # Redis drops every other client's connection, the lease's included, a
        # moment after its last use (a restart, a CLIENT KILL, a proxy's timeout).
        assert int(r.client_kill_filter(_type="normal", skipme=True)) >= 1
        repo.create(_account("b"))  # neither WriteOutcomeUnknown nor an error
        repo.create_many([_account("c"), _account("d")])
        assert [o.name for o in repo.get_many(["a", "b", "c", "d"])] == ["a", "b", "c", "d"]


def test_a_thread_that_ends_gives_its_connection_back(settings: kvfast.Settings) -> None:
    with kvfast.Repository(Account, settings) as repo:
        repo.create(_account("main"))
        before = _in_use(repo)  # the main thread's lease

        def write(i: int) -> None:
            repo.create(_account(f"t{i}"))

        threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        del t, threads  # the threads' locals die with the thread objects' last use
        assert _in_use(repo) == before
        assert all(o is not None for o in repo.get_many([f"t{i}" for i in range(4)]))


def _child_writes(settings: kvfast.Settings, repo: kvfast.Repository[Any],
                  out: Any) -> None:
    try:
        repo.create_many([_account(f"child{i}") for i in range(50)])
        out.put("ok")
    except BaseException as exc:  # reported to the parent, which asserts on it
        out.put(repr(exc))


def test_a_forked_child_writes_on_its_own_connection(settings: kvfast.Settings) -> None:
    ctx = multiprocessing.get_context("fork")
    with kvfast.Repository(Account, settings) as repo:
        repo.create(_account("parent0"))  # the parent holds a lease now
        out = ctx.Queue()
        child = ctx.Process(target=_child_writes, args=(settings, repo, out))
        child.start()
        # the parent keeps writing while the child does: on one shared socket the
        # replies would interleave and one side would read the other's
        for i in range(1, 200):
            repo.create(_account(f"parent{i}"))
        child.join(30)
        assert out.get(timeout=5) == "ok"
        assert child.exitcode == 0
        names = [f"parent{i}" for i in range(200)] + [f"child{i}" for i in range(50)]
        assert all(o is not None for o in repo.get_many(names))
