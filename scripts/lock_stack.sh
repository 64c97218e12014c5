#!/usr/bin/env bash
# Rewrites the pins of requirements/<stack>.txt from a venv where that stack was set up and its
# tests passed. The header (the comment lines at the top: Python, mmcv's C++ standard, notes)
# is kept; the pins become exactly what the venv holds (pip freeze --all), with mmcv named by
# version (setup_env.sh builds or takes it from its wheel cache) and mmrep left out.
#   bash scripts/lock_stack.sh classic .venv-classic
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK="${1:?usage: $0 STACK VENV}"
VENV="${2:?usage: $0 STACK VENV}"
LOCK="$ROOT/requirements/$STACK.txt"
[ -f "$LOCK" ] || { echo "no $LOCK: write its header first (see requirements/current.txt)" >&2; exit 1; }
held="$(cat "$VENV/.mmrep-stack" 2>/dev/null || true)"
[ "$held" = "$STACK" ] || { echo "$VENV holds stack '${held:-?}', not '$STACK'" >&2; exit 1; }
mmcv="$("$VENV/bin/python" -c 'import mmcv; print(mmcv.__version__)')"
tmp="$(mktemp)"
sed -n '/^#/!q; p' "$LOCK" > "$tmp"
{
    echo "mmcv==$mmcv"
    "$VENV/bin/python" -m pip freeze --all --disable-pip-version-check --exclude mmrep --exclude mmcv
} | LC_ALL=C sort -f >> "$tmp"
mv "$tmp" "$LOCK"
echo "wrote $LOCK ($(grep -c '==' "$LOCK") pins)"
