#!/usr/bin/env bash
# The main job on generated data, CPU-friendly: set up, synthesise a SynFundus-layout corpus and
# MESSIDOR-2 / FIVES / REFUGE-layout evaluation sets, pack the LMDB, train from scratch,
# evaluate zero-shot (trained vs untrained vs baselines), export a bundle and print the Table-1-style
# comparison.
# Everything goes under --out; re-running reuses every stage whose inputs did not change.
#
#   bash run_scripts/demo.sh                       # defaults: tiny model, ~9 minutes on 2 cores
#   bash run_scripts/demo.sh --images 20000 --steps 3000 --arch RN50@RoBERTa-wwm-ext-base-chinese --batch 128
#   bash run_scripts/demo.sh --all-datasets        # then also the ten further published layouts, and mined prompts
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/demo_out
images=6000
eval_images=200
steps=1000
batch=32
lr=1e-3
arch=RN-tiny@BERT-tiny-chinese
bootstrap=500
workers=$(nproc 2>/dev/null || echo 2)
all_datasets=0

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<EOT

options:
  --out DIR          output folder (default: demo_out/)
  --images N         generated corpus images (default: $images)
  --eval-images N    images per generated evaluation set (default: $eval_images)
  --steps N          training steps (default: $steps)
  --batch N          batch size (default: $batch)
  --lr X             peak learning rate (default: $lr)
  --arch NAME        architecture (default: $arch)
  --workers N        processes for generation, packing and loading (default: all cores)
  --bootstrap N      bootstrap resamples for the 95% intervals (default: $bootstrap)
  --all-datasets     also evaluate on lookalikes of APTOS-2019, IDRiD, EyePACS, DeepDRiD, RFMiD, ODIR-5K,
                     PAPILA, ACRIMA, AIROGS and JSIEC, and on every set with prompts mined from the corpus
EOT
}

while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --eval-images) eval_images=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --bootstrap) bootstrap=$2; shift 2 ;;
    --all-datasets) all_datasets=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash "$root/run_scripts/setup.sh"
bin=${VCLIP_VENV:-$root/.venv}/bin
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$SECONDS
key=""

# stage NAME CMD...: run CMD unless it already finished with the same inputs (upstream included).
stage() {
  local name=$1; shift
  key="$key|$*"
  local marker="$out/.done-$name"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$key" ]; then
    echo "[demo] $name: up to date, reused" >&2
    return 0
  fi
  echo "[demo] $name ..." >&2
  local t0=$SECONDS
  "$@"
  printf '%s' "$key" > "$marker"
  echo "[demo] $name: done in $((SECONDS - t0)) s" >&2
}

stage synth "$bin/vclip-synth" "$out/data" --n-images "$images" --n-eval "$eval_images" --size 256 \
  --workers "$workers" --seed 0
stage lmdb "$bin/vclip-build-lmdb" "$out/data" --out "$out/lmdb" --size 160 --workers "$workers"
stage train "$bin/vclip-train" --preset tiny --model "$arch" --data "$out/lmdb" --output-dir "$out/train" \
  --max-steps "$steps" --batch-size "$batch" --lr "$lr" --num-workers "$workers" --save-every "$steps" \
  --valid-every 0 --resume auto --no-tensorboard
stage eval "$bin/vclip-eval" --checkpoint "$out/train/checkpoints/latest.pt=VisionCLIP ($arch, trained)" \
  --untrained "$arch" --data-root "$out/data" --data synfundus_dr="$out/lmdb" \
  --data synfundus_glaucoma="$out/lmdb" --data synfundus_amd="$out/lmdb" --data synfundus_condition="$out/lmdb" \
  --prompts plain --workers "$workers" --bootstrap "$bootstrap" --quiet --out "$out/eval"
stage export "$bin/vclip-export" "$out/train/checkpoints/latest.pt" "$out/bundle" --report "$out/eval/report.json" \
  --onnx --force
if [ "$all_datasets" = 1 ]; then
  # the further layouts in their own folder: --data-root "$out/data" above must keep finding only its three
  stage published "$bin/vclip-synth" "$out/published" --no-corpus --no-eval --published all \
    --n-eval "$eval_images" --size 256 --seed 1
  every=(--data-root "$out/published" --data idrid_dr="$out/published/idrid" --data idrid_dme="$out/published/idrid"
         --data messidor2="$out/data/messidor2" --data fives="$out/data/fives" --data refuge="$out/data/refuge"
         --data synfundus_dr="$out/lmdb" --data synfundus_glaucoma="$out/lmdb"
         --data synfundus_amd="$out/lmdb" --data synfundus_condition="$out/lmdb")
  stage eval_all "$bin/vclip-eval" --checkpoint "$out/train/checkpoints/latest.pt=VisionCLIP ($arch, trained)" \
    --untrained "$arch" "${every[@]}" --prompts plain --workers "$workers" --bootstrap "$bootstrap" --quiet \
    --out "$out/eval_all"
  stage eval_mined "$bin/vclip-eval" --checkpoint "$out/train/checkpoints/latest.pt=VisionCLIP ($arch, trained)" \
    "${every[@]}" --prompts "mined:$out/lmdb" --workers "$workers" --bootstrap "$bootstrap" --quiet \
    --out "$out/eval_mined"
fi

echo
echo "VisionCLIP demo: zero-shot balanced accuracy (ACA) on generated data, $((SECONDS - start)) s this run"
echo
cat "$out/eval/table.md"
if [ "$all_datasets" = 1 ]; then
  echo
  echo "Every dataset, built-in plain prompts ($out/eval_all):"
  echo
  cat "$out/eval_all/table.md"
  echo
  echo "Every dataset, prompts mined from the training corpus ($out/eval_mined):"
  echo
  cat "$out/eval_mined/table.md"
fi
echo
echo "reports, plots and predictions: $out/eval"
echo "training curves and metrics:     $out/train"
echo "exported bundle (+ ONNX):        $out/bundle   load it with cn_clip_ext.load_pretrained(\"$out/bundle\")"
