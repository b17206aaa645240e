#!/usr/bin/env bash
# Trains the SentencePiece tokenizer of the demonstration models on the training text (Debian's
# `sentencepiece` package provides spm_train). 4096 BPE pieces: the corpus is small (about 9 MB),
# so a small vocabulary keeps every piece well trained and the embedding table small. Digits are
# split (a pass key is then one token per digit), unknown characters fall back to bytes, no
# space is prepended to a text (so a word starts the same way at the start of a text and after a
# newline; the training input is read line by line), and
# whitespace is kept as it is (no normalization), so code indentation and the newlines of the
# chat format survive a round trip.
#   tools/train/train_tokenizer.sh CORPUS_DIR OUT_PREFIX
set -euo pipefail
corpus=${1:?corpus directory (from build_corpus.py)}
prefix=${2:?output prefix, e.g. .train-data/tokenizer}
spm_train --input="$corpus/spm_input.txt" --model_prefix="$prefix" \
  --vocab_size=4096 --model_type=bpe --character_coverage=0.99995 \
  --byte_fallback=true --split_digits=true --add_dummy_prefix=false \
  --normalization_rule_name=identity --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --max_sentence_length=8192 --input_sentence_size=2000000 --shuffle_input_sentence=true \
  --num_threads=2 --minloglevel=1
