#!/usr/bin/env bash
# The main job end to end on the embedded default backbone: synthetic drives -> features -> train
# (grouped 3-fold validation, probe vs multi-view head) -> evaluate on unseen drives -> one prediction.
# Run through `make demo`.
set -euo pipefail
out=${1:-demo-run}
mkdir -p "$out"
export ROADWORK_CACHE="$out/cache"
start=$(date +%s)

echo "== 1/5 synthetic drives: 600 training frames (200 drives of 3) and 200 test frames from other drives"
roadwork synth "$out/train-data" --n 600 --seed 1 --frames-per-drive 3
roadwork synth "$out/test-data" --n 200 --seed 2 --frames-per-drive 3

echo "== 2/5 features: efficientnet-lite0, auto view plan (cached under $ROADWORK_CACHE)"
roadwork extract --data "$out/train-data"

# Lighter than the defaults (5 folds, 30 epochs in configs/cpu.yaml, a fine-tuned backbone) so the demo
# stays under 5 minutes on 2 cores: frozen features, 3 folds, 15 epochs.
echo "== 3/5 train: probe and multi-view head on frozen features, 3 folds that keep drives together"
echo "   (demo setting; by default the backbone's last blocks are fine-tuned first and 5 folds are used)"
roadwork train --data "$out/train-data" --out "$out/run" --config configs/cpu.yaml --folds 3 --epochs 15 \
    --backbone-training frozen

echo "== 4/5 evaluate on the unseen drives (the image alone, as a validator sends it)"
roadwork evaluate --bundle "$out/run/bundle" --data "$out/test-data" --out "$out/report"

echo "== 5/5 predict two test images"
roadwork predict --bundle "$out/run/bundle" "$out/test-data/images/000000.jpg" "$out/test-data/images/000003.jpg"
echo "labels of those images: $(sed -n '2p;5p' "$out/test-data/metadata.csv" | cut -d, -f1,2 | tr '\n' ' ')"

echo "== done in $(( $(date +%s) - start )) s; report: $out/report/report.html"
