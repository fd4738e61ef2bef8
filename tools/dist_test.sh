#!/usr/bin/env bash
# Distributed testing with torchrun: one process per GPU, or NPROC CPU processes (gloo)
# on a machine without CUDA (see mmmod/compat/dist.py).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options]
#   NNODES, NODE_RANK, MASTER_ADDR, PORT and PYTHON override the defaults below.
set -euo pipefail

CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PYTHONPATH="$tools/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
