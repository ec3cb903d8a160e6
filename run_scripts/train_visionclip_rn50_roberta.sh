#!/usr/bin/env bash
# The paper's set-up: VisionCLIP = RN50 image tower + RoBERTa-wwm-ext-base-chinese text tower,
# trained from scratch on SynFundus (Chinese-CLIP's LMDB layout) with cn_clip's contrastive recipe.
#
# Run once per node (the usual Chinese-CLIP pattern, with torchrun instead of
# torch.distributed.launch):
#
#   DATAPATH=/data/visionclip GPUS_PER_NODE=8 bash run_scripts/train_visionclip_rn50_roberta.sh
#   # two nodes: on each, with the same MASTER_ADDR and its own NODE_RANK
#   WORKER_CNT=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_scripts/train_visionclip_rn50_roberta.sh
#
# Extra arguments go to vclip-train (e.g. --batch-size 256 --resume auto).
# Data: ${DATAPATH}/datasets/SynFundus/lmdb/{train,valid} (build with vclip-build-lmdb).
# GPU memory: ~14-18 GiB per GPU at --batch-size 128 with bf16 (estimate; see
# cn_clip_ext/training/config.py), so 24 GiB cards work; use --grad-checkpointing for less.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VCLIP_VENV:-$root/.venv}
DATAPATH=${DATAPATH:-$root/data}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
WORKER_CNT=${WORKER_CNT:-1}          # number of nodes
NODE_RANK=${NODE_RANK:-${RANK:-0}}   # this node's index
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-8514}

data=${DATA:-${DATAPATH}/datasets/SynFundus/lmdb}
output=${OUTPUT_DIR:-${DATAPATH}/experiments/visionclip_rn50_roberta}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$venv/bin/torchrun" \
  --nnodes "$WORKER_CNT" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  -m vclip_train.train \
  --model "RN50@RoBERTa-wwm-ext-base-chinese" \
  --data "$data" \
  --output-dir "$output" \
  --batch-size 128 --epochs 10 --lr 5e-4 --warmup-steps 500 --weight-decay 0.2 \
  --precision auto --num-workers 8 \
  --valid-every 1000 --save-every 1000 --keep-last 3 \
  --resume auto \
  "$@"
