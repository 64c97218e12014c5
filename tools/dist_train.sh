#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG NUM_PROCS [train.py options]
# Several processes through torchrun and mmengine's launcher; gloo on CPU, NCCL on GPUs.
set -euo pipefail
CONFIG=$1
NPROCS=$2
shift 2
PORT=${PORT:-29500}
DIR="$(cd "$(dirname "$0")" && pwd)"
PYTHONPATH="$DIR/..:${PYTHONPATH:-}" \
python -m torch.distributed.run --nnodes=1 --node_rank=0 --master_addr=127.0.0.1 \
    --nproc_per_node="$NPROCS" --master_port="$PORT" \
    "$DIR/train.py" "$CONFIG" --launcher pytorch "$@"
