"""``python -m kvfast.codegen`` as the user runs it, and its output imported as a module."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from drainprocs import ROOT, subprocess_env


def run_codegen(dsn: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The generator as a subprocess, the DSN in ``KVFAST_PG_DSN`` (no other KVFAST_*)."""
    env = subprocess_env({"KVFAST_PG_DSN": dsn} if dsn else None)
    return subprocess.run([sys.executable, "-m", "kvfast.codegen", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def generated(dsn: str, *tables: str) -> str:
    """The module text for ``tables``; asserts exit 0 and nothing on stderr."""
    done = run_codegen(dsn, *tables)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout


def load_module(directory: Path, name: str, source: str) -> ModuleType:
    """``source`` written to ``directory/name.py`` and imported (``directory`` on sys.path)."""
    (directory / f"{name}.py").write_text(source, encoding="utf-8")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def ruff_problems(path: Path) -> str:
    """ruff's findings on ``path`` under the project's configuration ("" when clean)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
         str(ROOT / "pyproject.toml"), str(path)],
        capture_output=True, text=True, timeout=60, check=False)
    return "" if done.returncode == 0 else done.stdout + done.stderr
