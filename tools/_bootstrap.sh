# Shared set-up of tools/test and tools/demo, sourced by both:
#   1. find python >= 3.11 and create/update the virtualenv .venv at the checkout root
#   2. pip install -e '.[dev]' (only when pyproject.toml changed since the last good install)
#   3. start the local Redis + PostgreSQL (tools/services up) and load their env
# Expects ROOT (the checkout) to be set and the working directory to be ROOT.
# shellcheck shell=bash

say() { echo "${KVFAST_TOOL:-kvfast}: $*" >&2; }
die() { say "$*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }
can_apt() { is_root && command -v apt-get >/dev/null 2>&1; }

py_ok() { # $1: a python executable; true when it runs and is >= 3.11
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

find_python() {
    local cand exe
    for cand in python3 python3.13 python3.12 python3.11; do
        exe="$(command -v "$cand" 2>/dev/null)" || continue
        if py_ok "$exe"; then
            echo "$exe"
            return 0
        fi
    done
    return 1
}

VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.kvfast-install-stamp"

make_venv() {
    local py="$1" ver
    rm -rf "$VENV"
    if "$py" -m venv "$VENV"; then
        return 0
    fi
    rm -rf "$VENV"
    ver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if can_apt; then
        say "python venv support missing; installing python${ver}-venv / python3-venv with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "python${ver}-venv" ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                python3-venv
        "$py" -m venv "$VENV" && return 0
        rm -rf "$VENV"
    fi
    die "cannot create a virtualenv with $py; install venv support: sudo apt-get install python${ver}-venv (or python3-venv)"
}

# --- 1. virtualenv ----------------------------------------------------------------
if [ -x "$VPY" ] && py_ok "$VPY" && "$VPY" -m pip --version >/dev/null 2>&1; then
    : # reuse
else
    PY="$(find_python)" || die "no python >= 3.11 found (tried python3, python3.13, python3.12, python3.11)"
    say "creating virtualenv $VENV with $PY ($("$PY" --version 2>&1))"
    make_venv "$PY"
fi

# --- 2. dependencies -------------------------------------------------------------
# The C extension kvfast._speedups needs a compiler and the Python headers; its
# build is optional (kvfast then warns and runs the Python encoders), so a
# machine without them still works, only slower.
have_headers() {
    "$VPY" -c 'import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'
}
if ! { command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; } || ! have_headers; then
    if can_apt; then
        ver="$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        say "C compiler or Python headers missing; installing gcc and python${ver}-dev / python3-dev with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev \
            "python${ver}-dev" ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc \
                libc6-dev python3-dev ||
            say "could not install a compiler: kvfast will use its Python encoders"
    else
        say "no C compiler or Python headers: kvfast will use its Python encoders (install gcc and python3-dev for the C ones)"
    fi
fi
# The stamp covers the C sources too: an edited .c file is rebuilt by the install.
want_stamp="$( (sha256sum pyproject.toml setup.py kvfast/*.c; "$VPY" --version) 2>&1 | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want_stamp" != "$have_stamp" ] ||
    ! "$VPY" -c 'import importlib.metadata as m; m.version("kvfast")' >/dev/null 2>&1; then
    say "installing kvfast and its dev dependencies into .venv"
    rm -f "$STAMP"
    "$VPY" -m pip install --disable-pip-version-check --progress-bar off -e '.[dev]'
    echo "$want_stamp" >"$STAMP"
fi

# --- 3. services -----------------------------------------------------------------
tools/services up
eval "$(tools/services env)"

