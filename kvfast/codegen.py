"""``python -m kvfast.codegen [--dsn DSN] SCHEMA.TABLE …``: models of existing tables.

Prints a ready-to-import module with one ``@kvfast.model`` dataclass per table,
read from pg_catalog (``kvfast.introspect``), that passes the table check as the
table stands (sqlacodegen does the same for SQLAlchemy):

* every column typed the way ``kvfast.columns`` declares it: plain annotations
  where kvfast's default is the column's type (``int`` for bigint, ``str`` for
  text), ``Annotated[…, kvfast.VarChar(255)]`` and the like otherwise;
* PostgreSQL enum types as ``enum.StrEnum`` classes (labels from pg_enum, in
  their order), used through ``kvfast.PgEnum("schema.type")``;
* field names = column names where those are identifiers Python accepts in a
  class body; otherwise a mapped name with ``kvfast.Column("original")``;
* nullable columns ``T | None = None``; a constant default (``'new'``, ``0``,
  ``false``, an enum label, an empty array or JSON object) becomes the field's
  default; other defaults (``now()``,
  sequences) do not: kvfast writes every column, so the field is required and a
  comment says why.  Fields with a default follow the required ones (dataclass
  order; kvfast names columns, so the order is free);
* ``key=`` the primary key, a tuple for a composite one;
* stored generated columns are left out (PostgreSQL computes them; kvfast may
  not write them); a ``GENERATED ALWAYS`` identity column is refused (PostgreSQL
  refuses the values kvfast writes, the table check a model without it).

A column type kvfast cannot model, a table without a primary key, a name that is
not a table: a message naming each table, column and type, exit 2 (4 when
PostgreSQL cannot be reached), nothing printed on stdout.  The output is the same
for the same tables and passes ruff (line length 100).
"""

from __future__ import annotations

import argparse
import dataclasses
import keyword
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from kvfast.client import connect_pg
from kvfast.drivers import pg_errors
from kvfast.errors import ConfigError, ConnectionFailed, KvfastError, SchemaMismatch
from kvfast.introspect import PgColumn, PgTable, PgType, read_tables, split_name
from kvfast.settings import Settings

__all__ = ["RET_CONFIG", "RET_OK", "RET_UNAVAILABLE", "generate", "main"]

# The supervisor's exit codes, where they apply.
RET_OK = 0
RET_CONFIG = 2  # bad arguments, or tables kvfast cannot model
RET_UNAVAILABLE = 4  # PostgreSQL unreachable

_LINE = 100  # the project's ruff line length, which the output keeps to
_INDENT = "    "

#: format_type text of a pg_catalog type → (Python type, column spec or None)
_SCALARS: dict[str, tuple[str, str | None]] = {
    "bigint": ("int", None),
    "integer": ("int", "kvfast.Integer"),
    "smallint": ("int", "kvfast.SmallInt"),
    "text": ("str", None),
    "character varying": ("str", None),  # unbounded: the table check takes it for text
    "numeric": ("Decimal", None),
    "real": ("float", "kvfast.Real"),
    "double precision": ("float", None),
    "timestamp with time zone": ("dt.datetime", None),
    "timestamp without time zone": ("dt.datetime", "kvfast.Timestamp"),
    "date": ("dt.date", None),
    "time without time zone": ("dt.time", None),
    "interval": ("dt.timedelta", None),
    "boolean": ("bool", None),
    "bytea": ("bytes", None),
    "uuid": ("UUID", None),
    # A json column may hold any JSON value; objects are the usual (config, payload).
    "json": ("dict[str, Any]", "kvfast.Json"),
    "jsonb": ("dict[str, Any]", None),
}
_SIZED = (
    (re.compile(r"character\((\d+)\)"), "str", "kvfast.Char({})"),
    (re.compile(r"character varying\((\d+)\)"), "str", "kvfast.VarChar({})"),
    (re.compile(r"numeric\((\d+),(-?\d+)\)"), "Decimal", "kvfast.Numeric({}, {})"),
)
#: element types an array may not have: kvfast's Array refuses json elements, and
#: list[str] means text[], which the table check does not take for varchar[]
_NOT_ELEMENTS = {"json", "jsonb", "character varying"}
_KEY_TYPES = re.compile(r"(smallint|integer|bigint|text|uuid|character( varying)?(\(\d+\))?)")
_SUPPORTED = (
    "smallint, integer, bigint, character(n), character varying(n), text, numeric(p,s), "
    "numeric, real, double precision, timestamp with/without time zone, date, time, "
    "interval, json, jsonb, boolean, bytea, uuid, enum types, and one-dimensional arrays "
    "of these (not of json, enums or unbounded varchar)")

