"""Index upkeep outside ``find``: PostgreSQL indexes, the start-up check of the index
sets, and ``python -m kvfast.reindex``."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import pytest
import redis
from drainkeys import tag
from drainprocs import run_supervisor
from findmodels import Expiring, Request, Typed
from helpers import create_tables, insert_row

import kvfast
import kvfast.aio
from kvfast import reindex
from kvfast.schema import check_tables


def _pg_indexes(pg: psycopg.Connection[Any], table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in pg.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,))}


def test_create_tables_indexes_the_indexed_columns_and_the_check_warns_without(
    pg: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    create_tables(pg, Request)
    indexes = _pg_indexes(pg, "f_requests")
    assert "f_requests_rider_idx" in indexes and "f_requests_status_idx" in indexes
    create_tables(pg, Request)  # again: no duplicate
    assert _pg_indexes(pg, "f_requests") == indexes
    with caplog.at_level(logging.WARNING, logger="kvfast.schema"):
        check_tables(pg, [kvfast.model_info(Request)])
    assert not caplog.records
    pg.execute("DROP INDEX f_requests_status_idx")
    pg.execute("CREATE INDEX partial ON f_requests (status) WHERE status IS NOT NULL")
    with caplog.at_level(logging.WARNING, logger="kvfast.schema"):
        check_tables(pg, [kvfast.model_info(Request)])
    assert [r.getMessage() for r in caplog.records] == [
        "f_requests.status: model Request indexes this field but the column has no "
        "PostgreSQL index: every find scans the table (create one, or start the supervisor "
        "with --create-tables)"]


def _reindex(settings: kvfast.Settings, *models: str,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = reindex.main(["--redis-url", settings.redis_url, "--partitions",
                         str(settings.partitions), "--models", "findmodels", *models])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_reindex_rebuilds_the_sets_of_objects_written_before_the_index(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_tables(pg, Request)
    with kvfast.Repository(Request, settings) as repo:
        repo.create_many([Request(i, f"r{i % 4}", i, "new" if i % 2 else None)
                          for i in range(100)])
        repo.delete(0)
        # As if written by a model without indexes, plus a set of a field never indexed.
        r.delete(*r.keys("*:x:*"))
        r.sadd(repo.producer.keys.index_prefix(3, "f_requests", "fare") + b"5", b"5")
        assert repo.find(rider="r1") == []  # what reindex is for
        code, out = _reindex(settings, "Request", capsys=capsys)
        assert code == 0, out
        assert out == ("Request (f_requests): 99 objects indexed (149 set members), "
                       "1 sets of fields no longer indexed deleted\n")
        assert [o.id for o in repo.find(rider="r1")] == list(range(1, 100, 4))
        assert [o.id for o in repo.find(rider="r0", status="new")] == []
        assert [o.id for o in repo.find(status="new")] == list(range(1, 100, 2))
        assert not r.keys("*:x:f_requests:fare:*")
    assert r.hget(f"{settings.namespace}:meta", "x:f_requests") == b"rider,status"


def test_reindex_refuses_unknown_models_and_an_absent_redis(
    settings: kvfast.Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _reindex(settings, "Nope", capsys=capsys)
    assert code == 2
    assert out.startswith("kvfast.reindex: no model named 'Nope' (class name or table); "
                          "known: ")
    assert "Traceback" not in out
    code = reindex.main(["--redis-url", "redis://127.0.0.1:1/0", "--models", "findmodels",
                         "f_requests"])
    out = capsys.readouterr().err
    assert code == 4 and out.startswith("kvfast.reindex: ") and "Traceback" not in out


def test_the_supervisor_refuses_index_sets_built_for_other_indexes_until_reindexed(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_tables(pg, Request, Expiring, Typed)
    insert_row(pg, Request(50, "r9", 1, None))
    with kvfast.Repository(Request, settings) as repo:
        repo.create(Request(1, "r1", 1, None))
    # Recorded by an earlier deploy whose model indexed only the rider.
    r.hset(f"{settings.namespace}:meta", "x:f_requests", "rider")
    code, out = run_supervisor(settings, "--drain-until-empty", models=("findmodels",),
                               workers=1)
    assert code == 2, out
    assert ("model Request (table 'f_requests') indexes (rider,status) but its objects in "
            "Redis were indexed for (rider): find would miss objects; rebuild the index "
            "sets (after every producer runs this model) with `python -m kvfast.reindex "
            "--models findmodels Request`") in out
    assert "Traceback" not in out
    assert r.llen(f"{tag(settings, repo.producer.locate(1)[1])}:q") == 1
    code, text = _reindex(settings, "f_requests", capsys=capsys)
    assert code == 0, text
    code, out = run_supervisor(settings, "--drain-until-empty", models=("findmodels",),
                               workers=1)
    assert code == 0, out


def test_a_first_start_records_the_indexes_of_tables_without_objects(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    code, out = run_supervisor(settings, "--drain-until-empty", "--create-tables",
                               models=("findmodels",), workers=1)
    assert code == 0, out
    meta = r.hgetall(f"{settings.namespace}:meta")
    assert meta[b"x:f_requests"] == b"rider,status" and meta[b"x:f_expiring"] == b"rider"
    assert "f_typed_owner_idx" in _pg_indexes(pg, "f_typed")


def test_a_producer_writing_before_any_supervisor_records_its_indexes(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis
) -> None:
    """No false alarm: the first writer records the indexes it wrote, so the first
    supervisor start finds them recorded and equal (it used to find objects and no
    record, and ask for a reindex)."""
    create_tables(pg, Request, Expiring, Typed)
    with kvfast.Repository(Request, settings) as repo:
        repo.create_many([Request(i, f"r{i % 3}", i, None) for i in range(10)])
    with kvfast.Repository(Expiring, settings) as expiring:
        expiring.delete("e1")  # a delete is a first write too
    meta = f"{settings.namespace}:meta"
    assert r.hget(meta, "x:f_requests") == b"rider,status"
    assert r.hget(meta, "x:f_expiring") == b"rider"

    async def write_async() -> None:
        async with await kvfast.aio.AsyncRepository.open(Typed, settings) as typed:
            await typed.delete_many([uuid.uuid4()])

    kvfast.aio.run(write_async())
    assert r.hget(meta, "x:f_typed") == b"owner,stage"
    code, out = run_supervisor(settings, "--drain-until-empty", models=("findmodels",),
                               workers=1)
    assert code == 0, out
    assert pg.execute("SELECT count(*) FROM f_requests").fetchone() == (10,)


def test_a_change_of_indexes_after_a_producer_recorded_them_is_still_refused(
    settings: kvfast.Settings, pg: psycopg.Connection[Any], r: redis.Redis, tmp_path: Any
) -> None:
    """The producer records only where nothing is recorded (HSETNX): a model whose
    indexes changed is caught at the next supervisor start."""
    create_tables(pg, Request)
    with kvfast.Repository(Request, settings) as repo:
        repo.create(Request(1, "r1", 1, None))  # records rider,status
    (tmp_path / "changedmodels.py").write_text(
        "import kvfast\n\n\n"
        "@kvfast.model(table='f_requests', key='id', indexes=('rider', 'fare'))\n"
        "class Request:\n    id: int\n    rider: str\n    fare: int\n"
        "    status: str | None = None\n")
    code, out = run_supervisor(settings, "--drain-until-empty", "--create-tables",
                               models=("changedmodels",), workers=1,
                               pythonpath=[str(tmp_path)])
    assert code == 2, out
    assert ("model Request (table 'f_requests') indexes (rider,fare) but its objects in "
            "Redis were indexed for (rider,status)") in out
    assert "Traceback" not in out
    assert r.hget(f"{settings.namespace}:meta", "x:f_requests") == b"rider,status"
