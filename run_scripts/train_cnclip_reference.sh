#!/usr/bin/env bash
# The reference trainer: stock Chinese-CLIP (the installed cn_clip package's training/main.py,
# unchanged) on a vclip-build-lmdb output, RN50 + RoBERTa-wwm-ext-base-chinese from scratch with
# cn_clip's RN50 recipe. GPU only (cn_clip always uses CUDA and NCCL). Run once per node:
#
#   DATA=/data/synfundus_lmdb OUTPUT_DIR=/data/runs/cnclip_rn50 bash run_scripts/train_cnclip_reference.sh
#   # two nodes: on each, with the same MASTER_ADDR and its own NODE_RANK
#   WORKER_CNT=2 NODE_RANK=0 MASTER_ADDR=node0 DATA=... OUTPUT_DIR=... bash run_scripts/train_cnclip_reference.sh
#   bash run_scripts/train_cnclip_reference.sh --dry-run     # print the exact command, run nothing
#
# Extra arguments go to cn_clip's main.py (e.g. --max-steps 1000 --accum-freq 4).
# What is deliberately left out:
#   --use-augment   cn_clip's AutoAugment inverts, solarises and flips: wrong for fundus photographs;
#   --logs          torch's launcher takes it for its own --logs-specs ("ambiguous option"); cn_clip
#                   joins its default ./logs/ with --name, so an absolute --name (OUTPUT_DIR) is the
#                   run folder: OUTPUT_DIR/out_<time>.log, OUTPUT_DIR/params_<time>.txt,
#                   OUTPUT_DIR/checkpoints/epoch<N>.pt and epoch_latest.pt;
#   --clip-weight-path / --bert-weight-path   without them cn_clip initialises both towers randomly.
# Resuming: cn_clip itself reloads OUTPUT_DIR/checkpoints/epoch_latest.pt when it exists.
# Its checkpoints load in vclip-eval/vclip-export (--model RN50@RoBERTa-wwm-ext-base-chinese).
set -euo pipefail

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VCLIP_VENV:-$root/.venv}
python=$venv/bin/python
DATAPATH=${DATAPATH:-$root/data}
DATA=${DATA:-${DATAPATH}/datasets/SynFundus/lmdb}
OUTPUT_DIR=${OUTPUT_DIR:-${DATAPATH}/experiments/cnclip_reference_rn50_roberta}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
WORKER_CNT=${WORKER_CNT:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-8514}
BATCH_SIZE=${BATCH_SIZE:-128}       # per GPU, as vclip-train's paper preset
MAX_EPOCHS=${MAX_EPOCHS:-10}
NUM_WORKERS=${NUM_WORKERS:-8}
PRECISION=${PRECISION:-amp}         # cn_clip: amp (fp16 autocast + GradScaler), fp16 or fp32

die() { echo "train_cnclip_reference.sh: error: $*" >&2; exit 2; }

[ -x "$python" ] || die "$python not found: run run_scripts/setup.sh (or set VCLIP_VENV)"
if compgen -G "$DATA/shard-*-of-*" > /dev/null; then
  die "$DATA is a sharded build: cn_clip reads one LMDB; point DATA at one shard-i-of-N folder or build without --shards"
fi
[ -d "$DATA/train/imgs" ] && [ -d "$DATA/train/pairs" ] || die "$DATA: no train/imgs and train/pairs (a vclip-build-lmdb output)"
case "$OUTPUT_DIR" in
  /*) ;;
  *) OUTPUT_DIR=$(pwd)/$OUTPUT_DIR ;;  # cn_clip's --name must be absolute to be the run folder
esac

main_py=$("$python" -c 'import importlib.util, os; s = importlib.util.find_spec("cn_clip"); print(os.path.join(s.submodule_search_locations[0], "training", "main.py"))') \
  || die "cn_clip is not installed in $venv"
[ -f "$main_py" ] || die "$main_py not found (cn_clip 1.6.0 ships it)"

val_args=()
if [ -d "$DATA/valid/imgs" ]; then
  val_args=(--val-data "$DATA/valid" --valid-batch-size "$BATCH_SIZE" --valid-epoch-interval 1)
fi

# cn_clip's RN50 recipe (cn_clip.training.params.get_default_params, the CLIP paper's ResNet
# values): AdamW lr 5e-4, betas (0.9, 0.999), eps 1e-8; its defaults wd 0.2, 500 warm-up steps,
# cosine decay, context 52, AMP.
cmd=("$python" -m torch.distributed.run
  --nproc_per_node "$GPUS_PER_NODE" --nnodes "$WORKER_CNT" --node_rank "$NODE_RANK"
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
  "$main_py"
  --train-data "$DATA/train" "${val_args[@]}"
  --name "$OUTPUT_DIR"
  --vision-model RN50 --text-model RoBERTa-wwm-ext-base-chinese
  --context-length 52 --batch-size "$BATCH_SIZE" --max-epochs "$MAX_EPOCHS"
  --lr 5e-4 --beta1 0.9 --beta2 0.999 --eps 1e-8 --wd 0.2 --warmup 500
  --precision "$PRECISION" --num-workers "$NUM_WORKERS"
  --save-epoch-frequency 1 --log-interval 10
  "$@")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
mkdir -p "$OUTPUT_DIR"
exec "${cmd[@]}"
