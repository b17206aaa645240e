"""Trains a small MHLA language model (or its plain-linear-attention baseline) for a fixed time.

    python3 tools/train/train.py --corpus .train-data/corpus --tokenizer .train-data/tokenizer.model \
        --out OUT_DIR [--attention mhla|linear] [--minutes 5]

The learning rate warms up over 100 steps and then follows the wall clock (a cosine down to a
tenth), so a run fits its time budget on any GPU. The log reports the training loss, the
held-out loss and pass-key accuracy (greedy, judged from one teacher-forced pass) as training
goes; OUT_DIR gets config.json, model.safetensors (F16 weights, F32 mixing matrices),
tokenizer.model, train.log and metrics.json.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import data  # noqa: E402
from mhla_torch import MHLALanguageModel  # noqa: E402  (puts tools/reference on the path)
import mhla_ref  # noqa: E402

# The section-6 architecture at demonstration size: about 6 M parameters.
CONFIG = {
    "model_type": "gla",
    "attn_extends": "mhla",
    "attn": None,
    "hidden_size": 256,
    "num_hidden_layers": 6,
    "num_heads": 4,
    "num_kv_heads": None,
    "expand_k": 0.5,
    "expand_v": 1.0,
    "hidden_ratio": 4,
    "intermediate_size": None,
    "feature_map": "relu",
    "hidden_act": "swish",
    "norm_eps": 1e-6,
    "vocab_size": 4096,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "use_short_conv": False,
    "use_output_gate": True,
    "rope_theta": 10000.0,
    "mhla_block_size": 64,
}
MIXING_BLOCKS = 32  # L: the trained window is L * 64 = 2048 tokens


class Log:
    def __init__(self, path):
        self.f = open(path, "w", encoding="utf-8")

    def __call__(self, text):
        print(text, flush=True)
        self.f.write(text + "\n")
        self.f.flush()


def lr_at(step, frac, peak, warmup_steps=100):
    """Linear warm-up over the first steps (counted in steps: compiling takes a while of the
    clock), then a cosine over the time budget down to a tenth of the peak."""
    return peak * min(1.0, (step + 1) / warmup_steps) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def heldout_loss(model, windows, device):
    model.eval()
    total, count = 0.0, 0
    for w in windows:
        ids = torch.tensor([w], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids[:, :-1])
        total += F.cross_entropy(logits.float()[0], ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    model.train()
    return total / count


@torch.no_grad()
def passkey_accuracy(model, docs, device):
    """Length -> share of documents whose whole answer is the greedy choice at every step."""
    model.eval()
    hits = {}
    for ids, start, answer, length in docs:
        x = torch.tensor([ids], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        pred = logits[0, start - 1: start - 1 + len(answer)].argmax(-1).tolist()
        hits.setdefault(length, []).append(pred == answer)
    model.train()
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def train_step(fn, opt, ids, w, device):
    """One optimizer step on the weighted next-token loss; returns the loss."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = fn(ids[:, :-1])
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    loss = (ce * w.reshape(-1)).sum() / w.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    with torch.no_grad():
        # Keep the mixing inside the clamp's range, so a weight that reached the floor still
        # gets gradients and can come back (the forward pass clamps it there anyway).
        for g in opt.param_groups:
            if g.get("mixing"):
                for p in g["params"]:
                    p.clamp_(mhla_ref.CLAMP_MIN, mhla_ref.CLAMP_MAX)
    return loss


