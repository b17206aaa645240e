#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, builds the example against the installed
# package and runs it: what another project using find_package(mhla) does.
set -euo pipefail
build=$1 example=$2 model=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$example" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/example" >/dev/null
out=$(LD_LIBRARY_PATH="$work/prefix/lib" "$work/example/stream_completion" "$model" 1,5,9 8)
echo "example printed: $out"
[ "$(echo "$out" | wc -w)" -ge 1 ]
# The same greedy completion through the installed command line.
cli=$("$work/prefix/bin/mhla" generate --model "$model" --prompt-ids 1,5,9 --max-tokens 8 --temperature 0 \
  --print-ids 2>/dev/null)
[ "$(echo $out)" = "$(echo $cli)" ] || { echo "installed CLI printed '$cli'"; exit 1; }
