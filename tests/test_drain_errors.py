"""Errors that come from the data are not outages, and a lost reply strands nothing.

Only the loss of the server or the connection is "PostgreSQL unavailable": a row
the server cannot store (a key too big for its index) is dead-lettered like a
constraint violation; a statement timeout makes the drainer back off and apply
the batch in smaller transactions, never dead-letter it; a drainer whose claim
reply was lost takes its own partitions back at once instead of after a lease.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from typing import Any

import orjson
import psycopg
import pytest
import redis
from helpers import create_tables, pg_count, queue_key

import kvfast
from kvfast import codec
from kvfast.drainer import Drainer
from kvfast.model import model_version
from kvfast.scripts import Claim


@kvfast.model(table="t_err_names", key="name")
class Label:
    name: str
    n: int


def _entry(name: str, n: int) -> bytes:
    info = kvfast.model_info(Label)
    return codec.encode_write(info.table, codec.OP_CREATE, name, {"name": name, "n": n},
                              codec.now_us(), model_version(info))


def test_a_row_too_big_for_its_index_is_dead_lettered_and_the_rest_drains(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    create_tables(pg, Label)
    info = kvfast.model_info(Label)
    # Random text (no compression brings it under the index limit), written past
    # the producer's own check, as a foreign or older producer would.
    huge = secrets.token_urlsafe(8000)
    good = [f"ok-{i}" for i in range(20)]
    by_partition: dict[int, list[bytes]] = {}
    for name in [*good[:10], huge, *good[10:]]:
        p = info.partition_of(name, settings.partitions)
        by_partition.setdefault(p, []).append(_entry(name, len(name)))
    for p, entries in by_partition.items():
        r.rpush(queue_key(settings, p), *entries)
    with caplog.at_level(logging.WARNING, "kvfast.drainer"), Drainer(settings) as drainer:
        drainer.drain_until_empty()
    assert pg_count(pg, Label) == 20
    dead = [orjson.loads(doc) for p in range(settings.partitions)
            for doc in r.lrange(f"{queue_key(settings, p)[:-2]}:d", 0, -1)]
    assert len(dead) == 1 and dead[0]["error"].startswith("54000"), dead
    assert "unavailable" not in caplog.text


def test_a_statement_timeout_splits_the_batch_and_nothing_is_dead_lettered(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    create_tables(pg, Label)
    big = dataclasses.replace(settings, batch_size=20_000)
    with kvfast.Repository(Label, big) as labels:
        labels.create_many(Label(name=f"n{i}", n=i) for i in range(20_000))
    role = pg.execute("SELECT current_user").fetchone()
    assert role is not None
    pg.execute(f'ALTER ROLE "{role[0]}" SET statement_timeout = \'15ms\'')
    try:
        with caplog.at_level(logging.WARNING, "kvfast.drainer"), Drainer(big) as drainer:
            drainer.drain_until_empty()
    finally:
        pg.execute(f'ALTER ROLE "{role[0]}" RESET statement_timeout')
    assert pg_count(pg, Label) == 20_000
    assert not any(r.lrange(f"{queue_key(settings, p)[:-2]}:d", 0, -1)
                   for p in range(settings.partitions))
    # 20,000 rows in one COPY take well over 15 ms: the batch was cut.
    assert "statement timeout; applying the rest in 4 transactions" in caplog.text


def test_a_drainer_that_lost_its_claim_reply_takes_its_partitions_back_at_once(
    r: redis.Redis, pg: psycopg.Connection[Any], settings: kvfast.Settings,
) -> None:
    create_tables(pg, Label)
    with kvfast.Repository(Label, settings) as labels:
        labels.create_many(Label(name=f"n{i}", n=i) for i in range(100))
    with Drainer(settings) as drainer:
        # The claim runs in Redis, its reply never reaches the drainer.
        n = settings.partitions
        call = Claim.call(drainer.keys, list(range(n)), drainer.owner, 60_000, 1000)
        lost = Claim.from_reply(drainer.client.evalsha(Claim.name, *call), list(range(n)))
        assert lost is not None and sum(len(p.entries) for p in lost.parts) == 100
        assert drainer.claim() is None  # in flight for a minute: nobody else may take it
        recovered = []
        while (claim := drainer.claim(recover=True)) is not None and claim.parts[0].retaken:
            recovered += claim.parts
            drainer.process(claim)
        assert sorted(p.partition for p in recovered) == sorted(p.partition for p in lost.parts)
        assert all(p.epoch > q.epoch for p, q in zip(
            sorted(recovered, key=lambda p: p.partition),
            sorted(lost.parts, key=lambda p: p.partition), strict=True))
    assert pg_count(pg, Label) == 100
