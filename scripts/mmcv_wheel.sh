#!/usr/bin/env bash
# Which mmcv build this machine gets (cpu or cudaX.Y) and where its wheel is cached.
# CUDA ops are built for a machine with a CUDA toolkit and a GPU: compiling them takes far
# longer than the cpu build and nothing could run them on a GPU-less machine.
# Sourced by setup_env.sh; also runnable, so the choice is testable without building:
#   scripts/mmcv_wheel.sh variant [PYTHON]                       -> cpu | cuda12.1 | ...
#   scripts/mmcv_wheel.sh cache-dir WHEELS VERSION PYVER TORCH VARIANT -> the wheel's cache folder
#   scripts/mmcv_wheel.sh cached WHEELS VERSION PYVER TORCH VARIANT    -> the cached wheel, or nothing
#   scripts/mmcv_wheel.sh adopt-legacy WHEELS VERSION PYVER TORCH VARIANT
#   scripts/mmcv_wheel.sh build-env VARIANT                      -> the environment for mmcv's setup.py
#
# mmcv's compiled ops are tied to the torch they were built against (and the wheel to its
# Python), so a wheel lives in WHEELS/mmcv-VERSION-pyPYVER-torchTORCH-VARIANT/ (the wheel file
# keeps pip's own name, so `mmcv==VERSION` pins match it).
#
# Before the folder named Python and torch, setup_env.sh built only for Python 3.11 and torch
# 2.14.1, into WHEELS/mmcv-VERSION-VARIANT/ (and, before variants, cpu wheels directly into
# WHEELS). adopt-legacy hard-links such a wheel into the new folder when the stack is that one,
# and leaves the old file where it is (an older checkout's setup_env.sh still finds it).
LEGACY_PYVER=3.11
LEGACY_TORCH=2.14.1

# cudaX.Y when a CUDA toolkit (nvcc on PATH, or $CUDA_HOME/bin/nvcc) and a GPU (nvidia-smi -L)
# are present and torch (if PYTHON is given) is a CUDA build; cpu otherwise.
# MMREP_MMCV_VARIANT=cpu forces cpu; MMREP_MMCV_VARIANT=cuda builds the CUDA ops without a GPU
# (e.g. a GPU-less build machine); it still needs nvcc.
mmcv_variant() {
    local py="${1:-}" nvcc release
    if [ "${MMREP_MMCV_VARIANT:-}" = cpu ]; then echo cpu; return; fi
    nvcc="$(command -v nvcc 2>/dev/null || true)"
    if [ -z "$nvcc" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
        nvcc="$CUDA_HOME/bin/nvcc"
    fi
    if [ -z "$nvcc" ]; then echo cpu; return; fi
    release="$("$nvcc" --version 2>/dev/null | sed -n -E 's/.*release ([0-9]+\.[0-9]+).*/\1/p' | head -n 1)"
    if [ -z "$release" ]; then
        echo "[setup] $nvcc --version names no CUDA release; building mmcv for the CPU" >&2
        echo cpu; return
    fi
    if [ -n "$py" ] && ! "$py" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
        echo "[setup] found $nvcc (CUDA $release) but torch is a CPU build; building mmcv for the CPU" >&2
        echo cpu; return
    fi
    if [ "${MMREP_MMCV_VARIANT:-}" != cuda ] && ! (nvidia-smi -L 2>/dev/null | grep -q '^GPU '); then
        echo "[setup] found $nvcc (CUDA $release) but no GPU (nvidia-smi -L); building mmcv for the" \
             "CPU (MMREP_MMCV_VARIANT=cuda builds the CUDA ops anyway)" >&2
        echo cpu; return
    fi
    echo "cuda$release"
}

# WHEELS VERSION PYVER TORCH VARIANT
mmcv_cache_dir() {
    echo "$1/mmcv-$2-py$3-torch$4-$5"
}

# the wheel for PYVER in the cache folder of WHEELS VERSION PYVER TORCH VARIANT, or nothing
mmcv_cached_wheel() {
    local dir tag
    dir="$(mmcv_cache_dir "$@")"
    tag="cp${3/./}"
    ( (ls "$dir"/mmcv-"$2"-"$tag"-*.whl 2>/dev/null || true) | head -n 1 )
}

# Hard-link a wheel of the old cache layout into the new folder (see the top of this file).
# Prints the adopted wheel, or nothing.
mmcv_adopt_legacy_wheel() {
    local wheels="$1" version="$2" pyver="$3" torch="$4" variant="$5" tag old dir
    [ "$pyver" = "$LEGACY_PYVER" ] && [ "$torch" = "$LEGACY_TORCH" ] || return 0
    [ -z "$(mmcv_cached_wheel "$@")" ] || return 0
    tag="cp${pyver/./}"
    old="$( (ls "$wheels/mmcv-$version-$variant"/mmcv-"$version"-"$tag"-*.whl 2>/dev/null || true) | head -n 1)"
    if [ -z "$old" ] && [ "$variant" = cpu ]; then
        old="$( (ls "$wheels"/mmcv-"$version"-"$tag"-*.whl 2>/dev/null || true) | head -n 1)"
    fi
    [ -n "$old" ] || return 0
    dir="$(mmcv_cache_dir "$@")"
    mkdir -p "$dir"
    ln "$old" "$dir/" 2>/dev/null || cp "$old" "$dir/"
    echo "$dir/$(basename "$old")"
}

mmcv_build_env() {
    case "$1" in
        cpu) echo "MMCV_WITH_OPS=1 FORCE_CUDA=0" ;;
        cuda*) echo "MMCV_WITH_OPS=1 FORCE_CUDA=1" ;;
        *) echo "[setup] unknown mmcv variant $1" >&2; return 1 ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cmd="${1:?usage: $0 variant [PYTHON] | cache-dir|cached|adopt-legacy WHEELS VERSION PYVER TORCH VARIANT | build-env VARIANT}"
    shift
    case "$cmd" in
        variant) mmcv_variant "$@" ;;
        cache-dir) mmcv_cache_dir "$@" ;;
        cached) mmcv_cached_wheel "$@" ;;
        adopt-legacy) mmcv_adopt_legacy_wheel "$@" ;;
        build-env) mmcv_build_env "$@" ;;
        *) echo "unknown command $cmd" >&2; exit 2 ;;
    esac
fi
