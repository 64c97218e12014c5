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

# cpu, or cudaX.Y when a CUDA toolkit is present (scripts/mmcv_wheel.sh says how it is chosen)
source "$ROOT/scripts/mmcv_wheel.sh"
VARIANT="$(mmcv_variant "$PY")"
mmcv_wheel() { mmcv_cached_wheel "$WHEELS" "$MMCV_VERSION" "$VARIANT"; }
if [ -z "$(mmcv_wheel)" ]; then
    log "building mmcv $MMCV_VERSION ($VARIANT) with ops into $WHEELS/mmcv-$MMCV_VERSION-$VARIANT (once; about 16 minutes on 2 cores for cpu)"
    out="$WHEELS/mmcv-$MMCV_VERSION-$VARIANT"
    mkdir -p "$out"
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch 2.14 headers need C++20; mmcv asks for c++14/c++17.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g; s/std:c\+\+1[47]/std:c++20/g' "$src/setup.py"
    grep -q 'c++20' "$src/setup.py" || { echo "[setup] could not patch the C++ standard in mmcv's setup.py" >&2; exit 1; }
    # build into the temporary folder first: a failed build leaves no wheel in the cache
    (cd "$src" && env $(mmcv_build_env "$VARIANT") MAX_JOBS="$(nproc)" \
        "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps -w "$build/wheel" .)
    mv "$build"/wheel/mmcv-"$MMCV_VERSION"-*.whl "$out/"
fi
# the variant installed in this venv (none recorded: an install from before variants, cpu)
STAMP_VARIANT="$VENV/.mmcv-variant"
installed="$(cat "$STAMP_VARIANT" 2>/dev/null || echo cpu)"
if [ "$installed" != "$VARIANT" ] \
        || ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
    log "installing $(mmcv_wheel) ($VARIANT)"
    "${PIP[@]}" --no-deps --force-reinstall "$(mmcv_wheel)"
fi
echo "$VARIANT" > "$STAMP_VARIANT"

"${PIP[@]}" -r "$ROOT/requirements.txt"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c 'import mmcv.ops, mmdet, mmseg, mmrep; print("[setup] ok: mmrep", mmrep.__version__)'
