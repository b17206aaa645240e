#!/usr/bin/env bash
# The demonstration behind `make demo`: the operator's three causal forms on a golden case,
# then a small test model streaming tokens with a stateful session.
set -euo pipefail
build=${1:-build}
mhla="$build/apps/mhla"
golden=tests/data/golden/causal_slide_mean.safetensors
model=tests/data/models/tiny
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== The MHLA operator: parallel, chunked and recurrent forms on one input, each checked"
echo "   against the float64 PyTorch reference output stored with it ($golden)"
for mode in causal-parallel causal-chunked causal-recurrent; do
  extra=""
  [ "$mode" = causal-chunked ] && extra="--chunk 5"
  printf '%-18s ' "$mode:"
  "$mhla" op --input "$golden" --output "$out/o.safetensors" --mode "$mode" $extra \
    --block-size 4 --feature-map elu1 --normalize --policy slide_mean --reference "$golden" 2>/dev/null
done

echo
echo "== A model: what it holds"
"$mhla" inspect --model "$model"
echo
echo "== Streaming generation (this test model has random weights: its text is noise)"
"$mhla" generate --model "$model" --prompt "The license" --max-tokens 20 --seed 7 --policy slide_mean
