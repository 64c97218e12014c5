#!/usr/bin/env bash
# Creates .venv with the OpenMMLab stack known to work here, then installs mmrep editable.
# Idempotent: a finished step is skipped, and mmcv is built once into a wheel cache outside the repo.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MMREP_VENV:-$ROOT/.venv}"
WHEELS="${MMREP_WHEEL_CACHE:-$HOME/.cache/mmrep/wheels}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
MMCV_VERSION=2.1.0

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$PY" ]; then
    log "creating $VENV (Python 3.11)"
    python3.11 -m venv "$VENV"
fi
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "[setup] $VENV is not Python 3.11; remove it and run again" >&2; exit 1; }

# setuptools<82: mmcv's setup.py and mmengine's 'mmdet::' config lookup import pkg_resources.
"${PIP[@]}" --upgrade pip "setuptools>=77,<82" wheel ninja
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1

mmcv_wheel() { ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1; }
if [ -z "$(mmcv_wheel)" ]; then
    log "building mmcv $MMCV_VERSION with ops into $WHEELS (once; about 16 minutes on 2 cores)"
    mkdir -p "$WHEELS"
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch 2.14 headers need C++20; mmcv asks for c++14/c++17.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g; s/std:c\+\+1[47]/std:c++20/g' "$src/setup.py"
    grep -q 'c++20' "$src/setup.py" || { echo "[setup] could not patch the C++ standard in mmcv's setup.py" >&2; exit 1; }
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
        "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps -w "$WHEELS" .)
fi
if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
    log "installing $(basename "$(mmcv_wheel)")"
    "${PIP[@]}" --no-deps --force-reinstall "$(mmcv_wheel)"
fi

"${PIP[@]}" -r "$ROOT/requirements.txt"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c 'import mmcv.ops, mmdet, mmseg, mmrep; print("[setup] ok: mmrep", mmrep.__version__)'
