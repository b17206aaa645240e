#!/usr/bin/env bash
# Trains several models side by side on one GPU, each for the same time, and keeps what comes
# back small: each model's weights (NAME.safetensors) plus one archive of its config, training
# log and metrics (NAME.tar.gz).
#   tools/train/train_models.sh DATA_DIR OUT_DIR MINUTES "NAME ATTENTION [train.py flags]"...
# DATA_DIR holds corpus/ (build_corpus.py) and tokenizer.model (train_tokenizer.sh); flags in
# $TRAIN_FLAGS go to every run.
set -euo pipefail
data=${1:?data directory} out=${2:?output directory} minutes=${3:?minutes}
shift 3
here=$(dirname "$0")
mkdir -p "$out"
pids=() names=()
for spec in "$@"; do
  read -r name attention flags <<<"$spec"
  # shellcheck disable=SC2086  # the flags are meant to split into words
  PYTHONUNBUFFERED=1 "${PYTHON:-python3}" "$here/train.py" --corpus "$data/corpus" --tokenizer "$data/tokenizer.model" \
    --out "$out/$name" --attention "$attention" --minutes "$minutes" --compile ${TRAIN_FLAGS:-} $flags \
    >"$out/$name.stdout" 2>&1 &
  pids+=($!) names+=("$name")
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in "${names[@]}"; do
  [ -d "$out/$name" ] || continue
  mv "$out/$name.stdout" "$out/$name/stdout.txt"
  [ -f "$out/$name/model.safetensors" ] && mv "$out/$name/model.safetensors" "$out/$name.safetensors"
  tar -czf "$out/$name.tar.gz" -C "$out/$name" --exclude tokenizer.model .
  rm -rf "${out:?}/$name"
done
exit $status
