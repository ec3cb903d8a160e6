#!/usr/bin/env bash
# The paper's Table 1 on the real datasets: VisionCLIP beside CLIP (RN50), BiomedCLIP, FLAIR and FLAIR
# with expert-knowledge prompts, on FLAIR's own image lists of MESSIDOR-2 (1,744), FIVES (800) and
# REFUGE (400), in one vclip-eval run (one protocol; each model with its own preprocessing, prompted
# in its own language). Nothing is downloaded: put the files below in place first.
#
#   bash run_scripts/table1.sh --visionclip runs/rn50/bundle --weights weights/ --data /data/flair
#
# --weights DIR must hold (download each once, by hand or with huggingface-cli on a machine online):
#   RN50.pt                  OpenAI's CLIP RN50 (TorchScript): the RN50 "openai" URL in open_clip's
#                            pretrained.py (openaipublic.azureedge.net/clip/models/.../RN50.pt)
#   BiomedCLIP/              huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224:
#                            open_clip_config.json, open_clip_pytorch_model.bin, plus its text tower's
#                            config.json, vocab.txt and tokenizer_config.json from the model that the
#                            config's hf_model_name names (PubMedBERT / BiomedBERT base uncased abstract)
#   flair_resnet.pth         FLAIR's released weights (linked from the jusiro/FLAIR README)
#   Bio_ClinicalBERT/        huggingface.co/emilyalsentzer/Bio_ClinicalBERT: config.json and vocab.txt
# --data DIR is FLAIR's data root: 02_MESSIDOR/, 13_FIVES/, 25_REFUGE/ as FLAIR lays them out, and
#   FLAIR's lists 02_MESSIDOR.csv, 13_FIVES.csv, 25_REFUGE.csv from its repository's
#   local_data/dataframes/transferability/classification/.
# The open_clip family needs open_clip_torch (the project's "open_clip" extra; run_scripts/setup.sh
# installs it with the test extra).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
visionclip=""
weights=$root/weights
data=""
out=$root/table1_out
device=auto
workers=""
bootstrap=1000

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --visionclip) visionclip=$2; shift 2 ;;
    --weights) weights=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --bootstrap) bootstrap=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "table1.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$visionclip" ] || [ -z "$data" ]; then
  echo "table1.sh: error: --visionclip BUNDLE_OR_CHECKPOINT and --data FLAIR_DATA_ROOT are required" >&2
  exit 2
fi

missing=0
need() {  # need PATH WHAT: report a missing download in one line
  if [ ! -e "$1" ]; then echo "table1.sh: missing $1: $2" >&2; missing=1; fi
}
need "$visionclip" "a VisionCLIP bundle (vclip-export) or training checkpoint"
need "$weights/RN50.pt" "OpenAI's RN50.pt (see --help)"
need "$weights/BiomedCLIP/open_clip_config.json" "BiomedCLIP's hub files (see --help)"
need "$weights/BiomedCLIP/open_clip_pytorch_model.bin" "BiomedCLIP's hub files (see --help)"
need "$weights/flair_resnet.pth" "FLAIR's released weights (see --help)"
need "$weights/Bio_ClinicalBERT/config.json" "Bio_ClinicalBERT's config.json and vocab.txt (see --help)"
for list in 02_MESSIDOR 13_FIVES 25_REFUGE; do
  need "$data/$list.csv" "FLAIR's partition list (see --help)"
done
[ "$missing" = 0 ] || exit 2

bash "$root/run_scripts/setup.sh"
bin=${VCLIP_VENV:-$root/.venv}/bin
mkdir -p "$out"
abs() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
cat > "$out/models.yaml" <<EOF
models:
  - {label: VisionCLIP, family: visionclip, path: "$(abs "$visionclip")"}
  - {label: CLIP (RN50), family: open_clip, path: "$(abs "$weights/RN50.pt")"}
  - {label: BiomedCLIP, family: open_clip, path: "$(abs "$weights/BiomedCLIP")"}
  - label: FLAIR
    family: flair
    path: "$(abs "$weights/flair_resnet.pth")"
    options: {text_config: "$(abs "$weights/Bio_ClinicalBERT")"}
  - label: FLAIR + expert knowledge
    family: flair
    path: "$(abs "$weights/flair_resnet.pth")"
    options: {text_config: "$(abs "$weights/Bio_ClinicalBERT")"}
    prompts: expert
EOF
"$bin/vclip-eval" --models "$out/models.yaml" \
  --data "messidor2_flair=$data" --data "fives_flair=$data" --data "refuge_flair=$data" \
  --device "$device" ${workers:+--workers "$workers"} --bootstrap "$bootstrap" --out "$out/report"
echo "[table1] table: $out/report/table.md, everything: $out/report/report.json" >&2
