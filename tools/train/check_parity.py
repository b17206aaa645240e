"""Checks a trained model three ways, all in float64 on the CPU:

1. the trainer's block-form model against the plain reference (tools/reference/model.py) on a
   short token sequence (relative L2 error of the logits);
2. held-out perplexity computed by PyTorch the way `mhla perplexity` computes it (the file
   tokenized whole, windows of BOS + L*C - 1 tokens);
3. optionally, the engine's own figure (`--engine build/apps/mhla`) and the relative difference.

    python3 tools/train/check_parity.py --model models/mhla-demo --text .train-data/corpus/heldout.txt \
        [--engine build/apps/mhla]
"""

import argparse
import math
import os
import re
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mhla_torch import MHLALanguageModel  # noqa: E402  (puts tools/reference on the path)
import model as reference  # noqa: E402  (tools/reference/model.py)


def padded_logits(model, ids):
    """Logits of ids (any length): the block form needs a multiple of C, so pad with EOS at the
    end, which cannot change earlier positions."""
    C = model.cfg.block_size
    pad = (-len(ids)) % C
    x = torch.tensor([ids + [model.cfg.eos_token_id] * pad])
    with torch.no_grad():
        return model(x)[0, : len(ids)]


def pytorch_perplexity(model, ids, bos):
    context = model.window()
    nll, scored = 0.0, 0
    for at in range(0, len(ids), context - 1):
        window = [bos] + ids[at: at + context - 1]
        logits = padded_logits(model, window)
        nll += F.cross_entropy(logits[:-1], torch.tensor(window[1:]), reduction="sum").item()
        scored += len(window) - 1
    return math.exp(nll / scored), scored


def main():
    ap = argparse.ArgumentParser(description="Parity of a trained model: block form vs reference, engine vs PyTorch")
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True, help="held-out text file")
    ap.add_argument("--engine", help="path of the mhla executable")
    args = ap.parse_args()
    import sentencepiece as spm

    model = MHLALanguageModel.load(args.model).double().eval()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model, "tokenizer.model"))
    with open(args.text, encoding="utf-8") as f:
        ids = sp.encode(f.read())

    short = [sp.bos_id()] + ids[:191]
    ref = reference.logits(reference.load_model(args.model), short)
    fast = padded_logits(model, short)
    err = (torch.linalg.norm(fast - ref) / torch.linalg.norm(ref)).item()
    print(f"block form vs reference on {len(short)} tokens: relative L2 error {err:.2e}")

    ppl, scored = pytorch_perplexity(model, ids, sp.bos_id())
    print(f"PyTorch (float64) perplexity: {ppl:.4f} over {scored} tokens")
    if args.engine:
        out = subprocess.run([args.engine, "perplexity", "--model", args.model, "--text", args.text],
                             check=True, capture_output=True, text=True).stdout
        engine = float(re.search(r"perplexity: ([0-9.]+) over (\d+) tokens", out).group(1))
        print(f"engine perplexity: {engine:.4f}; relative difference {abs(engine - ppl) / ppl * 100:.4f} %")


if __name__ == "__main__":
    main()
