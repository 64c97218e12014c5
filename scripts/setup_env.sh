#!/usr/bin/env bash
# Creates a venv holding one of mmrep's stacks, then installs mmrep into it (editable).
#
#   bash scripts/setup_env.sh                                              # stack 'current' in .venv
#   MMREP_STACK=classic MMREP_VENV=.venv-classic bash scripts/setup_env.sh # another stack, its own venv
#
# A stack is a lock file, requirements/<stack>.txt: the exact versions measured to work together
# (pip constraints), with its Python (`# python: X.Y`), how mmcv is built for its torch
# (`# mmcv-cxx-std:`) and the extras of mmrep it installs (`# extras:`) in its header.
# requirements.txt adds development tools.
# mmcv is built once per Python, torch and variant into a wheel cache outside the repo
# (MMREP_WHEEL_CACHE, default ~/.cache/mmrep/wheels; scripts/mmcv_wheel.sh).
# Idempotent: a finished step is skipped. A venv holding another stack is refused, never replaced.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK="${MMREP_STACK:-current}"
VENV="${MMREP_VENV:-$ROOT/.venv}"
# relative to where the command runs: the mmcv build below works in another directory
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
WHEELS="${MMREP_WHEEL_CACHE:-$HOME/.cache/mmrep/wheels}"
LOCK="$ROOT/requirements/$STACK.txt"
PY="$VENV/bin/python"
START=$SECONDS

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] %s\n' "$*" >&2; exit 1; }
# a new file each time: a hard-linked copy of a venv must not write into the original's stamps
stamp() { printf '%s\n' "$2" > "$1.tmp" && mv "$1.tmp" "$1"; }
stacks() { (cd "$ROOT/requirements" && ls -- *.txt) | sed 's/\.txt$//' | tr '\n' ' '; }

if [[ ! "$STACK" =~ ^[A-Za-z0-9_.-]+$ ]] || [ ! -f "$LOCK" ]; then
    die "unknown stack '$STACK' (MMREP_STACK); the stacks are: $(stacks)(requirements/<stack>.txt)"
fi
header() { sed -n -E "s/^# $1: *([^ ]+).*/\1/p" "$LOCK" | head -n 1; }
pinned() { sed -n -E "s/^$1==([^ ;]+).*/\1/p" "$LOCK" | head -n 1; }
PYVER="$(header python)"
CXX_STD="$(header mmcv-cxx-std)"
EXTRAS="$(header extras)"
TORCH="$(pinned torch)"
MMCV_VERSION="$(pinned mmcv)"
[ -n "$PYVER" ] && [ -n "$CXX_STD" ] && [ -n "$EXTRAS" ] && [ -n "$TORCH" ] && [ -n "$MMCV_VERSION" ] \
    || die "$LOCK needs '# python: X.Y', '# mmcv-cxx-std: ...' and '# extras: ...' header lines" \
        "and torch== and mmcv== pins"