#: names the module binds: a field of that name would shadow it in the class body
_MODULE_NAMES = frozenset(
    {"dataclasses", "dt", "enum", "kvfast", "Annotated", "Any", "Decimal", "UUID"})
#: the import line of each name a module may use, in isort order
_IMPORTS = (
    ("dataclasses", "import dataclasses"),
    ("dt", "import datetime as dt"),
    ("enum", "import enum"),
    ("Decimal", "from decimal import Decimal"),
)


class _Unsupported(Exception):
    """A column kvfast cannot model (the text says why)."""


@dataclasses.dataclass
class _Field:
    name: str
    column: PgColumn
    annotation: str
    default: str | None
    comment: str | None


@dataclasses.dataclass
class _Enum:
    cls: str
    ptype: PgType
    members: list[tuple[str, str]]


class _Module:
    """Names, imports and enums of one generated module."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.classes: set[str] = set(_MODULE_NAMES)
        self.enums: dict[int, _Enum] = {}

    def class_name(self, name: str, schema: str) -> str:
        base = _camel(name)
        candidate = base
        if candidate in self.classes:
            candidate = _camel(schema) + base
        n = 2
        while candidate in self.classes:
            candidate, n = f"{_camel(schema)}{base}{n}", n + 1
        self.classes.add(candidate)
        return candidate

    def enum(self, ptype: PgType) -> _Enum:
        found = self.enums.get(ptype.oid)
        if found is None:
            if "." in ptype.schema:
                raise _Unsupported(f"enum type {ptype.text} is in a schema whose name holds "
                                   "a dot, which kvfast.PgEnum cannot name")
            found = _Enum(self.class_name(ptype.name, ptype.schema), ptype,
                          _members(ptype.labels))
            self.enums[ptype.oid] = found
            self.used.add("enum")
        return found


def generate(tables: Sequence[PgTable], command: str = "") -> str:
    """The module's source; SchemaMismatch naming every table and column it cannot model."""
    module = _Module()
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    unique: list[PgTable] = []
    for table in tables:
        previous = seen.setdefault((table.schema, table.name), table.asked)
        if len(seen) == len(unique):
            problems.append(f"{table.asked}: the same table as {previous!r}, named twice")
            continue
        unique.append(table)
    classes = [_model(module, t, problems) for t in unique]
    if problems:
        if any(" type " in p for p in problems):
            problems.append(f"(kvfast models {_SUPPORTED})")
        raise SchemaMismatch("cannot generate models for these tables:\n  "
                             + "\n  ".join(problems))
    enums = [_enum_source(e) for e in module.enums.values()]
    body = "\n\n\n".join([*enums, *(c for c in classes if c is not None)])
    return _header(unique, command) + _imports(module.used) + "\n\n" + body + "\n"


def _model(module: _Module, table: PgTable, problems: list[str]) -> str | None:
    where = table.asked
    if table.kind not in ("table", "partitioned table"):
        problems.append(f"{where}: is a {table.kind}, not a table kvfast can write to")
        return None
    if not table.primary_key:
        problems.append(f"{where}: has no primary key (kvfast needs one: the model's key)")
        return None
    names = _field_names(table, module)
    fields: list[_Field] = []
    left_out: list[str] = []
    found = len(problems)
    for col in table.columns:
        in_key = col.name in table.primary_key
        if col.generated:
            left_out.append(f"{col.name}: a generated column, left out (PostgreSQL fills it)")
            continue
        try:
            if col.identity == "a":
                # Left out, the table check refuses it (NOT NULL, no default); written,
                # PostgreSQL refuses the value (no OVERRIDING SYSTEM VALUE).
                raise _Unsupported("GENERATED ALWAYS AS IDENTITY: PostgreSQL refuses the "
                                   "values kvfast writes (make it GENERATED BY DEFAULT)")
            if in_key and not _KEY_TYPES.fullmatch(col.type.text):
                raise _Unsupported(f"primary key column of type {col.type.text}: kvfast keys "
                                   "are integer, text, character or uuid columns")
            fields.append(_field(module, names[col.name], col, in_key))
        except _Unsupported as exc:
            problems.append(f"{where}.{col.name}: {exc}")
    if len(problems) > found:
        return None
    cls = module.class_name(table.name, table.schema)
    required = [f for f in fields if f.default is None]
    ordered = required + [f for f in fields if f.default is not None]
    key_fields = [names[c] for c in table.primary_key]
    key = _literal(key_fields[0]) if len(key_fields) == 1 else (
        "(" + ", ".join(_literal(k) for k in key_fields) + ")")
    table_arg = table.asked
    lines = _call("@kvfast.model", [f"table={_literal(table_arg)}", f"key={key}"], "")
    if len(lines) > 1 and len(lines[-2]) > _LINE and len(key_fields) > 1:
        lines[-2:-1] = ([f"{_INDENT}key=("] + [f"{_INDENT * 2}{_literal(k)}," for k in key_fields]
                        + [f"{_INDENT}),"])
    lines.append(f"class {cls}:")
    for f in ordered:
        if f.comment:
            lines.append(_comment(_INDENT, f.comment))
        lines += _assignment(_INDENT, f"{f.name}: ", f.annotation, f.default)
    for note in left_out:
        lines.append(_comment(_INDENT, note))
    return "\n".join(lines)