def main():
    ap = argparse.ArgumentParser(description="Train a small MHLA language model")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--attention", choices=("mhla", "linear"), default="mhla")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in data.MIX.items()),
                    help="share of each kind of sample, e.g. text=0.55,passkey=0.3,dialogue=0.15")
    ap.add_argument("--mixing-lr-scale", type=float, default=1.0,
                    help="learning rate of the mixing matrices relative to the other weights")
    ap.add_argument("--mixing-freeze", type=float, default=0.0,
                    help="share of the time budget during which the mixing matrices keep their initial value")
    ap.add_argument("--answer-weight", type=float, default=data.ANSWER_WEIGHT,
                    help="loss weight of a pass-key answer token")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-every", type=float, default=45.0, help="seconds between evaluations")
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step (torch 2)")
    ap.add_argument("--init", help="start from the weights of this model directory")
    ap.add_argument("--config-override", default="{}", help="JSON merged into the model config (smoke tests)")
    args = ap.parse_args()
    mix = {k: float(v) for k, v in (item.split("=") for item in args.mix.split(","))}

    import sentencepiece as spm

    os.makedirs(args.out, exist_ok=True)
    log = Log(os.path.join(args.out, "train.log"))
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    config = dict(CONFIG, **json.loads(args.config_override))
    model = MHLALanguageModel(config, MIXING_BLOCKS, plain_linear=args.attention == "linear",
                              dropout=args.dropout).to(device)
    if args.init:
        model.load_state_dict(MHLALanguageModel.load(args.init, plain_linear=args.attention == "linear").state_dict())
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {args.attention}, {params} parameters, config {json.dumps(config)}, L {MIXING_BLOCKS}")
    log(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    log(f"initial weights: {args.init or 'random'}; batch {args.batch} x {args.seq} tokens, peak lr {args.lr}, "
        f"dropout {args.dropout}, {args.minutes} minutes, mix {mix}, answer weight {args.answer_weight}, "
        f"mixing lr x{args.mixing_lr_scale} "
        f"after the first {args.mixing_freeze:.0%} of the time")

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    held = data.Corpus(args.corpus, sp, split="heldout").tokens
    windows = [[sp.bos_id()] + held[i: i + args.seq].tolist() for i in range(0, len(held) - args.seq, args.seq)][:8]
    C = config["mhla_block_size"]
    pk_lengths = [n for n in (512, 1024, 2048) if n <= args.seq]
    pk_docs = data.passkey_eval_set(sp, pk_lengths, 16, seed=1234, C=C)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if p.dim() == 2 and "mixing" not in n], "weight_decay": 0.1, "scale": 1.0},
        {"params": [p for n, p in named if p.dim() != 2], "weight_decay": 0.0, "scale": 1.0},
        {"params": [p for n, p in named if "mixing" in n], "weight_decay": 0.0, "scale": args.mixing_lr_scale,
         "freeze": args.mixing_freeze, "mixing": True},
    ]
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr, betas=(0.9, 0.95), eps=1e-8, **fused)
    step_fn = model
    if args.compile and hasattr(torch, "compile"):
        step_fn = torch.compile(model)

    workers = {"num_workers": args.workers, "persistent_workers": True, "prefetch_factor": 4} if args.workers else {}
    dataset = data.Mix(args.corpus, args.tokenizer, args.seq, args.seed, mix, args.answer_weight)
    loader = torch.utils.data.DataLoader(dataset,
                                         batch_size=args.batch, pin_memory=device.type == "cuda", **workers)
    batches = iter(loader)

    budget = args.minutes * 60
    start = time.time()
    next_eval = 0.0
    step, tokens, smooth = 0, 0, None
    history = []
    while True:
        elapsed = time.time() - start
        if elapsed >= next_eval or elapsed >= budget:
            ho = heldout_loss(model, windows, device)
            pk = passkey_accuracy(model, pk_docs, device)
            pk_text = ", ".join(f"{k}: {v:.2f}" for k, v in pk.items())
            log(f"eval step {step} at {elapsed:.0f} s: held-out loss {ho:.4f} (perplexity {math.exp(ho):.2f}); "
                f"pass-key accuracy {pk_text}")
            history.append({"step": step, "seconds": round(elapsed, 1), "tokens": tokens, "heldout_loss": ho,
                            "passkey": pk})
            next_eval = elapsed + args.eval_every
            if elapsed >= budget:
                break
        lr = lr_at(step, elapsed / budget, args.lr)
        for g in opt.param_groups:
            g["lr"] = 0.0 if elapsed < g.get("freeze", 0.0) * budget else lr * g["scale"]
        ids, w = next(batches)
        ids, w = ids.to(device, non_blocking=True), w.to(device, non_blocking=True)
        try:
            loss = train_step(step_fn, opt, ids, w, device)
        except Exception as e:  # a compiler problem must not cost the run: go on eagerly
            if step_fn is model:
                raise
            log(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "running eagerly")
            step_fn = model
            loss = train_step(step_fn, opt, ids, w, device)
        step += 1
        tokens += ids[:, :-1].numel()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if step % 50 == 0:
            elapsed = time.time() - start
            log(f"step {step} at {elapsed:.0f} s: loss {smooth:.4f}, lr {lr:.2e}, {tokens / 1e6:.1f} M tokens "
                f"({tokens / elapsed:.0f} tok/s)")

    mix = [layer.effective_mixing().detach().cpu() for layer in model.layers]
    log("effective mixing, last row (query block 31 -> key blocks 0..31), per layer:")
    for i, W in enumerate(mix):
        log(f"  layer {i}: " + " ".join(f"{x:.3f}" for x in W[-1].tolist()))
    model.save(args.out, dtype="F16", metadata={"attention": args.attention, "steps": str(step),
                                               "tokens": str(tokens)})
    shutil.copy(args.tokenizer, os.path.join(args.out, "tokenizer.model"))
    with open(os.path.join(args.out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({"attention": args.attention, "parameters": params, "steps": step, "tokens": tokens,
                   "seconds": round(time.time() - start, 1), "history": history}, f, indent=1)
    log(f"saved {args.out} after {step} steps, {tokens} tokens")


if __name__ == "__main__":
    main()
