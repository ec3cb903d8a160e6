#!/usr/bin/env bash
# The CPU demo: a small VisionCLIP (RN-tiny@BERT-tiny-chinese, 128 px) on synthetic SynFundus.
#
#   bash run_scripts/train_tiny_cpu.sh                 # 1 process
#   NPROC=2 bash run_scripts/train_tiny_cpu.sh         # 2 CPU processes (gloo)
#   N_IMAGES=2000 bash run_scripts/train_tiny_cpu.sh --epochs 5
#
# Writes synthetic images and an LMDB under $WORK (default runs/tiny_cpu) once, then trains;
# rerunning resumes (--resume auto). Extra arguments go to vclip-train.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VCLIP_VENV:-$root/.venv}
WORK=${WORK:-$root/runs/tiny_cpu}
N_IMAGES=${N_IMAGES:-400}
NPROC=${NPROC:-1}

if [ ! -f "$WORK/lmdb/train/labels.csv" ]; then
  "$venv/bin/vclip-synth" "$WORK/synfundus" --n-images "$N_IMAGES" --size 256 --no-eval --no-progress
  "$venv/bin/vclip-build-lmdb" "$WORK/synfundus" --out "$WORK/lmdb" --split 8:2:0 --size 256 --no-progress
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$venv/bin/torchrun" --standalone --nproc_per_node "$NPROC" \
  -m vclip_train.train --preset tiny \
  --data "$WORK/lmdb" --output-dir "$WORK/run" --resume auto \
  "$@"