def _field(module: _Module, name: str, col: PgColumn, in_key: bool) -> _Field:
    base, spec, enum_cls = _column_type(module, col.type)
    nullable = not col.not_null
    metas = [m for m in (spec,) if m]
    if name != col.name:
        metas.append(f"kvfast.Column({_literal(col.name)})")
    typed = f"{base} | None" if nullable else base
    if metas:
        module.used.add("Annotated")
        annotation = f"Annotated[{typed}, {', '.join(metas)}]"
    else:
        annotation = typed
    default, comment = None, None
    if col.default is not None and not in_key:
        default = _python_default(col.default, base, spec, enum_cls)
        if default is not None and default.startswith("dataclasses."):
            module.used.add("dataclasses")
        if default is None and not _is_null(col.default):
            comment = (f"PostgreSQL default {col.default}: kvfast writes every column, "
                       "so give a value")
    if default is None and nullable:
        default = "None"
    if col.identity == "d":
        comment = "identity column: kvfast writes every column, so give the key a value"
    return _Field(name, col, annotation, default, comment)


def _column_type(module: _Module, ptype: PgType) -> tuple[str, str | None, _Enum | None]:
    """(Python type, spec or None, the enum class for an enum column)."""
    if ptype.kind == "e":
        found = module.enum(ptype)
        return found.cls, f"kvfast.PgEnum({_literal(ptype.schema + '.' + ptype.name)})", found
    if ptype.element is not None:
        element = ptype.element
        if element.kind == "e" or element.text in _NOT_ELEMENTS:
            raise _Unsupported(f"type {ptype.text}: kvfast has no arrays of {element.text}")
        py, spec = _scalar(module, element, ptype.text)
        array = "kvfast.Array" if spec is None else f"kvfast.Array({spec})"
        return f"list[{py}]", array, None
    py, spec = _scalar(module, ptype, ptype.text)
    return py, spec, None


def _scalar(module: _Module, ptype: PgType, column_text: str) -> tuple[str, str | None]:
    if ptype.kind == "d":
        raise _Unsupported(f"type {ptype.text} is a domain over {ptype.base}: kvfast models "
                           "the column's own type, not domains")
    if ptype.schema == "pg_catalog" and ptype.kind == "b":
        if ptype.text in _SCALARS:
            py, spec = _SCALARS[ptype.text]
            _note_imports(module, py)
            return py, spec
        for pattern, py, spec_format in _SIZED:
            m = pattern.fullmatch(ptype.text)
            if m:
                _note_imports(module, py)
                return py, spec_format.format(*m.groups())
    raise _Unsupported(f"type {column_text} is not a type kvfast models")


def _note_imports(module: _Module, py: str) -> None:
    for name in ("dt", "Decimal", "UUID", "Any"):
        if re.search(rf"\b{name}\b", py):
            module.used.add(name)


# -- defaults ---------------------------------------------------------------------------

_STRING = re.compile(r"'((?:[^']|'')*)'(?:::[\w\s.\"\[\](),]+)?")
_NUMBER = re.compile(r"\(?(-?\d+(?:\.\d+)?)\)?(?:::[a-z ]+)?")


