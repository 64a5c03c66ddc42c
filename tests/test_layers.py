"""kvfast's modules import only downwards, and never in a cycle.

The layers, bottom first.  A module may import from its own layer or any layer
below; an import that goes up, or a cycle (even inside one layer), fails here.
A new module must be given a layer below.  Imports under ``if TYPE_CHECKING:``
are type-only and are not counted; imports inside functions are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kvfast

LAYERS: list[tuple[str, ...]] = [
    ("errors", "fieldtypes", "generated", "impl"),  # impl: C or Python (issue 12)
    ("pgtypes", "containertypes"),              # declared column types (issue 10)
    ("columns", "indexspec"),                   # annotations → column types; indexable fields
    ("options", "settings", "keys", "retry", "codec", "memory", "holds"),
    ("model",),
    ("pgindex",),                               # PostgreSQL indexes of indexed fields
    ("encoders", "decoders", "schema", "introspect", "demo"),  # introspect: pg_catalog → tables
    ("cencoders", "crows"),                     # the C encoder's and row decoder's plans (issue 12)
    ("resp",),                                  # the Redis wire
    ("drivers", "meta", "cluster", "replicas"),  # driver errors in, connect, slots, WAIT
    ("scripts", "deadletters"),                 # the Lua calls; the dead-letter document
    ("client", "aioclient"),                    # transports
    ("indexmeta", "sweep"),                     # which indexes the sets hold; TTL'd sets pruned
    ("producer", "batch", "versions", "pgcopy"),  # write plans; drain batches
    ("core",),                                  # repository plans
    ("find", "pgpending"),                      # the find plan; a query read later
    ("repository", "aio"),                      # the shells over the core
    ("claims", "holding", "acks"),              # a drainer: leases, held tables, ack marks
    ("drainer",),
    ("stats",),                                 # the supervisor: reports, status, health
    ("worker", "metrics"),                      # the drainer child; Prometheus + /healthz
    ("pool",),                                  # fork, signals, restart
    ("supervisor", "deadletter", "codegen", "loadgen"),  # command lines and tools
    ("reindex",),                               # python -m kvfast.reindex
    ("__init__",),
]

PACKAGE = Path(kvfast.__file__).parent
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The kvfast modules ``path`` imports at run time (``from kvfast import x`` of a
    module counts as that module, of anything else as the package, ``__init__``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "kvfast":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "kvfast":
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    for alias in node.names:
                        found.add(alias.name if alias.name in modules else "__init__")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _graph() -> dict[str, set[str]]:
    paths = {p.stem: p for p in PACKAGE.glob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def test_every_module_has_a_layer() -> None:
    missing = sorted(set(_graph()) - set(LAYER_OF))
    assert not missing, f"give these kvfast modules a layer in tests/test_layers.py: {missing}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"kvfast.{name} (layer {LAYER_OF[name]}) imports kvfast.{dep} (layer {LAYER_OF[dep]})"
        for name, deps in sorted(_graph().items()) if name in LAYER_OF
        for dep in sorted(deps) if dep in LAYER_OF and LAYER_OF[dep] > LAYER_OF[name]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_checker_sees_upward_and_type_only_imports(tmp_path: Path) -> None:
    """The guard itself: a run-time upward import is seen, a TYPE_CHECKING one is not."""
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from kvfast import codec, Repository\n"
        "import kvfast.resp\n"
        "if TYPE_CHECKING:\n"
        "    from kvfast.client import Client\n"
        "def f():\n"
        "    from kvfast.drainer import Drainer\n"
    )
    assert _imports(source, {"codec", "resp", "client", "drainer"}) == {
        "codec", "__init__", "resp", "drainer"
    }
