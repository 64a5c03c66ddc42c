"""Settings from code and from KVFAST_* variables; their errors; secrets kept out of text;
the error tree and the translation of connection errors."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import pathlib
import socket
from typing import Any

import psycopg
import pytest
import redis
from models import Everything

import kvfast
from kvfast.client import redis_client
from kvfast.options import Opt
from kvfast.settings import SupervisorOptions, redact, settings_table

SECRET = "hunter2SECRET"


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- defaults and each variable -------------------------------------------------------


def test_defaults_from_an_empty_environment() -> None:
    s = kvfast.Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.pg_dsn is None
    assert s.partitions == 64
    assert s.batch_size == 2000
    assert s.drain_interval_ms == 100
    assert s.workers == (os.cpu_count() or 1)
    assert s.lease_ms == 5000
    assert s.namespace == "kvfast"
    assert s == kvfast.Settings()


@pytest.mark.parametrize(
    ("var", "raw", "attr", "expected"),
    [
        ("KVFAST_REDIS_URL", "redis://cache.internal:7000/3", "redis_url",
         "redis://cache.internal:7000/3"),
        ("KVFAST_REDIS_URL", "unix:///run/redis.sock?db=2", "redis_url",
         "unix:///run/redis.sock?db=2"),
        ("KVFAST_PG_DSN", "host=db.internal dbname=app user=kv", "pg_dsn",
         "host=db.internal dbname=app user=kv"),
        ("KVFAST_PG_DSN", "postgresql://kv@db.internal:5433/app", "pg_dsn",
         "postgresql://kv@db.internal:5433/app"),
        ("KVFAST_PARTITIONS", "16", "partitions", 16),
        ("KVFAST_PARTITIONS", " 16384 ", "partitions", 16384),
        ("KVFAST_PARTITIONS", "1", "partitions", 1),
        ("KVFAST_BATCH_SIZE", "500", "batch_size", 500),
        ("KVFAST_DRAIN_INTERVAL_MS", "250", "drain_interval_ms", 250),
        ("KVFAST_WORKERS", "3", "workers", 3),
        ("KVFAST_LEASE_MS", "9000", "lease_ms", 9000),
        ("KVFAST_NAMESPACE", "app-1.x_y", "namespace", "app-1.x_y"),
        ("KVFAST_REDIS_SOCKET_TIMEOUT", "2.5", "redis_socket_timeout", 2.5),
        ("KVFAST_REDIS_CONNECT_TIMEOUT", "1", "redis_connect_timeout", 1.0),
        ("KVFAST_PG_CONNECT_TIMEOUT", "3", "pg_connect_timeout", 3),
    ],
)
def test_each_variable_is_read(var: str, raw: str, attr: str, expected: Any) -> None:
    s = kvfast.Settings.from_env({var: raw})
    assert getattr(s, attr) == expected
    # Every other setting keeps its default.
    default = kvfast.Settings()
    for f in dataclasses.fields(s):
        if f.name != attr:
            assert getattr(s, f.name) == getattr(default, f.name), f.name


def test_an_empty_variable_means_the_default() -> None:
    s = kvfast.Settings.from_env({"KVFAST_PARTITIONS": "", "KVFAST_PG_DSN": ""})
    assert s.partitions == 64
    assert s.pg_dsn is None


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVFAST_PARTITIONS", "12")
    monkeypatch.setenv("KVFAST_NAMESPACE", "fromenv")
    s = kvfast.Settings.from_env()
    assert (s.partitions, s.namespace) == (12, "fromenv")


@pytest.mark.parametrize(
    ("var", "raw", "name"),
    [("KVFAST_PARTITIONS", "0", "partitions"), ("KVFAST_NAMESPACE", "bad name!", "namespace")],
)
def test_an_override_of_none_still_names_the_variable_of_a_bad_value(
    var: str, raw: str, name: str
) -> None:
    """``None`` overrides are ignored (a command-line flag left unset), so the bad value
    came from the environment and its error must name the variable."""
    with pytest.raises(kvfast.ConfigError) as excinfo:
        kvfast.Settings.from_env({var: raw}, **{name: None})
    assert var in str(excinfo.value)


def test_keyword_overrides_win_over_the_environment() -> None:
    s = kvfast.Settings.from_env({"KVFAST_PARTITIONS": "12", "KVFAST_WORKERS": "3"}, partitions=5)
    assert (s.partitions, s.workers) == (5, 3)


def test_settings_are_frozen_and_keyword_only() -> None:
    s = kvfast.Settings(partitions=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.partitions = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        kvfast.Settings("redis://127.0.0.1:6379/0")  # type: ignore[misc]


# -- bad values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("KVFAST_PARTITIONS", "abc"),
        ("KVFAST_PARTITIONS", "1.5"),
        ("KVFAST_PARTITIONS", "0"),
        ("KVFAST_PARTITIONS", "-3"),
        ("KVFAST_PARTITIONS", "16385"),
        ("KVFAST_BATCH_SIZE", "lots"),
        ("KVFAST_BATCH_SIZE", "0"),
        ("KVFAST_DRAIN_INTERVAL_MS", "soon"),
        ("KVFAST_DRAIN_INTERVAL_MS", "0"),
        ("KVFAST_WORKERS", "many"),
        ("KVFAST_WORKERS", "0"),
        ("KVFAST_WORKERS", "5000"),
        ("KVFAST_LEASE_MS", "99"),
        ("KVFAST_LEASE_MS", "1e3"),
        ("KVFAST_NAMESPACE", "has space"),
        ("KVFAST_NAMESPACE", "a}b{"),
        ("KVFAST_NAMESPACE", "n" * 65),
        ("KVFAST_REDIS_URL", "http://127.0.0.1:6379/0"),
        ("KVFAST_REDIS_URL", "127.0.0.1:6379"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(var: str, raw: str) -> None:
    with pytest.raises(kvfast.ConfigError) as excinfo:
        kvfast.Settings.from_env({var: raw})
    assert var in str(excinfo.value)
    assert isinstance(excinfo.value, kvfast.KvfastError)
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize("raw", ["this is not a dsn", "host=db port"])
def test_a_malformed_pg_dsn_is_a_config_error_naming_the_variable(raw: str) -> None:
    """KVFAST_PG_DSN is parsed like every other variable (libpq would refuse it later)."""
    with pytest.raises(psycopg.ProgrammingError):
        psycopg.conninfo.conninfo_to_dict(raw)  # libpq itself calls it malformed
    with pytest.raises(kvfast.ConfigError) as excinfo:
        kvfast.Settings.from_env({"KVFAST_PG_DSN": raw})
    assert "KVFAST_PG_DSN" in str(excinfo.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"partitions": 0}, "partitions"),
        ({"partitions": True}, "partitions"),
        ({"partitions": "8"}, "partitions"),
        ({"batch_size": -1}, "batch_size"),
        ({"lease_ms": 10}, "lease_ms"),
        ({"namespace": ""}, "namespace"),
        ({"redis_url": "memcached://h"}, "redis_url"),
    ],
)
def test_bad_values_in_code_name_the_setting(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(kvfast.ConfigError, match=name):
        kvfast.Settings(**kwargs)


def test_a_bad_redis_url_error_does_not_show_its_password() -> None:
    with pytest.raises(kvfast.ConfigError) as excinfo:
        kvfast.Settings.from_env({"KVFAST_REDIS_URL": f"http://app:{SECRET}@cache:6379/0"})
    text = str(excinfo.value)
    assert "KVFAST_REDIS_URL" in text
    assert "cache" in text
    assert SECRET not in text
    assert SECRET not in repr(excinfo.value)


# -- TLS URLs and passwords ------------------------------------------------------------


def test_rediss_urls_are_accepted_and_use_tls() -> None:
    s = kvfast.Settings.from_env({"KVFAST_REDIS_URL": f"rediss://app:{SECRET}@cache:6380/1"})
    assert s.redis_url == f"rediss://app:{SECRET}@cache:6380/1"
    with kvfast.Client(s) as client:
        assert SECRET not in repr(client)
    # what Client connects with (no I/O yet: no server needed)
    with contextlib.closing(redis_client(s)) as conn:
        pool = conn.connection_pool
        assert issubclass(pool.connection_class, redis.SSLConnection)
        assert pool.connection_kwargs["password"] == SECRET


@pytest.mark.parametrize(
    ("attr", "url"),
    [
        ("redis_url", f"redis://:{SECRET}@127.0.0.1:6379/0"),
        ("redis_url", f"redis://app:{SECRET}@127.0.0.1:6379/0"),
        ("redis_url", f"rediss://app:{SECRET}@[::1]:6380/0"),
        ("pg_dsn", f"postgresql://kv:{SECRET}@db:5432/app"),
        ("pg_dsn", f"host=db user=kv password={SECRET} dbname=app"),
        ("pg_dsn", f"host=db password = '{SECRET} with spaces' dbname=app"),
    ],
)
def test_passwords_never_appear_in_repr_or_str(attr: str, url: str) -> None:
    s = kvfast.Settings(**{attr: url})
    assert getattr(s, attr) == url  # the real value is kept for connecting
    for text in (repr(s), str(s), f"{s}", repr(kvfast.Repository(Everything, s))):
        assert SECRET not in text
        assert "***" in text


@pytest.mark.parametrize(
    ("attr", "url"),
    [
        ("pg_dsn", f"postgresql://kv@db:5432/app?password={SECRET}"),
        ("redis_url", f"redis://127.0.0.1:6379/0?password={SECRET}"),
    ],
)
def test_passwords_given_as_url_query_parameters_are_redacted(attr: str, url: str) -> None:
    """libpq and redis-py both take ``?password=`` in a URL; it is as secret as ``:pw@``."""
    if attr == "redis_url":
        assert redis.connection.parse_url(url)["password"] == SECRET
    else:
        assert psycopg.conninfo.conninfo_to_dict(url)["password"] == SECRET
    s = kvfast.Settings(**{attr: url})
    assert SECRET not in redact(url)
    assert SECRET not in repr(s)


# -- connection errors -------------------------------------------------------------------


def test_redis_unavailable_keeps_the_cause_and_hides_the_password() -> None:
    url = f"redis://app:{SECRET}@127.0.0.1:{closed_port()}/0"
    with kvfast.Repository(Everything, kvfast.Settings(redis_url=url, partitions=8)) as repo:
        for call in (lambda: repo.get_by_id(1), lambda: repo.delete(1)):
            with pytest.raises(kvfast.RedisUnavailable) as excinfo:
                call()
            exc = excinfo.value
            assert isinstance(exc, kvfast.ConnectionFailed)
            assert isinstance(exc, kvfast.KvfastError)
            assert isinstance(exc, ConnectionError)
            assert isinstance(exc.__cause__, redis.ConnectionError)
            assert SECRET not in str(exc)
            assert SECRET not in repr(exc)
            assert "127.0.0.1" in str(exc)


def test_postgres_unavailable_keeps_the_cause_and_hides_the_password(
    settings: kvfast.Settings,
) -> None:
    dsn = f"postgresql://kv:{SECRET}@127.0.0.1:{closed_port()}/app"
    s = dataclasses.replace(settings, pg_dsn=dsn)
    # A Redis miss reads through to PostgreSQL, which is not there.
    with (
        kvfast.Repository(Everything, s) as repo,
        pytest.raises(kvfast.PostgresUnavailable) as excinfo,
    ):
        repo.get_by_id(1)
    exc = excinfo.value
    assert isinstance(exc, kvfast.ConnectionFailed)
    assert isinstance(exc.__cause__, psycopg.OperationalError)
    assert SECRET not in str(exc)
    assert "127.0.0.1" in str(exc)


# -- the error tree ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "parents"),
    [
        (kvfast.ConfigError, (kvfast.KvfastError, ValueError)),
        (kvfast.PartitionMismatch, (kvfast.ConfigError,)),
        (kvfast.ModelError, (kvfast.KvfastError, TypeError)),
        (kvfast.SchemaMismatch, (kvfast.KvfastError,)),
        (kvfast.ValidationError, (kvfast.KvfastError, ValueError)),
        (kvfast.NotFound, (kvfast.KvfastError, LookupError)),
        (kvfast.DecodeError, (kvfast.KvfastError, ValueError)),
        (kvfast.ConnectionFailed, (kvfast.KvfastError, ConnectionError)),
        (kvfast.RedisUnavailable, (kvfast.ConnectionFailed,)),
        (kvfast.PostgresUnavailable, (kvfast.ConnectionFailed,)),
        (kvfast.AuthenticationFailed, (kvfast.ConfigError,)),
        (kvfast.WriteOutcomeUnknown, (kvfast.RedisUnavailable,)),
    ],
)
def test_errors_form_one_tree(cls: type[Exception], parents: tuple[type, ...]) -> None:
    assert issubclass(cls, kvfast.KvfastError)
    for parent in parents:
        assert issubclass(cls, parent)
    assert not issubclass(kvfast.KvfastError, (ValueError, LookupError, ConnectionError))


def test_not_found_and_validation_error_carry_what_they_name() -> None:
    nf = kvfast.NotFound("Booking", list(range(12)))
    assert nf.model == "Booking"
    assert nf.keys == list(range(12))
    assert "Booking" in str(nf) and "(and 2 more)" in str(nf)
    ve = kvfast.ValidationError("Booking", "fare", "x" * 1000, "expected int")
    assert (ve.model, ve.field, ve.reason) == ("Booking", "fare", "expected int")
    assert ve.value == "x" * 1000
    assert str(ve).startswith("Booking.fare = 'xxx")
    assert len(str(ve)) < 200  # a huge value is shortened in the message


# -- one declaration per setting: variables, flags, help, README ---------------------------

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
TABLE_START = ("<!-- generated by kvfast.settings.settings_table(); "
               "tests/test_settings.py checks it -->")
TABLE_END = "<!-- end of the generated table -->"


def test_every_field_declares_its_variable_or_flag() -> None:
    for cls in (kvfast.Settings, SupervisorOptions):
        for f in dataclasses.fields(cls):
            o = f.metadata.get("kvfast")
            assert isinstance(o, Opt), f"{cls.__name__}.{f.name} has no opt() metadata"
            assert o.env or o.flag, f.name
            assert len(o.help) > 15, f"{f.name} has no real explanation"


def test_the_readme_settings_table_is_the_declared_one() -> None:
    """The README's table is generated from the fields' metadata
    (``kvfast.settings.settings_table()``): paste its output between the markers."""
    text = README.read_text()
    assert TABLE_START in text and TABLE_END in text
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].lstrip("\n")
    assert table == settings_table(), "README.md's settings table is stale; put this there:\n" + (
        settings_table())
    # And it lists exactly the declared settings, each with its variable, flag, default.
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    declared = [(f, f.metadata["kvfast"]) for cls in (kvfast.Settings, SupervisorOptions)
                for f in dataclasses.fields(cls)]
    assert len(rows) == len(declared)
    for row, (f, o) in zip(rows, declared, strict=True):
        default = o.default_text or (
            ",".join(f.default) if isinstance(f.default, tuple) else str(f.default))
        for fact in (o.env, o.flag, default):
            if fact and fact not in ("None", "False"):  # shown as "none" / "off"
                assert fact in row, (f.name, fact, row)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    kvfast.Settings.add_arguments(parser)
    SupervisorOptions.add_arguments(parser)
    return parser.parse_args(argv)


def test_help_texts_show_the_fields_real_defaults() -> None:
    parser = argparse.ArgumentParser()
    kvfast.Settings.add_arguments(parser)
    SupervisorOptions.add_arguments(parser)
    helps = {a.dest: a.help or "" for a in parser._actions}
    assert "default 64" in helps["partitions"] and "KVFAST_PARTITIONS" in helps["partitions"]
    assert f"{os.cpu_count() or 1} here" in helps["workers"]
    assert "default kvfast.demo" in helps["models"] and "KVFAST_MODELS" in helps["models"]
    for cls in (kvfast.Settings, SupervisorOptions):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING and f.default not in (None, False, ()):
                shown = ",".join(f.default) if isinstance(f.default, tuple) else str(f.default)
                assert f"default {shown}" in helps[f.name], (f.name, helps[f.name])


def test_flags_win_over_variables_and_code_over_both() -> None:
    env = {"KVFAST_BATCH_SIZE": "7", "KVFAST_LEASE_MS": "3000", "KVFAST_MODELS": "a, b.c,"}
    args = _parse(["--batch-size", "13", "--models", "x", "--models", "y,z", "--create-tables"])
    s = kvfast.Settings.from_args(args, env)
    assert (s.batch_size, s.lease_ms) == (13, 3000)
    assert kvfast.Settings.from_args(args, env, batch_size=5).batch_size == 5
    o = SupervisorOptions.from_args(args, env)
    assert o.models == ("x", "y", "z") and o.create_tables and not o.drain_until_empty
    assert SupervisorOptions.from_env(env).models == ("a", "b.c")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--batch-size", "abc"], "--batch-size='abc'"),
        (["--batch-size", "0"], "--batch-size"),
        (["--workers", "2.5"], "--workers='2.5'"),
        (["--namespace", "bad name!"], "--namespace"),
    ],
)
def test_a_bad_flag_is_a_config_error_naming_the_flag_and_value(argv: list[str],
                                                                named: str) -> None:
    with pytest.raises(kvfast.ConfigError) as excinfo:
        kvfast.Settings.from_args(_parse(argv), {})
    assert named in str(excinfo.value)
    assert argv[1] in str(excinfo.value)


def test_a_bad_url_flag_hides_its_password() -> None:
    with pytest.raises(kvfast.ConfigError) as excinfo:
        kvfast.Settings.from_args(_parse(["--redis-url", f"http://app:{SECRET}@cache:1/0"]), {})
    assert "--redis-url" in str(excinfo.value) and "cache" in str(excinfo.value)
    assert SECRET not in str(excinfo.value)


def test_supervisor_options_defaults_and_variables() -> None:
    o = SupervisorOptions.from_env({})
    assert o == SupervisorOptions()
    assert (o.models, o.metrics_port, o.log_level, o.status_interval) == (
        ("kvfast.demo",), 0, "INFO", 5.0)
    o = SupervisorOptions.from_env({"KVFAST_METRICS_PORT": "9187", "KVFAST_LOG_LEVEL": "debug",
                                    "KVFAST_STATUS_INTERVAL": "0.5"})
    assert (o.metrics_port, o.level, o.status_interval) == (9187, logging.DEBUG, 0.5)


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("KVFAST_METRICS_PORT", "http"),
        ("KVFAST_METRICS_PORT", "70000"),
        ("KVFAST_LOG_LEVEL", "LOUD"),
        ("KVFAST_STATUS_INTERVAL", "often"),
        ("KVFAST_STATUS_INTERVAL", "0"),
        ("KVFAST_MODELS", " , "),
    ],
)
def test_a_bad_supervisor_variable_names_itself_and_its_value(var: str, raw: str) -> None:
    with pytest.raises(kvfast.ConfigError) as excinfo:
        SupervisorOptions.from_env({var: raw})
    assert var in str(excinfo.value)
    if raw.strip(" ,"):
        assert raw in str(excinfo.value)


def test_timeouts_reach_the_drivers() -> None:
    """The Redis socket and connect timeouts and libpq's connect_timeout are settings
    (before: redis-py's defaults and a hard-coded 10 s)."""
    from kvfast.drivers import pg_connect_kwargs

    s = kvfast.Settings(redis_socket_timeout=2.5, redis_connect_timeout=1.5,
                        pg_connect_timeout=4, pg_dsn="host=db dbname=app")
    assert s.redis_socket_timeout == 2.5
    with contextlib.closing(redis_client(s)) as conn:  # what Client connects with
        kwargs = conn.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.5, 1.5)
    assert pg_connect_kwargs(s)["connect_timeout"] == 4
    for bad in ({"redis_socket_timeout": 0}, {"pg_connect_timeout": 0},
                {"redis_connect_timeout": -1}):
        with pytest.raises(kvfast.ConfigError, match=next(iter(bad))):
            kvfast.Settings(**bad)
