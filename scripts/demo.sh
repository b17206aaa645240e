#!/usr/bin/env bash
# The demonstration behind `make demo`: the bundled model (models/mhla-demo, a small MHLA model
# trained on the Python documentation) streams a completion, answers in the chat format, and
# looks for a pass key hidden in documents inside and past its trained window.
set -euo pipefail
build=${1:-build}
mhla="$build/apps/mhla"
model=models/mhla-demo

echo "== The bundled model ($model; see models/README.md)"
"$mhla" inspect --model "$model"
echo
echo "== Streaming a completion"
"$mhla" generate --model "$model" --prompt "The for statement" --max-tokens 96 --temperature 0.7 --seed 7
echo
echo "== The chat format (what \`mhla chat\` and the server send)"
"$mhla" generate --model "$model" --prompt $'User: What does sorted() do?\nAssistant:' --max-tokens 64 \
  --temperature 0 --stop $'\nUser:'
echo
echo "== A pass key hidden in 1K- and 4K-token documents (the trained window is 2K; policy slide_mean)"
"$mhla" passkey --model "$model" --lengths 1K,4K --policy slide_mean --trials 3 2>/dev/null
