#!/usr/bin/env bash
# Which mmcv build this machine gets (cpu or cudaX.Y) and where its wheel is cached.
# CUDA ops are built for a machine with a CUDA toolkit and a GPU: compiling them takes far
# longer than the cpu build and nothing could run them on a GPU-less machine.
# Sourced by setup_env.sh; also runnable, so the choice is testable without building:
#   scripts/mmcv_wheel.sh variant [PYTHON]          -> cpu | cuda12.1 | ...
#   scripts/mmcv_wheel.sh cached WHEELS VERSION VARIANT -> path of the cached wheel, or nothing
#   scripts/mmcv_wheel.sh build-env VARIANT          -> the environment for mmcv's setup.py
#
# Wheels live in WHEELS/mmcv-VERSION-VARIANT/ (the wheel file keeps pip's own name, so
# `mmcv==VERSION` pins match it). A wheel directly in WHEELS is one built before variants
# existed, always with FORCE_CUDA=0: it is accepted as the cpu wheel.

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

mmcv_cached_wheel() {
    local wheels="$1" version="$2" variant="$3" found
    found="$( (ls "$wheels/mmcv-$version-$variant"/mmcv-"$version"-*.whl 2>/dev/null || true) | head -n 1)"
    if [ -z "$found" ] && [ "$variant" = cpu ]; then
        found="$( (ls "$wheels"/mmcv-"$version"-*.whl 2>/dev/null || true) | head -n 1)"
    fi
    echo "$found"
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
    cmd="${1:?usage: $0 variant [PYTHON] | cached WHEELS VERSION VARIANT | build-env VARIANT}"
    shift
    case "$cmd" in
        variant) mmcv_variant "$@" ;;
        cached) mmcv_cached_wheel "$@" ;;
        build-env) mmcv_build_env "$@" ;;
        *) echo "unknown command $cmd" >&2; exit 2 ;;
    esac
fi
