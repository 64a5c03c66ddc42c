"""Tables in other schemas: ``table="atlas_app.fit"``, ``schema=``, a DSN's search_path."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import kvfast
from kvfast.drainer import Drainer
from kvfast.drivers import pg_connect_kwargs

Conn = psycopg.Connection[Any]

SCHEMA = "atlas_app"
ODD_SCHEMA = 'Odd "sch.ema"'


@kvfast.model(table="atlas_app.fit", key="id")
class Fit:
    id: int
    name: str
    score: int | None = None


@kvfast.model(schema=ODD_SCHEMA, table="odd.fit", key="id")
class OddFit:
    id: int
    name: str


@kvfast.model(table="sp_fit", key="id")
class SearchPathFit:
    id: int
    name: str


@pytest.fixture
def schemas(pg: Conn) -> Iterator[Conn]:
    """``atlas_app`` and an oddly named schema, both empty; dropped afterwards."""

    def drop() -> None:
        for name in (SCHEMA, ODD_SCHEMA):
            pg.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))

    drop()
    for name in (SCHEMA, ODD_SCHEMA):
        pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield pg
    finally:
        drop()


def tables_named(pg: Conn, table: str) -> list[str]:
    """The schemas holding a table called ``table``."""
    rows = pg.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = %s "
        "ORDER BY 1", (table,)).fetchall()
    return [r[0] for r in rows]


def rows(pg: Conn, schema: str, table: str) -> list[tuple[Any, ...]]:
    return pg.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(
        sql.Identifier(schema, table))).fetchall()


def test_the_table_string_names_schema_and_table() -> None:
    fit = kvfast.model_info(Fit)
    assert (fit.table, fit.pg_name) == ("atlas_app.fit", ("atlas_app", "fit"))
    odd = kvfast.model_info(OddFit)
    assert (odd.table, odd.pg_name) == (f"{ODD_SCHEMA}.odd.fit", (ODD_SCHEMA, "odd.fit"))
    plain = kvfast.model_info(SearchPathFit)
    assert (plain.table, plain.pg_name) == ("sp_fit", ("sp_fit",))


@pytest.mark.parametrize("table", ["a.b.c", ".fit", "atlas_app.", "s." + "x" * 64])
def test_a_bad_qualified_name_is_a_model_error(table: str) -> None:
    cls = dataclasses.make_dataclass("BadQualified", [("id", int)])
    with pytest.raises(kvfast.ModelError, match=r"table|schema"):
        kvfast.model(table=table, key="id")(cls)


def test_create_update_delete_drain_into_the_schema(
    schemas: Conn, settings: kvfast.Settings
) -> None:
    pg = schemas
    kvfast.create_tables(pg, [kvfast.model_info(Fit)])
    assert tables_named(pg, "fit") == [SCHEMA]
    assert tables_named(pg, "atlas_app.fit") == []
    with kvfast.Client(settings) as client, Drainer(settings) as drainer:
        repo = kvfast.Repository(Fit, client=client)
        repo.create_many([Fit(1, "one", 10), Fit(2, "two"), Fit(3, "three")])
        drainer.drain_until_empty()
        repo.update(1, score=11)
        repo.delete(2)
        drainer.drain_until_empty()
        assert rows(pg, SCHEMA, "fit") == [(1, "one", 11), (3, "three", None)]
        # the fallback read (SELECT) finds the row in the schema too
        client.redis.flushdb()
        assert repo.get_by_id(3) == Fit(3, "three")
    assert tables_named(pg, "fit") == [SCHEMA]
    kvfast.check_tables(pg, [kvfast.model_info(Fit)])


def test_the_table_check_names_a_missing_qualified_table(schemas: Conn) -> None:
    # A table called fit in public must not stand in for atlas_app.fit.
    schemas.execute("CREATE TABLE public.fit (id bigint PRIMARY KEY, name text NOT NULL, "
                    "score bigint)")
    with pytest.raises(kvfast.SchemaMismatch, match=r"table 'atlas_app\.fit' \(model Fit\) "
                       "does not exist"):
        kvfast.check_tables(schemas, [kvfast.model_info(Fit)])


def test_create_tables_does_not_create_a_schema(pg: Conn) -> None:
    pg.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    with pytest.raises(kvfast.SchemaMismatch, match="schema 'atlas_app' does not exist"):
        kvfast.create_tables(pg, [kvfast.model_info(Fit)])
    assert tables_named(pg, "fit") == []


def test_odd_characters_in_schema_and_table_are_quoted(
    schemas: Conn, settings: kvfast.Settings
) -> None:
    pg = schemas
    kvfast.create_tables(pg, [kvfast.model_info(OddFit)])
    assert tables_named(pg, "odd.fit") == [ODD_SCHEMA]
    with kvfast.Client(settings) as client, Drainer(settings) as drainer:
        repo = kvfast.Repository(OddFit, client=client)
        repo.create(OddFit(1, "a"))
        repo.create(OddFit(2, "b"))
        drainer.drain_until_empty()
        repo.update(1, name="c")
        repo.delete(2)
        drainer.drain_until_empty()
        client.redis.flushdb()
        assert repo.get_by_id(1) == OddFit(1, "c")
    assert rows(pg, ODD_SCHEMA, "odd.fit") == [(1, "c")]


# -- search_path in the DSN ----------------------------------------------------


def with_options(dsn: str, options: str, *, url: bool) -> str:
    if url:
        return dsn + ("&" if "?" in dsn else "?") + "options=" + options.replace(
            " ", "%20").replace("=", "%3D")
    return make_conninfo(**{**conninfo_to_dict(dsn), "options": options})


@pytest.mark.parametrize("url", [True, False], ids=["url", "conninfo"])
def test_the_dsn_search_path_is_kept_and_timezone_is_utc(
    schemas: Conn, settings: kvfast.Settings, url: bool
) -> None:
    assert settings.pg_dsn and settings.pg_dsn.startswith("postgres")  # a URL: tools/services
    theirs = "-c search_path=atlas_app -c timezone=Asia/Kolkata"
    dsn = with_options(settings.pg_dsn, theirs, url=url)
    settings = dataclasses.replace(settings, pg_dsn=dsn)
    with psycopg.connect(**pg_connect_kwargs(settings)) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("atlas_app",)
        assert conn.execute("SHOW timezone").fetchone() == ("UTC",)
        kvfast.create_tables(conn, [kvfast.model_info(SearchPathFit)])
    assert tables_named(schemas, "sp_fit") == [SCHEMA]
    with kvfast.Client(settings) as client, Drainer(settings) as drainer:
        repo = kvfast.Repository(SearchPathFit, client=client)
        repo.create(SearchPathFit(1, "a"))
        repo.create(SearchPathFit(2, "b"))
        drainer.drain_until_empty()
        repo.delete(2)
        drainer.drain_until_empty()
        client.redis.flushdb()
        assert repo.get_by_id(1) == SearchPathFit(1, "a")
        assert client.pg().execute("SHOW timezone").fetchone() == ("UTC",)
    assert rows(schemas, SCHEMA, "sp_fit") == [(1, "a")]
    assert tables_named(schemas, "sp_fit") == [SCHEMA]


def test_pgoptions_in_the_environment_is_kept_when_the_dsn_has_no_options(
    schemas: Conn, settings: kvfast.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libpq reads PGOPTIONS only when no options are given; kvfast always gives its
    # own, so it must carry PGOPTIONS over itself (and still have the last word on
    # the timezone).
    assert "options" not in conninfo_to_dict(settings.pg_dsn or "")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=atlas_app -c timezone=Asia/Kolkata")
    with psycopg.connect(**pg_connect_kwargs(settings)) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("atlas_app",)
        assert conn.execute("SHOW timezone").fetchone() == ("UTC",)
    # the DSN's own options win over PGOPTIONS, as in libpq
    dsn = with_options(settings.pg_dsn or "", "-c search_path=public", url=True)
    with psycopg.connect(**pg_connect_kwargs(dataclasses.replace(settings, pg_dsn=dsn))) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("public",)
