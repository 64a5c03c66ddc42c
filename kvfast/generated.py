"""Compiling the generated encoders and decoders so that tracebacks show their lines.

``compile()`` of a string leaves no source behind: a failure inside generated
code printed ``File "<kvfast encoder Booking>", line 23`` and nothing else.
``build_function`` registers the source with ``linecache`` under the filename it
compiles with (so ``traceback`` prints the failing line) and keeps it on the
function as ``__kvfast_source__`` for debugging.
"""

from __future__ import annotations

import linecache
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["build_function"]

_lock = threading.Lock()


def build_function(source: str, filename: str, ns: dict[str, Any], name: str) -> Any:
    """Compile ``source`` (which defines ``name``) as ``filename`` in ``ns``; return it."""
    if not source.endswith("\n"):
        source += "\n"
    with _lock:
        filename = _unused(filename, source)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), ns)
    fn: Callable[..., Any] = ns[name]
    fn.__kvfast_source__ = source  # type: ignore[attr-defined]
    return fn


def _unused(filename: str, source: str) -> str:
    """``filename``, or ``filename`` with a number when another source holds it (two
    models of one name in different modules)."""
    candidate, n = filename, 1
    while True:
        entry = linecache.cache.get(candidate)
        if entry is None or (len(entry) == 4 and "".join(entry[2]) == source):
            return candidate
        n += 1
        candidate = f"{filename[:-1]} #{n}>" if filename.endswith(">") else f"{filename} #{n}"
