#!/usr/bin/env bash
# The INT8 table of docs/en/user_guides/int8.md: RetinaNet with RepVGG-A0, QARepVGG-A0 and RepGhostNet-1.0x,
# each trained the same seeded way on the built-in shapes data (ITERS iterations, default
# 120: the shapes demo recipe with its schedule shortened to fit a shared 2-core CPU), then
# fused, exported to ONNX, quantized to INT8 (32 calibration images) and evaluated on
# the 40 val images: tools/deploy.py ... --int8 --eval writes report.json per model.
#   [ITERS=400] bash benchmarks/int8_shapes.sh [WORK_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
WORK="${1:-$ROOT/work_dirs/int8_shapes}"
cd "$ROOT"
"$PY" -c "from mmrep.datasets.shapes import make_shapes_dataset as m; m('data/shapes')"
ITERS="${ITERS:-120}"
# seeded; deterministic=True made training about 5x slower on this CPU
OPTS="randomness.seed=0 randomness.deterministic=False train_cfg.max_iters=$ITERS
  train_cfg.val_interval=$ITERS default_hooks.checkpoint.interval=$ITERS param_scheduler.1.end=$ITERS"
for name in retinanet_repvgg-a0_shapes_demo retinanet_qarepvgg-a0_shapes_demo retinanet_repghost_shapes_demo; do
  dir="$WORK/$name"
  # shellcheck disable=SC2086  (OPTS is several options)
  OMP_NUM_THREADS=1 "$PY" tools/train.py "configs/$name.py" --work-dir "$dir" --cfg-options $OPTS
  "$PY" tools/deploy.py configs/deploy/detection_onnxruntime_static.py "configs/$name.py" \
    "$(cat "$dir/last_checkpoint")" data/shapes/val/val_0000.png --work-dir "$dir/onnx" \
    --int8 --calib-images 32 --eval
done
"$PY" - "$WORK" <<'PYEOF'
import json, sys
print('| model | fp32 PyTorch mAP | fp32 ONNX mAP | INT8 ONNX mAP | drop | fp32 ms | INT8 ms |')
for name in ('retinanet_repvgg-a0_shapes_demo', 'retinanet_qarepvgg-a0_shapes_demo',
             'retinanet_repghost_shapes_demo'):
    r = json.load(open(f'{sys.argv[1]}/{name}/onnx/report.json'))['int8']
    print(f"| {name} | {r['bbox_mAP_torch_fp32']:.3f} | {r['bbox_mAP_fp32']:.3f} | "
          f"{r['bbox_mAP_int8']:.3f} | {100 * r['bbox_mAP_drop']:.1f} | "
          f"{r['latency_ms_fp32']:.1f} | {r['latency_ms_int8']:.1f} |")
PYEOF
