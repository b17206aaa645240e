#!/usr/bin/env python3
"""Writes the golden cases tests/data/golden/NAME.safetensors.

Each file holds q, k, v and mixing (F32, random, seeded) and o (F32), the float64 reference
output computed from the F32-rounded inputs, plus the operator options as string metadata.
Run from anywhere:  python3 tools/reference/make_golden.py [--out DIR]
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mhla_ref  # noqa: E402
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SEED = 20260101


def _f32(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float32)


def causal_case(name, rng, T, H, Hkv, dk, dv, C, mixing, feature_map="relu", rotary=False,
                rotary_base=10000.0, scale=None, normalize=False, eps=1e-6, policy="strict"):
    q = _f32(rng.standard_normal((T, H, dk)))
    k = _f32(rng.standard_normal((T, Hkv, dk)))
    v = _f32(rng.standard_normal((T, Hkv, dv)))
    m = _f32(mixing)
    o = mhla_ref.causal_mhla(q, k, v, m, block_size=C, feature_map=feature_map, rotary=rotary,
                             rotary_base=rotary_base, scale=scale, normalize=normalize, eps=eps, policy=policy)
    meta = {
        "mode": "causal",
        "block_size": str(C),
        "feature_map": feature_map,
        "rotary": "true" if rotary else "false",
        "rotary_base": repr(float(rotary_base)),
        "normalize": "true" if normalize else "false",
        "eps": repr(float(eps)),
        "policy": policy,
    }
    if scale is not None:
        meta["scale"] = repr(float(scale))
    return name, {"q": q, "k": k, "v": v, "mixing": m, "o": _f32(o.numpy())}, meta


def noncausal_case(name, rng, T, H, Hkv, dk, dv, mixing, block_size=None, grid=None, window=None,
                   feature_map="relu", rotary=False, rotary_base=10000.0, scale=None, normalize=True, eps=1e-6):
    q = _f32(rng.standard_normal((T, H, dk)))
    k = _f32(rng.standard_normal((T, Hkv, dk)))
    v = _f32(rng.standard_normal((T, Hkv, dv)))
    m = _f32(mixing)
    C = block_size if grid is None else window * window
    o = mhla_ref.noncausal_mhla(q, k, v, m, block_size=C, grid=grid, window=window, feature_map=feature_map,
                                rotary=rotary, rotary_base=rotary_base, scale=scale, normalize=normalize, eps=eps)
    meta = {
        "mode": "noncausal",
        "block_size": str(C),
        "feature_map": feature_map,
        "rotary": "true" if rotary else "false",
        "rotary_base": repr(float(rotary_base)),
        "normalize": "true" if normalize else "false",
        "eps": repr(float(eps)),
    }
    if scale is not None:
        meta["scale"] = repr(float(scale))
    if grid is not None:
        meta["grid"] = f"{grid[0]},{grid[1]}"
        meta["window"] = str(window)
    return name, {"q": q, "k": k, "v": v, "mixing": m, "o": _f32(o.numpy())}, meta


def random_valid_mixing(rng, L, low=0.05, high=1.0):
    """A learned matrix already inside [1e-5, 1] on and below the diagonal."""
    return np.tril(rng.uniform(low, high, (L, L)))


def cases():
    rng = np.random.default_rng(SEED)
    out = []
    # 1. the plain research configuration in miniature: relu, unnormalized, default scale
    out.append(causal_case("causal_relu_plain", rng, T=16, H=2, Hkv=2, dk=8, dv=8, C=4,
                           mixing=mhla_ref.harmonic_init(4)))
    # 2. elu1 feature map with rotary (feature map first, then rotary), locality init
    out.append(causal_case("causal_elu1_rotary", rng, T=20, H=2, Hkv=2, dk=8, dv=6, C=5,
                           mixing=mhla_ref.locality_init(4), feature_map="elu1", rotary=True))
    # 3. normalized relu_eps with rotary (denominator un-rotated), explicit scale, other base
    out.append(causal_case("causal_normalized_relu_eps_rotary", rng, T=24, H=2, Hkv=2, dk=8, dv=4, C=8,
                           mixing=random_valid_mixing(rng, 3), feature_map="relu_eps", rotary=True,
                           rotary_base=500.0, scale=0.3, normalize=True))
    # 4. grouped query heads: 4 query heads on 2 key/value heads
    out.append(causal_case("causal_grouped_heads", rng, T=15, H=4, Hkv=2, dk=8, dv=8, C=4,
                           mixing=random_valid_mixing(rng, 4), rotary=True))
    # 5. identity feature map, unnormalized (signed scores)
    out.append(causal_case("causal_identity_unnormalized", rng, T=16, H=2, Hkv=1, dk=6, dv=5, C=4,
                           mixing=random_valid_mixing(rng, 4), feature_map="identity"))
    # 6. slide past the trained window (L*C = 12 tokens, T = 40)
    out.append(causal_case("causal_slide", rng, T=40, H=2, Hkv=1, dk=8, dv=8, C=4,
                           mixing=random_valid_mixing(rng, 3), policy="slide", rotary=True))
    # 7. slide_mean past the window, normalized, T not a multiple of C
    out.append(causal_case("causal_slide_mean", rng, T=37, H=2, Hkv=2, dk=6, dv=8, C=4,
                           mixing=random_valid_mixing(rng, 3), feature_map="elu1", normalize=True,
                           policy="slide_mean"))
    # 8. slide with L = 4 (distances 1 and 2 kept one by one) and an odd T
    out.append(causal_case("causal_slide_L4_odd", rng, T=39, H=2, Hkv=2, dk=4, dv=4, C=4,
                           mixing=random_valid_mixing(rng, 4), policy="slide"))
    # 9. an odd T that is not a multiple of C, strict, inside the window
    out.append(causal_case("causal_odd_length", rng, T=23, H=2, Hkv=2, dk=8, dv=8, C=6,
                           mixing=random_valid_mixing(rng, 4), feature_map="elu1"))
    # 10. a learned matrix with values outside [1e-5, 1] and junk above the diagonal
    raw = rng.normal(0.4, 0.9, (4, 4))
    raw[0, 0] = -0.5   # clamps to 1e-5
    raw[1, 0] = 3.0    # clamps to 1
    raw[2, 1] = 0.0    # clamps to 1e-5
    raw[0, 3] = 7.0    # above the diagonal: ignored
    out.append(causal_case("causal_clamped_mixing", rng, T=16, H=2, Hkv=2, dk=8, dv=8, C=4, mixing=raw))
    # 11. non-causal, 1-D blocks, normalized, no scale
    out.append(noncausal_case("noncausal_1d", rng, T=32, H=2, Hkv=2, dk=8, dv=8, block_size=8,
                              mixing=rng.uniform(0.0, 1.0, (4, 4))))
    # 12. non-causal, 4x4 windows over an 8x8 grid, grouped heads, distance mixing
    out.append(noncausal_case("noncausal_windows", rng, T=64, H=2, Hkv=1, dk=8, dv=8, grid=(8, 8), window=4,
                              mixing=mhla_ref.grid_distance_mixing(8, 8, 4), feature_map="relu_eps"))
    # 13. non-causal, 2x2 windows over a 4x6 grid, rotary and elu1, random mixing
    out.append(noncausal_case("noncausal_windows_rotary", rng, T=24, H=2, Hkv=2, dk=4, dv=4, grid=(4, 6),
                              window=2, mixing=rng.uniform(0.0, 1.0, (6, 6)), feature_map="elu1", rotary=True))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "golden"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name, tensors, meta in cases():
        path = os.path.join(args.out, name + ".safetensors")
        write_safetensors(path, tensors, meta)
        back, back_meta = read_safetensors(path)
        assert back_meta == meta and all(np.array_equal(back[n], tensors[n]) for n in tensors), path
        size = os.path.getsize(path)
        total += size
        print(f"{name:40s} T={tensors['q'].shape[0]:3d} {size:6d} bytes")
    print(f"{total} bytes in {args.out}")


if __name__ == "__main__":
    main()