def _python_default(expr: str, base: str, spec: str | None, enum_cls: _Enum | None) -> str | None:
    """The Python literal of a constant default expression, else None."""
    m = _STRING.fullmatch(expr)
    text = m.group(1).replace("''", "'") if m else None
    if text is None and (n := _NUMBER.fullmatch(expr)):
        text = n.group(1)
    if enum_cls is not None:
        for member, label in enum_cls.members:
            if label == text:
                return f"{enum_cls.cls}.{member}"
        return None
    # An empty array or JSON object: a fresh one per instance (dataclasses refuse a
    # shared mutable default).
    if base.startswith("list[") and text == "{}":
        return "dataclasses.field(default_factory=list)"
    if base.startswith("dict[") and text == "{}":
        return "dataclasses.field(default_factory=dict)"
    if base == "bool" and expr in ("true", "false"):
        return "True" if expr == "true" else "False"
    if text is None:
        return None
    if base == "str":
        if spec is not None and spec.startswith("kvfast.Char("):
            text = text.rstrip(" ")  # character(n) drops trailing spaces (kvfast.columns)
        return _literal(text)
    if base == "int" and re.fullmatch(r"-?\d+", text):
        return str(int(text))
    if base == "Decimal" and re.fullmatch(r"-?\d+(\.\d+)?", text):
        return f"Decimal({_literal(text)})"
    if base == "float" and re.fullmatch(r"-?\d+(\.\d+)?", text):
        return repr(float(text))
    return None


def _is_null(expr: str) -> bool:
    return expr == "NULL" or expr.startswith("NULL::")


# -- names ------------------------------------------------------------------------------


def _field_names(table: PgTable, module: _Module) -> dict[str, str]:
    """Column → field name: the column's own where Python takes it in a class body."""
    enum_classes = {module.enum(c.type).cls for c in table.columns
                    if c.type.kind == "e" and "." not in c.type.schema}
    taken = set(_MODULE_NAMES) | enum_classes
    own = {c.name for c in table.columns if _plain_name(c.name, taken)}
    names: dict[str, str] = {}
    used: set[str] = set()
    for col in table.columns:
        if col.name in own:
            names[col.name] = col.name
            used.add(col.name)
    for col in table.columns:
        if col.name in own:
            continue
        candidate = re.sub(r"\W", "_", col.name)
        if not candidate or candidate[0].isdigit() or candidate.startswith("__"):
            candidate = "c_" + candidate
        while keyword.iskeyword(candidate) or candidate in taken or candidate in used \
                or candidate in own:
            candidate += "_"
        names[col.name] = candidate
        used.add(candidate)
    return names


def _plain_name(name: str, taken: set[str]) -> bool:
    # A name starting with "__" would be mangled in the class body.
    return (name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")
            and name not in taken)


def _camel(name: str) -> str:
    parts = [p for p in re.split(r"[\W_]+", name) if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts)
    if not out or not out.isidentifier() or keyword.iskeyword(out):
        out = "T" + out
        if not out.isidentifier():
            out = "T"
    return out


