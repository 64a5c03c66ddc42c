"""The sdist carries what a build needs, and a wheel built from it carries the C extension.

Issue 12 asks that ``pip wheel .`` builds a platform wheel and that the sdist
builds.  The C sources are the part that goes missing silently: setuptools puts
an extension's ``sources`` into the sdist but not the headers they include, and
an optional extension that fails to compile still produces a (pure-Python)
wheel.  So this builds the sdist from the checkout, checks every C file of
``kvfast/`` is in it, builds a wheel *from that sdist* (not from the checkout)
and checks the wheel holds a compiled ``kvfast._speedups`` that loads.

``--no-isolation`` / ``--no-build-isolation``: the build uses this virtualenv's
setuptools, so the test needs no network.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = ROOT) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    _run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out))
    (found,) = out.glob("kvfast-*.tar.gz")
    return found


def _members(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        # "kvfast-0.1.0/kvfast/x.py" → "kvfast/x.py"
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_the_sdist_holds_every_c_source_lua_script_and_build_file(sdist: Path) -> None:
    members = _members(sdist)
    wanted = {"setup.py", "pyproject.toml", "README.md", "kvfast/py.typed"}
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "kvfast").glob("*.[ch]")}
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "kvfast" / "lua").glob("*.lua")}
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "kvfast").glob("*.py")}
    assert any(name.endswith(".c") for name in wanted)
    missing = sorted(wanted - members)
    assert not missing, f"the sdist lacks {missing}"


def test_a_wheel_built_from_the_sdist_holds_a_loadable_extension(
        sdist: Path, tmp_path: Path) -> None:
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp_path), str(sdist))
    (wheel,) = tmp_path.glob("kvfast-*.whl")
    # A platform wheel: the optional extension compiled (a py3-none-any wheel
    # means the build fell back to pure Python without saying so here).
    assert "-none-any" not in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (ext,) = [n for n in names if n.startswith("kvfast/_speedups") and n.endswith(".so")]
        assert "kvfast/lua/claim.lua" in names
        assert "kvfast/py.typed" in names
        zf.extract(ext, tmp_path / "unpacked")
    # Load the wheel's own .so (not the checkout's): the module object must come
    # from that file and expose the encoder entry points kvfast.impl uses.
    probe = (
        "import importlib.machinery, importlib.util, sys\n"
        f"path = {str(tmp_path / 'unpacked' / ext)!r}\n"
        "loader = importlib.machinery.ExtensionFileLoader('kvfast._speedups', path)\n"
        "spec = importlib.util.spec_from_file_location('kvfast._speedups', path, loader=loader)\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "loader.exec_module(mod)\n"
        "assert mod.__file__ == path, mod.__file__\n"
        "print(sorted(n for n in dir(mod) if not n.startswith('_')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pack_command" in done.stdout, done.stdout