# python X.Y on PATH, else the newest X.Y.* that pyenv installed
find_python() {
    local want="$1" root candidate
    root="$( (pyenv root 2>/dev/null) || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
    for candidate in "$(command -v "python$want" 2>/dev/null || true)" \
            $(ls -d "$root/versions/$want".* 2>/dev/null | sort -V -r | sed "s#\$#/bin/python$want#"); do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$("$candidate" -c \
                'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]; then
            echo "$candidate"; return
        fi
    done
    return 1
}

# the stack this venv holds (a venv made before stacks existed holds 'current')
STACK_STAMP="$VENV/.mmrep-stack"
if [ -x "$PY" ]; then
    held="$(cat "$STACK_STAMP" 2>/dev/null || echo current)"
    [ "$held" = "$STACK" ] || die "$VENV holds the stack '$held', not '$STACK': choose another" \
        "MMREP_VENV, or remove $VENV yourself to replace it"
else
    base="$(find_python "$PYVER")" || die "stack '$STACK' needs Python $PYVER: found no python$PYVER on" \
        "PATH and none under pyenv's versions/ (install it, e.g. 'pyenv install $PYVER')"
    log "creating $VENV (stack $STACK, $("$base" --version) from $base)"
    "$base" -m venv "$VENV"
fi
"$PY" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$PYVER', sys.version" 2>/dev/null \
    || die "$VENV is not Python $PYVER, which stack '$STACK' needs; choose another MMREP_VENV"
stamp "$STACK_STAMP" "$STACK"

# Every install is constrained by the lock (setuptools<82 in each: see requirements.txt).
PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$LOCK")
"${PIP[@]}" --upgrade pip setuptools wheel ninja
"${PIP[@]}" torch torchvision numpy

# cpu, or cudaX.Y when a CUDA toolkit is present (scripts/mmcv_wheel.sh says how it is chosen)
source "$ROOT/scripts/mmcv_wheel.sh"
VARIANT="$(mmcv_variant "$PY")"
KEY=("$WHEELS" "$MMCV_VERSION" "$PYVER" "$TORCH" "$VARIANT")
adopted="$(mmcv_adopt_legacy_wheel "${KEY[@]}")"
[ -z "$adopted" ] || log "adopted the mmcv wheel built before the cache named Python and torch: $adopted"
if [ -z "$(mmcv_cached_wheel "${KEY[@]}")" ]; then
    out="$(mmcv_cache_dir "${KEY[@]}")"
    log "building mmcv $MMCV_VERSION ($VARIANT) with ops for Python $PYVER and torch $TORCH into $out" \
        "(once; 8-20 minutes on 2 cores for cpu)"
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: --no-build-isolation \
        "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    case "$CXX_STD" in
        default) ;;  # mmcv's own -std=c++14/17
        c++*)  # e.g. torch 2.14 headers need C++20
            sed -i -E "s/-std=c\+\+1[47]/-std=$CXX_STD/g; s/std:c\+\+1[47]/std:$CXX_STD/g" "$src/setup.py"
            grep -q -- "$CXX_STD" "$src/setup.py" \
                || die "could not set the C++ standard $CXX_STD in mmcv's setup.py" ;;
        *) die "$LOCK: '# mmcv-cxx-std: $CXX_STD' is neither 'default' nor a c++NN standard" ;;
    esac
    # build into the temporary folder first: a failed build leaves no wheel in the cache
    (cd "$src" && env $(mmcv_build_env "$VARIANT") MAX_JOBS="$(nproc)" \
        "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps -w "$build/wheel" .)
    mkdir -p "$out"
    mv "$build"/wheel/mmcv-"$MMCV_VERSION"-*.whl "$out/"
fi
WHEEL="$(mmcv_cached_wheel "${KEY[@]}")"
# the wheel installed in this venv: reinstalled when the stack's wheel is another file
STAMP_WHEEL="$VENV/.mmcv-wheel"
if [ "$(cat "$STAMP_WHEEL" 2>/dev/null || true)" != "$WHEEL" ] \
        || ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
    log "installing $WHEEL"
    "${PIP[@]}" --no-deps --force-reinstall "$WHEEL"
fi
stamp "$STAMP_WHEEL" "$WHEEL"

# mmrep with the stack's extras (its header) and the development tools, resolved together with
# the lock (so a lock that mmrep's declared ranges exclude fails here)
"${PIP[@]}" --no-build-isolation -r "$ROOT/requirements.txt" -e "$ROOT[$EXTRAS]"
"$PY" -c 'import mmcv.ops, mmdet, mmseg, mmrep, torch, sys
print("[setup] ok: stack %s: Python %d.%d, torch %s, mmcv %s, mmrep %s" % (
    sys.argv[1], *sys.version_info[:2], torch.__version__, mmcv.__version__, mmrep.__version__))' "$STACK"
log "took $((SECONDS - START)) s"
