#!/usr/bin/env bash
# Every benchmark figure of docs/en/user_guides/benchmark.md, in one go, on an IDLE machine
# (other processes make the times inflated and the verdicts inconclusive; the tool warns):
#
#   bash benchmarks/commands.sh [OUT]        # OUT defaults to benchmarks/
#
# Writes OUT/benchmark.json (rows and a record per run), benchmark.md, benchmark.png,
# OUT/targets.md (the project's targets, met / not met / inconclusive) and
# OUT/orepa_training_cost.json. ITERS (default 400, the demo recipe) sets the training of
# the QARepVGG-A0 RetinaNet whose OpenVINO INT8 accuracy is a target.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="${1:-$ROOT/benchmarks}"
ITERS="${ITERS:-400}"
WORK="$ROOT/work_dirs/benchmark_targets"
cd "$ROOT"
mkdir -p "$OUT" "$WORK"
# the shapes configs' test size comes from their first test image
"$PY" -c "from mmrep.datasets.shapes import make_shapes_dataset as m; m('data/shapes')"

# 1. every built-in model (and its timm twin / stock peer), every path, batch 1, 1 thread
"$PY" tools/benchmark.py --out "$OUT" --overwrite --threads 1

# 2. the OpenVINO target also at 2 threads (slim RetinaNet, RepLKNet-31B)
"$PY" tools/benchmark.py --out "$OUT" --append --threads 2 \
  --models 'RetinaNet-RepVGG-A0-slim (shapes)' RepLKNet-31B \
  --paths fused_channels_last onnxruntime onnxruntime_int8 openvino openvino_int8

# 3. OpenVINO INT8 accuracy of the QARepVGG-A0 RetinaNet on held-out shapes images
#    (seeded training as benchmarks/int8_shapes.sh, then tools/deploy.py's OpenVINO INT8 path)
CFG=configs/retinanet_qarepvgg-a0_shapes_demo.py
OMP_NUM_THREADS=1 "$PY" tools/train.py "$CFG" --work-dir "$WORK/qarepvgg" --cfg-options \
  randomness.seed=0 randomness.deterministic=False train_cfg.max_iters="$ITERS" \
  train_cfg.val_interval="$ITERS" default_hooks.checkpoint.interval="$ITERS" \
  param_scheduler.1.end="$ITERS"
"$PY" tools/deploy.py configs/deploy/detection_onnxruntime_static.py "$CFG" \
  "$(cat "$WORK/qarepvgg/last_checkpoint")" data/shapes/val/val_0000.png \
  --work-dir "$WORK/openvino_int8" --backend openvino --precision int8 --eval

# 4. the fast path on the two-stage detectors (mmcv's ops NCHW), docs: the fast path section
"$PY" benchmarks/two_stage_fast_path.py --threads 1 --out "$OUT/two_stage_fast_path.json"

# 5. OREPA's training cost (paired, interleaved)
"$PY" benchmarks/orepa_training_cost.py --threads 1 --out "$OUT/orepa_training_cost.json"

# 6. the targets, from the files above
"$PY" benchmarks/targets.py --benchmark "$OUT/benchmark.json" \
  --deploy-report "$WORK/openvino_int8/report.json" \
  --orepa-cost "$OUT/orepa_training_cost.json" --out "$OUT/targets.md"
