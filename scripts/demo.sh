#!/usr/bin/env bash
# The main job end to end on the embedded default backbone: synthetic data -> features -> train ->
# evaluate on an unseen set -> one prediction. Run through `make demo`.
set -euo pipefail
out=${1:-demo-run}
mkdir -p "$out"
export ROADWORK_CACHE="$out/cache"
start=$(date +%s)

echo "== 1/5 synthetic training set (600 images) and a separate test set (200 images)"
roadwork synth "$out/train-data" --n 600 --seed 1
roadwork synth "$out/test-data" --n 200 --seed 2

echo "== 2/5 features: efficientnet-lite0, auto view plan (cached under $ROADWORK_CACHE)"
roadwork extract --data "$out/train-data"

echo "== 3/5 train the multi-view head (configs/cpu.yaml)"
roadwork train --data "$out/train-data" --out "$out/run" --config configs/cpu.yaml --epochs 20

echo "== 4/5 evaluate on the unseen test set"
roadwork evaluate --bundle "$out/run/bundle" --data "$out/test-data" --out "$out/report"

echo "== 5/5 predict two test images"
roadwork predict --bundle "$out/run/bundle" "$out/test-data/images/000000.jpg" "$out/test-data/images/000001.jpg"
echo "labels of those images: $(sed -n '2,3p' "$out/test-data/metadata.csv" | cut -d, -f1,2 | tr '\n' ' ')"

echo "== done in $(( $(date +%s) - start )) s; report: $out/report/report.html"
