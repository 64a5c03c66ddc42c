"""A setting's facts, declared once: variable, flag, help, default and expected form.

Each field of a settings dataclass (``kvfast.settings``) carries an ``Opt`` in its
metadata: ``field(default=…, metadata=opt("help", env="KVFAST_X", flag="--x"))``.
Everything else is derived from it, so a setting cannot drift between places:

* ``Declared.from_env`` / ``from_args`` read ``KVFAST_*`` variables and parsed
  flags (a flag wins over its variable; a keyword override over both);
* ``Declared.add_arguments`` builds the argparse options, with help texts that
  show the field's real default;
* ``Declared.__post_init__`` runs each field's check, and a bad value is a
  ``ConfigError`` naming the variable or flag it came from and the value
  (``secret`` fields redacted: never a password);
* ``markdown_table`` writes the README's settings table (a test compares them).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, ClassVar, Self, cast
from urllib.parse import urlsplit, urlunsplit

from kvfast.errors import ConfigError

__all__ = ["Declared", "Opt", "markdown_table", "opt", "redact"]

_KEY = "kvfast"


@dataclass(frozen=True, slots=True)
class Opt:
    """What a setting is outside Python code."""

    help: str
    env: str | None = None
    flag: str | None = None
    #: what a malformed value should have looked like ("an integer from 1 to 64")
    expected: str = "a string"
    #: the text of a variable or flag → the field's value (ValueError if malformed)
    parse: Callable[[str], Any] = str
    #: ``check(name, value)`` raises ConfigError("name=value: …") for a bad value
    check: Callable[[str, Any], None] | None = None
    #: how the default is shown where the value itself would mislead ("CPU count")
    default_text: str | None = None
    #: a URL or DSN that may hold a password: shown only through ``redact``
    secret: bool = False
    metavar: str | None = None
    #: the flag may be repeated; its values are joined with commas before ``parse``
    repeat: bool = False


def opt(
    help: str,
    *,
    env: str | None = None,
    flag: str | None = None,
    expected: str = "a string",
    parse: Callable[[str], Any] = str,
    check: Callable[[str, Any], None] | None = None,
    default_text: str | None = None,
    secret: bool = False,
    metavar: str | None = None,
    repeat: bool = False,
) -> dict[str, Any]:
    """The ``metadata=`` of a declared field."""
    return {_KEY: Opt(help, env, flag, expected, parse, check, default_text, secret, metavar,
                      repeat)}


def declared(cls: type[Any]) -> list[tuple[Field[Any], Opt]]:
    return [(f, f.metadata[_KEY]) for f in fields(cls) if _KEY in f.metadata]


def redact(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (URL and key=value DSN forms)."""
    if not url:
        return ""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return "<unparsable url>"
        # libpq and redis-py also take the password as a query parameter.
        query = re.sub(r"(?i)((?:^|&)(?:ssl)?password=)[^&]*", r"\1***", parts.query)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            try:
                port = parts.port
            except ValueError:
                port = None
            netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(?i)((?:ssl)?password\s*=\s*)('([^'\\]|\\.)*'|\S+)", r"\1***", url)


def _redact(value: Any) -> str:
    return redact(str(value))


class Declared:
    """Base of a frozen settings dataclass whose fields carry ``opt()`` metadata."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def __post_init__(self) -> None:
        for f, o in declared(type(self)):
            if o.check is not None:
                o.check(f.name, getattr(self, f.name))

    def __repr__(self) -> str:
        shown = []
        for f, o in declared(type(self)):
            value = getattr(self, f.name)
            if o.secret and value is not None:
                value = _redact(value)
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """From ``KVFAST_*`` variables; keyword ``overrides`` (not ``None``) win.

        A variable that is set but malformed raises ``ConfigError`` naming it.
        """
        return cls._load(environ, {}, overrides)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> Self:
        """From the flags ``add_arguments`` declared (parsed into ``args``), then variables."""
        flags = {f.name: getattr(args, f.name, None) for f, _ in declared(cls)}
        return cls._load(environ, flags, overrides)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser,
                      names: Iterable[str] | None = None) -> None:
        """One option per declared flag (all of them, or those of ``names``).

        Values stay text here and are parsed by ``from_args``, so a malformed
        flag is the same ``ConfigError`` as a malformed variable.
        """
        wanted = None if names is None else set(names)
        for f, o in declared(cls):
            if o.flag is None or (wanted is not None and f.name not in wanted):
                continue
            kwargs: dict[str, Any] = {"dest": f.name, "default": None,
                                      "help": help_text(f, o, live=True)}
            if f.default is False:
                kwargs["action"] = "store_true"
            else:
                kwargs["metavar"] = o.metavar or f.name.upper()
                if o.repeat:
                    kwargs["action"] = "append"
            parser.add_argument(o.flag, **kwargs)

    @classmethod
    def _load(cls, environ: Mapping[str, str] | None, flags: Mapping[str, Any],
              overrides: Mapping[str, Any]) -> Self:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        #: field name → the variable or flag its value came from
        sources: dict[str, str] = {}
        for f, o in declared(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
                continue  # code wins: the flag and variable are not even parsed
            raw: Any = flags.get(f.name)
            source = o.flag
            if raw is None and o.env is not None and env.get(o.env):
                raw, source = env[o.env], o.env
            if raw is None:
                continue
            assert source is not None
            sources[f.name] = source
            if isinstance(raw, bool):  # a store_true flag
                values[f.name] = raw
                continue
            if isinstance(raw, list):  # a repeated flag
                raw = ",".join(raw)
            try:
                values[f.name] = o.parse(raw)
            except ValueError:
                shown = _redact(raw) if o.secret else raw
                raise ConfigError(f"{source}={shown!r}: expected {o.expected}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cast(Any, cls)(**values)  # type: ignore[no-any-return]
        except ConfigError as exc:
            # Name the variable or flag the bad value came from, not just the field.
            for name, source in sources.items():
                if str(exc).startswith(f"{name}="):
                    raise ConfigError(f"{source}: {exc}") from None
            raise


def default_text(f: Field[Any], o: Opt, *, live: bool = False) -> str:
    """The default as people read it; ``live`` adds what a factory gives on this host."""
    if o.default_text is not None:
        text = o.default_text
        if live and f.default_factory is not MISSING:
            text += f", {f.default_factory()} here"
        return text
    value = f.default
    if value is None or value is False:
        return "none" if value is None else "off"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def help_text(f: Field[Any], o: Opt, *, live: bool = False) -> str:
    """``--help``'s text: the help, the variable and the real default."""
    where = f"env {o.env}; " if o.env else ""
    # argparse %-formats help texts.
    return f"{o.help} ({where}default {default_text(f, o, live=live)})".replace("%", "%%")


def markdown_table(*classes: type[Any]) -> str:
    """The README's settings table: one row per declared setting of ``classes``."""
    rows = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    for cls in classes:
        for f, o in declared(cls):
            flag = f"`{o.flag}{' ' + o.metavar if o.metavar else ''}`" if o.flag else ""
            env = f"`{o.env}`" if o.env else ""
            default = default_text(f, o)
            if o.default_text is None and isinstance(f.default, str | tuple):
                default = f"`{default}`"
            rows.append(f"| {flag} | {env} | {default} | {o.help} |")
    return "\n".join(rows) + "\n"
