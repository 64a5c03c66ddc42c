"""The one place that chooses between kvfast's C and pure-Python implementations.

``KVFAST_IMPL`` (read once, at import):

* unset: ``c`` when the extension ``kvfast._speedups`` was built, else
  ``python`` with one ``RuntimeWarning`` saying why (``pip install .`` builds
  the extension when a compiler and the Python headers are there; the build is
  optional so that a machine without them still installs);
* ``c``: the extension, or ``ImportError`` when it is missing (never a silent
  fallback when C was asked for);
* ``python``: the reference implementation, whether or not the extension is built.

The model is psycopg's ``psycopg/pq/__init__.py`` (``PSYCOPG_IMPL``).  ``IMPL``
names the choice; pytest's header, the supervisor's start-up line and the
benchmark table print it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

__all__ = ["IMPL", "require_speedups", "speedups"]

_CHOICES = ("c", "python")


def _choose() -> tuple[str, ModuleType | None]:
    wanted = os.environ.get("KVFAST_IMPL", "").strip().lower()
    if wanted and wanted not in _CHOICES:
        raise ImportError(
            f"KVFAST_IMPL={os.environ['KVFAST_IMPL']!r} is not an implementation: "
            f"use {' or '.join(_CHOICES)}")
    if wanted == "python":
        return "python", None
    try:
        module = importlib.import_module("kvfast._speedups")
    except ImportError as exc:
        if wanted == "c":
            raise ImportError(
                "KVFAST_IMPL=c but the C extension kvfast._speedups is not built "
                f"({exc}); reinstall kvfast with a C compiler and the Python headers "
                "(apt-get install gcc python3-dev), or set KVFAST_IMPL=python") from exc
        warnings.warn(
            "kvfast: the C extension kvfast._speedups is not built "
            f"({exc}); using the pure-Python encoders (slower). Reinstall with a C "
            "compiler and the Python headers, or set KVFAST_IMPL=python to silence this.",
            RuntimeWarning, stacklevel=2)
        return "python", None
    return "c", module


def require_speedups() -> ModuleType:
    """The extension whatever ``IMPL`` is (the tests compare both), or ImportError."""
    if speedups is not None:
        return speedups
    # The extension is not a .py module: imported by name (no layer of its own).
    return importlib.import_module("kvfast._speedups")


#: "c" or "python": the implementation this process uses
IMPL: str
#: the extension module when ``IMPL == "c"``, else None
speedups: ModuleType | None
IMPL, speedups = _choose()
