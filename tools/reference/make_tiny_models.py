#!/usr/bin/env python3
"""Writes the tiny random MHLA language models and their golden logits.

    python3 tools/reference/make_tiny_models.py [--out DIR] [--no-check]

For each model NAME it writes DIR/NAME/ (default DIR: tests/data/models):
    config.json         research layout (model_type "gla", attn_extends "mhla") plus
                        mhla_block_size and a few training-only keys the engine must ignore
    model.safetensors   random weights (seeded, so the output is reproducible)
    golden.safetensors  ids, logits, ids_long, logits_slide_mean (see README.md)
The golden logits are computed in float64 by model.py from the weights as stored (after the
rounding to F32 / BF16), read back from model.safetensors.

Unless --no-check is given, it then checks the reference model: logits of growing prefixes
equal the full-sequence logits (causality), grouped heads equal duplicated key/value heads,
the slide_mean rows inside the window equal the strict ones, strict refuses past the window,
and each directory stays under the size budget.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mhla_ref  # noqa: E402
from model import MHLAModel, ModelConfig, read_weights  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SEED = 20260305
SIZE_BUDGET = 300 * 1000  # bytes per model directory
SHORT_T = 20               # > 2 blocks of 8
LONG_T = 40                # > L * C = 32: past the trained window

# Keys the research training code writes that only steer its kernels (the engine ignores them).
TRAINING_KEYS = {
    "attn": None,
    "attn_mode": "chunk",
    "fuse_norm": True,
    "fuse_swiglu": True,
    "fuse_cross_entropy": True,
    "use_cache": True,
    "use_gk": True,
    "use_gv": False,
    "clamp_min": None,
    "elementwise_affine": True,
    "initializer_range": 0.02,
    "max_position_embeddings": 2048,
    "architectures": ["GLAForCausalLM"],
    "transformers_version": "4.45.0",
}

MODELS = {
    # No grouped heads, derived intermediate size (256 = 256*ceil(floor(32*4*2/3)/256), which
    # differs from both hidden*ratio and the unrounded 85), tied embeddings, mixing stored
    # [L, L, 1, 1, 1, 1], rotary base 10000 (no rope_theta), everything F32.
    "tiny": {
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_heads": 2,
            "num_kv_heads": None,
            "expand_k": 0.5,
            "expand_v": 1.0,
            "hidden_ratio": 4,
            "intermediate_size": None,
            "feature_map": "relu",
            "norm_eps": 1e-6,
            "vocab_size": 97,
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "use_short_conv": False,
            "use_output_gate": True,
            "hidden_act": "swish",
            "mhla_block_size": 8,
            "torch_dtype": "float32",
        },
        "blocks": 4,
        "mixing_shape": "6d",
        "dtype": "F32",
        "seed": SEED,
    },
    # Grouped heads (4 query heads on 2 key/value heads), explicit intermediate size, untied
    # lm_head, mixing stored [L, L], rope_theta 500, norm_eps 1e-5, everything BF16.
    "tiny-gqa": {
        "config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "expand_k": 0.5,
            "expand_v": 1.0,
            "hidden_ratio": 4,
            "intermediate_size": 96,
            "feature_map": "relu",
            "norm_eps": 1e-5,
            "vocab_size": 97,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "use_short_conv": False,
            "use_output_gate": True,
            "hidden_act": "swish",
            "rope_theta": 500.0,
            "mhla_block_size": 8,
            "torch_dtype": "bfloat16",
        },
        "blocks": 4,
        "mixing_shape": "2d",
        "dtype": "BF16",
        "seed": SEED + 1,
    },
}


def full_config(spec):
    cfg = {"model_type": "gla", "attn_extends": "mhla"}
    cfg.update(spec["config"])
    cfg.update(TRAINING_KEYS)
    return cfg


def random_mixing(rng, L):
    """Learned mixing before the clamp (L >= 4): uniform in [0, 1.2] (so some entries exceed 1),
    with a few lower-triangle entries pushed below 1e-5 (negative, zero, tiny) to exercise the
    clamp; entries above the diagonal are random too (they must be ignored)."""
    m = rng.uniform(0.0, 1.2, size=(L, L))
    m[0, 0] = 1.1      # clamps to 1
    m[1, 0] = 0.0      # clamps to 1e-5
    m[2, 1] = -0.25    # clamps to 1e-5
    m[2, 0] = 3e-6     # clamps to 1e-5
    # The last row is what the slide policies reuse past the window: keep its oldest weight
    # (the tail's) large so the policies differ clearly, and one entry above 1.
    m[L - 1, 0] = 0.9
    m[L - 1, L - 1] = 1.15
    return m


def random_weights(spec):
    """name -> float64 numpy array (before rounding to the storage dtype)."""
    cfg = ModelConfig(full_config(spec))
    rng = np.random.default_rng(spec["seed"])
    D, I = cfg.hidden, cfg.intermediate

    def linear(out_f, in_f, gain=1.0):
        return rng.standard_normal((out_f, in_f)) * (gain / np.sqrt(in_f))

    def norm_weight(n):
        return 1.0 + 0.1 * rng.standard_normal(n)

    w = {"model.embeddings.weight": 0.5 * rng.standard_normal((cfg.vocab, D))}
    L = spec["blocks"]
    for layer in range(cfg.layers):
        p = f"model.layers.{layer}."
        w[p + "attn_norm.weight"] = norm_weight(D)
        w[p + "attn.q_proj.weight"] = linear(cfg.heads * cfg.dk, D, 1.5)
        w[p + "attn.k_proj.weight"] = linear(cfg.kv_heads * cfg.dk, D, 1.5)
        w[p + "attn.v_proj.weight"] = linear(cfg.kv_heads * cfg.dv, D)
        if cfg.use_output_gate:
            w[p + "attn.g_proj.weight"] = linear(cfg.heads * cfg.dv, D, 2.0)
        w[p + "attn.o_proj.weight"] = linear(D, cfg.heads * cfg.dv, 0.5)
        m = random_mixing(rng, L)
        w[p + "attn.mixing_matrix"] = m.reshape(L, L, 1, 1, 1, 1) if spec["mixing_shape"] == "6d" else m
        w[p + "attn.g_norm_swish_gate.weight"] = norm_weight(cfg.dv)
        w[p + "mlp_norm.weight"] = norm_weight(D)
        w[p + "mlp.gate_proj.weight"] = linear(I, D, 1.5)
        w[p + "mlp.up_proj.weight"] = linear(I, D)
        w[p + "mlp.down_proj.weight"] = linear(D, I, 0.5)
    w["model.norm.weight"] = norm_weight(D)
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = 0.5 * rng.standard_normal((cfg.vocab, D))
    return w


def random_ids(rng, vocab, bos, n):
    """BOS first, then random ids (avoiding BOS/EOS so they are ordinary tokens)."""
    rest = rng.integers(3, vocab, size=n - 1)
    return [int(bos)] + [int(x) for x in rest]


def dir_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def make_model(name, spec, out_root):
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    cfg_json = full_config(spec)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")

    weights = random_weights(spec)
    dtypes = {n: spec["dtype"] for n in weights}
    write_safetensors(os.path.join(out, "model.safetensors"),
                      {n: torch.from_numpy(a) for n, a in weights.items()},
                      metadata={"format": "pt"}, dtypes=dtypes)

    # Golden logits from the weights as stored (rounded), read back from the file.
    model = MHLAModel.load(out)
    cfg = model.config
    rng = np.random.default_rng(spec["seed"] + 1000)
    ids = random_ids(rng, cfg.vocab, cfg.bos_token_id, SHORT_T)
    ids_long = random_ids(rng, cfg.vocab, cfg.bos_token_id, LONG_T)
    logits = model.forward(ids, policy="strict")
    logits_slide_mean = model.forward(ids_long, policy="slide_mean")
    window = model.window()
    assert SHORT_T <= window < LONG_T
    golden = {
        "ids": torch.tensor(ids, dtype=torch.float32),
        "logits": logits.to(torch.float32),
        "ids_long": torch.tensor(ids_long, dtype=torch.float32),
        "logits_slide_mean": logits_slide_mean.to(torch.float32),
    }
    metadata = {
        "ids": "token ids as F32 whole numbers, positions 0..T-1, BOS first",
        "logits": "[T, vocab] F32 rounded from float64, policy strict",
        "ids_long": "token ids as F32 whole numbers, longer than the trained window",
        "logits_slide_mean": "[T_long, vocab] F32 rounded from float64, policy slide_mean",
        "trained_window": str(window),
        "block_size": str(cfg.block_size),
        "blocks": str(model.mixing[0].shape[0]),
    }
    write_safetensors(os.path.join(out, "golden.safetensors"), golden, metadata=metadata,
                      dtypes={n: "F32" for n in golden})
    return out


# ----------------------------------------------------------------------------------------------
# Checks


def rel(a, b):
    return float(torch.linalg.norm((a - b).reshape(-1)) / torch.linalg.norm(b.reshape(-1)))


def duplicated_kv(config, tensors):
    """An equivalent model with num_kv_heads = num_heads: query head h reads key/value head
    h // (H // Hkv), so its copies of k_proj/v_proj rows come from that head."""
    cfg = ModelConfig(config)
    H, Hkv, dk, dv = cfg.heads, cfg.kv_heads, cfg.dk, cfg.dv
    group = H // Hkv
    new_cfg = dict(config)
    new_cfg["num_kv_heads"] = H
    out = dict(tensors)
    for layer in range(cfg.layers):
        p = f"model.layers.{layer}.attn."
        k = tensors[p + "k_proj.weight"].reshape(Hkv, dk, -1)
        v = tensors[p + "v_proj.weight"].reshape(Hkv, dv, -1)
        src = torch.tensor([h // group for h in range(H)])
        out[p + "k_proj.weight"] = k[src].reshape(H * dk, -1)
        out[p + "v_proj.weight"] = v[src].reshape(H * dv, -1)
    return new_cfg, out


def check_model(path, tol=1e-12):
    ok = True

    def report(what, err, limit):
        nonlocal ok
        good = err <= limit
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} {what}: {err:.3e} (limit {limit:.0e})")

    name = os.path.basename(path)
    print(f"{name}:")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    tensors, _ = read_weights(os.path.join(path, "model.safetensors"))
    model = MHLAModel(config, tensors)
    golden, _ = read_safetensors(os.path.join(path, "golden.safetensors"))
    ids = torch.from_numpy(golden["ids"]).to(torch.long)
    ids_long = torch.from_numpy(golden["ids_long"]).to(torch.long)

    full = model.forward(ids)
    report("golden logits vs recomputed (F32 rounding)", rel(torch.from_numpy(golden["logits"]).double(), full), 1e-6)

    # Causality: the last row of every prefix equals the corresponding full-sequence row.
    rows = torch.stack([model.forward(ids[: t + 1])[-1] for t in range(len(ids))])
    report("prefix-by-prefix vs full sequence", rel(rows, full), tol)

    # Grouped heads vs duplicated key/value heads.
    cfg = model.config
    if cfg.kv_heads != cfg.heads:
        dcfg, dtensors = duplicated_kv(config, tensors)
        dup = MHLAModel(dcfg, dtensors)
        report(f"grouped ({cfg.heads}q/{cfg.kv_heads}kv) vs duplicated kv heads", rel(dup.forward(ids), full), tol)
        report("  same, long input under slide_mean",
               rel(dup.forward(ids_long, "slide_mean"), model.forward(ids_long, "slide_mean")), tol)

    # Past the window: slide_mean agrees with strict inside it, strict refuses beyond it.
    window = model.window()
    long_sm = model.forward(ids_long, "slide_mean")
    report("golden logits_slide_mean vs recomputed",
           rel(torch.from_numpy(golden["logits_slide_mean"]).double(), long_sm), 1e-6)
    report("slide_mean rows inside the window vs strict",
           rel(long_sm[:window], model.forward(ids_long[:window], "strict")), tol)
    rows = torch.stack([model.forward(ids_long[: t + 1], "slide_mean")[-1] for t in range(window - 1, len(ids_long))])
    report("slide_mean prefix-by-prefix past the window", rel(rows, long_sm[window - 1:]), tol)
    try:
        model.forward(ids_long, "strict")
        print("  FAIL strict did not refuse past the window")
        ok = False
    except mhla_ref.RefusedError:
        print(f"  ok   strict refuses {len(ids_long)} tokens (window {window})")
    slide = model.forward(ids_long, "slide")
    print(f"  info slide vs slide_mean past the window differ by {rel(slide[window:], long_sm[window:]):.3e}")

    # Tied embeddings: lm_head absent exactly when tied.
    tied = "lm_head.weight" not in tensors
    if tied != bool(config.get("tie_word_embeddings")):
        print("  FAIL lm_head.weight presence does not match tie_word_embeddings")
        ok = False

    # Conditioning: the same model evaluated with float32 activations (how far an fp32 engine
    # may be expected to land).
    m32 = MHLAModel(config, tensors, dtype=torch.float32)
    report("float32 activations vs float64", rel(m32.forward(ids).double(), full), 1e-4)

    # The logits are not degenerate.
    print(f"  info logits std {float(full.std()):.3f}, max |logit| {float(full.abs().max()):.3f}, "
          f"top-2 gap min {float((full.topk(2).values[:, 0] - full.topk(2).values[:, 1]).min()):.2e}")

    size = dir_size(path)
    good = size < SIZE_BUDGET
    ok &= good
    print(f"  {'ok  ' if good else 'FAIL'} directory size {size} bytes (budget {SIZE_BUDGET})")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "models"))
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("names", nargs="*", help=f"models to write (default: all of {', '.join(MODELS)})")
    args = ap.parse_args()
    names = args.names or list(MODELS)
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n!r}")
    paths = [make_model(n, MODELS[n], args.out) for n in names]
    for p in paths:
        print(f"wrote {p}")
    if args.no_check:
        return 0
    ok = all([check_model(p) for p in paths])
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