def _members(labels: tuple[str, ...]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for label in labels:
        name = re.sub(r"\W", "_", label).upper()
        # Enum reserves _sunder_ and __dunder__ names; a leading digit is no identifier.
        if not name or name[0].isdigit() or name.startswith("_"):
            name = "V_" + name
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out.append((name, label))
    return out


# -- source text ------------------------------------------------------------------------


def _literal(text: str) -> str:
    """A double-quoted Python string literal."""
    r = repr(text)
    if r.startswith("'") and '"' not in text:
        r = '"' + r[1:-1].replace("\\'", "'") + '"'
    return r


def _doc(text: str) -> str:
    """``text`` safe inside a docstring (a table name may hold quotes, backslashes,
    control characters)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def _header(tables: Sequence[PgTable], command: str) -> str:
    names = ", ".join(_doc(t.asked) for t in tables)
    lines = textwrap.wrap(f"kvfast models of {names}.", _LINE - 3,
                          break_long_words=False, break_on_hyphens=False)
    lines[0] = '"""' + lines[0]
    lines += ["", textwrap.shorten(f"Generated by ``{_doc(command)}``", _LINE - 4,
                                   placeholder=" ...``"),
              "from the tables as they stand (README.md, \"Generating models\")."]
    return "\n".join(lines) + '\n"""\n\n'


def _imports(used: set[str]) -> str:
    lines = [line for name, line in _IMPORTS if name in used]
    typing_names = [n for n in ("Annotated", "Any") if n in used]
    if typing_names:
        lines.append(f"from typing import {', '.join(typing_names)}")
    if "UUID" in used:
        lines.append("from uuid import UUID")
    return "\n".join([*lines, "", "import kvfast", ""]) if lines else "import kvfast\n"


def _enum_source(e: _Enum) -> str:
    lines = [f"class {e.cls}(enum.StrEnum):",
             f'{_INDENT}"""The enum type {_doc(e.ptype.schema)}.{_doc(e.ptype.name)}."""']
    if len(lines[1]) > _LINE:
        lines[1] = f'{_INDENT}"""The enum type of pg_enum {e.ptype.oid}."""'
    lines.append("")
    for name, label in e.members:
        lines += _assignment(_INDENT, f"{name} = ", _literal(label), None, wrap="(")
    return "\n".join(lines)


def _assignment(indent: str, head: str, value: str, default: str | None,
                wrap: str = "Annotated[") -> list[str]:
    tail = f" = {default}" if default is not None else ""
    line = f"{indent}{head}{value}{tail}"
    if len(line) <= _LINE:
        return [line]
    if wrap == "(":
        return [f"{indent}{head}(", f"{indent}{_INDENT}{value}", f"{indent})"]
    if value.startswith("Annotated[") and value.endswith("]"):
        items = _split_args(value[len("Annotated["):-1])
        return ([f"{indent}{head}Annotated["]
                + [f"{indent}{_INDENT}{item}," for item in items]
                + [f"{indent}]{tail}"])
    return [line]


def _call(name: str, args: list[str], indent: str) -> list[str]:
    line = f"{indent}{name}({', '.join(args)})"
    if len(line) <= _LINE:
        return [line]
    return [f"{indent}{name}("] + [f"{indent}{_INDENT}{a}," for a in args] + [f"{indent})"]


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated items of ``text`` (brackets and strings respected)."""
    items: list[str] = []
    depth, start, quote = 0, 0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
        i += 1
    items.append(text[start:].strip())
    return items


def _comment(indent: str, text: str) -> str:
    line = f"{indent}# {' '.join(text.split())}"
    return line if len(line) <= _LINE else line[: _LINE - 3] + "..."


# -- command line -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kvfast.codegen",
        description="Print a module of kvfast models, one per table, read from PostgreSQL's "
        "catalog. Exit 2 when a table cannot be modelled (the message names table, column "
        "and type), 4 when PostgreSQL cannot be reached.")
    p.add_argument("tables", nargs="+", metavar="SCHEMA.TABLE",
                   help="a table in a schema, or TABLE alone (found through the search_path)")
    p.add_argument("--dsn", "--pg-dsn", dest="pg_dsn", metavar="DSN",
                   help="PostgreSQL DSN or URL (env KVFAST_PG_DSN)")
    Settings.add_arguments(p, ("pg_connect_timeout",))
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the module to FILE (only when every table was modelled) "
                   "instead of stdout")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_args(args)
        if not settings.pg_dsn:
            raise ConfigError("no PostgreSQL DSN: pass --dsn or set KVFAST_PG_DSN")
        for name in args.tables:
            try:
                split_name(name)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        with pg_errors(settings), connect_pg(settings) as conn:
            tables = read_tables(conn, args.tables)
        source = generate(tables, " ".join(["python -m kvfast.codegen", *args.tables]))
    except (ConfigError, SchemaMismatch) as exc:  # AuthenticationFailed too
        print(f"kvfast.codegen: {exc}", file=sys.stderr)
        return RET_CONFIG
    except ConnectionFailed as exc:
        print(f"kvfast.codegen: {exc}", file=sys.stderr)
        return RET_UNAVAILABLE
    except KvfastError as exc:
        print(f"kvfast.codegen: {exc}", file=sys.stderr)
        return RET_CONFIG
    if args.output:
        try:
            Path(args.output).write_text(source, encoding="utf-8")
        except OSError as exc:
            print(f"kvfast.codegen: --output {args.output}: {exc.strerror}", file=sys.stderr)
            return RET_CONFIG
    else:
        sys.stdout.write(source)
    return RET_OK


if __name__ == "__main__":
    sys.exit(main())
