#!/usr/bin/env python3
"""Checks the reference against itself and against independent formulations.

    python3 tools/reference/selfcheck.py
Exits non-zero on the first failed check.
"""

import math
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mhla_ref as ref  # noqa: E402
from safetensors_io import decode, encode, read_safetensors, write_safetensors  # noqa: E402

rng = np.random.default_rng(7)
failures = 0


def rnd(*shape):
    return torch.tensor(rng.standard_normal(shape), dtype=torch.float64)


def rel(a, b):
    return float(torch.linalg.norm((a - b).reshape(-1)) / max(torch.linalg.norm(b.reshape(-1)), 1e-300))


def check(name, ok, detail=""):
    global failures
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        failures += 1


def close(name, a, b, tol=1e-12):
    e = rel(a, b)
    check(name, e <= tol, f"(rel err {e:.2e})")


def recurrent_causal(q, k, v, mixing, C, feature_map="relu", rotary=False, base=10000.0, scale=None,
                     normalize=False, eps=1e-6, policy="strict"):
    """Token by token, with block summaries and (past the window) a tail sum, written from the
    state description: o_t = q.(sum_{b<i} w S_b + w_ii A); slide policies keep L-2 recent
    summaries and one tail sum of every older block."""
    W = ref.effective_mixing(mixing)
    L = W.shape[0]
    T, H, dk = q.shape
    Hkv, dv = k.shape[1], v.shape[2]
    g = H // Hkv
    s = dk ** -0.5 if scale is None else scale
    fq = ref.feature_map(q, feature_map, eps) * s
    fk = ref.feature_map(k, feature_map, eps)
    rq = ref.rotary(fq, range(T), base) if rotary else fq
    rk = ref.rotary(fk, range(T), base) if rotary else fk
    o = torch.zeros(T, H, dv, dtype=torch.float64)
    done_S, done_z = [], []  # completed block summaries, by block index
    A = torch.zeros(Hkv, dk, dv, dtype=torch.float64)
    Az = torch.zeros(Hkv, dk, dtype=torch.float64)
    for t in range(T):
        i = t // C
        if t % C == 0 and t > 0:
            done_S.append(A.clone())
            done_z.append(Az.clone())
            A.zero_()
            Az.zero_()
        if i >= L and policy == "strict":
            raise ref.RefusedError("past the window")
        A += torch.einsum("hd,he->hde", rk[t], v[t])
        Az += fk[t]
        # mixed prefix P of block i
        P = torch.zeros(Hkv, dk, dv, dtype=torch.float64)
        Pz = torch.zeros(Hkv, dk, dtype=torch.float64)
        if i < L:
            for b in range(i):
                P += W[i, b] * done_S[b]
                Pz += W[i, b] * done_z[b]
            wd = W[i, i]
        else:
            for r in range(1, L - 1):
                P += W[L - 1, L - 1 - r] * done_S[i - r]
                Pz += W[L - 1, L - 1 - r] * done_z[i - r]
            n = i - L + 2
            tail = sum(done_S[: n])
            tailz = sum(done_z[: n])
            wt = W[L - 1, 0] / (n if policy == "slide_mean" else 1)
            P += wt * tail
            Pz += wt * tailz
            wd = W[L - 1, L - 1]
        for h in range(H):
            num = rq[t, h] @ (P[h // g] + wd * A[h // g])
            if normalize:
                num = num / (fq[t, h] @ (Pz[h // g] + wd * Az[h // g]) + eps)
            o[t, h] = num
    return o


def main():
    T, H, Hkv, dk, dv, C, L = 22, 4, 2, 6, 5, 4, 3
    q, k, v = rnd(T, H, dk), rnd(T, Hkv, dk), rnd(T, Hkv, dv)
    m = torch.tensor(np.tril(rng.uniform(0.05, 1.0, (L, L))))

    # 1. the dense form equals the recurrent block/state form, for every policy and option mix
    for policy in ("slide", "slide_mean"):
        for fm, rot, norm in (("relu", False, False), ("elu1", True, False), ("relu_eps", True, True),
                              ("identity", True, False)):
            a = ref.causal_mhla(q, k, v, m, C, fm, rot, 10000.0, None, norm, 1e-6, policy)
            b = recurrent_causal(q, k, v, m, C, fm, rot, 10000.0, None, norm, 1e-6, policy)
            close(f"dense == recurrent ({policy}, {fm}, rotary={rot}, normalize={norm})", a, b)
    Tw = L * C
    a = ref.causal_mhla(q[:Tw], k[:Tw], v[:Tw], m, C, "elu1", True, 100.0, 0.7, True)
    b = recurrent_causal(q[:Tw], k[:Tw], v[:Tw], m, C, "elu1", True, 100.0, 0.7, True)
    close("dense == recurrent (strict, elu1, rotary, normalized, scale 0.7)", a, b)

    # 2. inside the window every policy gives the same output
    qs, ks, vs = q[:Tw], k[:Tw], v[:Tw]
    strict = ref.causal_mhla(qs, ks, vs, m, C, rotary=True)
    for policy in ("slide", "slide_mean"):
        close(f"{policy} == strict inside the window",
              ref.causal_mhla(qs, ks, vs, m, C, rotary=True, policy=policy), strict, 0.0)
    # and slide/slide_mean differ past it (block L has n = 2 tail blocks)
    far_s = ref.causal_mhla(q, k, v, m, C, policy="slide")
    far_m = ref.causal_mhla(q, k, v, m, C, policy="slide_mean")
    check("slide == slide_mean before block L", rel(far_s[:Tw], far_m[:Tw]) == 0.0)
    check("slide != slide_mean from block L (2 tail blocks)", rel(far_s[Tw:Tw + C], far_m[Tw:Tw + C]) > 1e-3)

    # 3. strict refuses t >= L*C; exactly L*C tokens are fine
    try:
        ref.causal_mhla(q[:Tw + 1], k[:Tw + 1], v[:Tw + 1], m, C)
        check("strict refuses past the window", False)
    except ref.RefusedError as e:
        check("strict refuses past the window", True, f"({e})")

    # 4. causality: the output at t does not depend on tokens after t
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[15:] += 1.0
    k2[15:] -= 2.0
    v2[15:] *= 3.0
    a = ref.causal_mhla(q, k, v, m, C, "elu1", True, normalize=True, policy="slide")
    b = ref.causal_mhla(q2, k2, v2, m, C, "elu1", True, normalize=True, policy="slide")
    close("causal: prefix unchanged by later tokens", b[:15], a[:15], 0.0)

    # 5. normalized output of a constant v: exactly v with eps = 0; v * x/(x+eps) otherwise
    c = rnd(1, 1, dv)
    vc = c.expand(T, Hkv, dv).clone()
    o = ref.causal_mhla(q, k, vc, m, C, "elu1", normalize=True, eps=0.0, policy="slide")
    close("normalized, constant v, eps = 0 gives v", o, c.expand(T, H, dv))
    o = ref.causal_mhla(q, k, vc, m, C, "elu1", normalize=True, eps=1e-6, policy="slide_mean")
    close("normalized, constant v, eps = 1e-6 gives v up to eps", o, c.expand(T, H, dv), 1e-5)
    o = ref.causal_mhla(qs, ks, vc[:Tw], m, C, "relu_eps", normalize=True, eps=1e-3)
    d = ref.feature_map(qs, "relu_eps", 1e-3) * dk ** -0.5  # denominator by hand
    kz = ref.feature_map(ks, "relu_eps", 1e-3)
    W = ref.effective_mixing(m)
    den = torch.zeros(Tw, H, 1, dtype=torch.float64)
    for t in range(Tw):
        for s_ in range(t + 1):
            den[t] += W[t // C, s_ // C] * (d[t] * kz[s_].repeat_interleave(2, 0)).sum(-1, keepdim=True)
    close("normalized, constant v, eps = 1e-3 gives v x/(x+eps)", o, c * den / (den + 1e-3))
    o = ref.noncausal_mhla(q[:20], k[:20], vc[:20], torch.rand(5, 5, dtype=torch.float64), 4, feature_map="elu1",
                           eps=0.0)
    close("non-causal normalized, constant v gives v", o, c.expand(20, H, dv))

    # 6. grouped heads equal duplicated key/value heads
    kd = k.repeat_interleave(H // Hkv, dim=1)
    vd = v.repeat_interleave(H // Hkv, dim=1)
    close("grouped == duplicated kv heads (causal)",
          ref.causal_mhla(q, k, v, m, C, "elu1", True, policy="slide_mean"),
          ref.causal_mhla(q, kd, vd, m, C, "elu1", True, policy="slide_mean"), 0.0)
    a, b = _grouped_noncausal_pair(q[:16], k[:16], v[:16], kd[:16], vd[:16])
    close("grouped == duplicated kv heads (non-causal, windows)", a, b, 0.0)

    # 7. all-ones mixing is plain causal linear attention: o_t = sum_{s<=t} (q_t.k_s) v_s
    ones = torch.ones(L, L)
    fq, fk = torch.relu(q[:Tw]) * dk ** -0.5, torch.relu(k[:Tw])
    plain = torch.zeros(Tw, H, dv, dtype=torch.float64)
    for t in range(Tw):
        for h in range(H):
            for s_ in range(t + 1):
                plain[t, h] += (fq[t, h] @ fk[s_, h // 2]) * v[s_, h // 2]
    close("all-ones mixing == causal linear attention", ref.causal_mhla(qs, ks, vs, ones, C), plain)
    # a single block is the same thing too
    close("one block of C >= T == causal linear attention",
          ref.causal_mhla(qs, ks, vs, torch.ones(1, 1) * 0.5, Tw) * 2.0, plain)

    # 8. identity mixing (only the diagonal) is block-local linear attention
    eye = torch.eye(L)
    blocal = torch.zeros(Tw, H, dv, dtype=torch.float64)
    for t in range(Tw):
        for h in range(H):
            for s_ in range((t // C) * C, t + 1):
                blocal[t, h] += (fq[t, h] @ fk[s_, h // 2]) * v[s_, h // 2]
    W_eye = ref.effective_mixing(eye)
    check("effective_mixing clamps zeros to 1e-5", float(W_eye[1, 0]) == 1e-5 and float(W_eye[0, 1]) == 0.0)
    close("diagonal mixing ~ block-local attention", ref.causal_mhla(qs, ks, vs, eye, C), blocal, 1e-3)

    # 9. the clamp: tril(clamp(M)) by hand
    raw = torch.tensor([[-1.0, 5.0, 2.0], [3.0, 0.5, -2.0], [0.0, 1e-7, 1.5]], dtype=torch.float64)
    want = torch.tensor([[1e-5, 0, 0], [1.0, 0.5, 0], [1e-5, 1e-5, 1.0]], dtype=torch.float64)
    close("effective_mixing by hand", ref.effective_mixing(raw), want, 0.0)
    close("output uses the clamped matrix", ref.causal_mhla(qs, ks, vs, raw, C), ref.causal_mhla(qs, ks, vs, want, C),
          0.0)

    # 10. initializations
    li = ref.locality_init(4)
    close("locality_init rows sum to 1", li.sum(dim=1), torch.ones(4, dtype=torch.float64))
    check("locality_init row 0 is [1]", float(li[0, 0]) == 1.0)
    close("locality_init row 2 by hand", li[2, :3], torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64) / 2.0)
    check("locality_init upper triangle zero", float(torch.triu(li, 1).abs().sum()) == 0.0)
    hi = ref.harmonic_init(4)
    close("harmonic_init row 3 is 1/4", hi[3], torch.full((4,), 0.25, dtype=torch.float64), 0.0)
    check("harmonic_init upper triangle zero", float(torch.triu(hi, 1).abs().sum()) == 0.0)
    gd = ref.grid_distance_mixing(8, 8, 4)
    close("grid distance mixing columns sum to 1", gd.sum(dim=0), torch.ones(4, dtype=torch.float64))

    # 11. rotary: rotate-half by hand, and scores depend only on t - s
    x = rnd(1, 1, 4)
    a0 = 3 * 1.0
    a1 = 3 * 10000.0 ** -0.5
    want = torch.tensor([x[0, 0, 0] * math.cos(a0) - x[0, 0, 2] * math.sin(a0),
                         x[0, 0, 1] * math.cos(a1) - x[0, 0, 3] * math.sin(a1),
                         x[0, 0, 2] * math.cos(a0) + x[0, 0, 0] * math.sin(a0),
                         x[0, 0, 3] * math.cos(a1) + x[0, 0, 1] * math.sin(a1)], dtype=torch.float64)
    close("rotary by hand at t = 3, d = 4", ref.rotary(x, [3])[0, 0], want)
    xa, xb = rnd(1, 1, 8), rnd(1, 1, 8)
    s1 = ref.rotary(xa, [9])[0, 0] @ ref.rotary(xb, [4])[0, 0]
    s2 = ref.rotary(xa, [109])[0, 0] @ ref.rotary(xb, [104])[0, 0]
    check("rotary scores are relative", abs(float(s1 - s2)) < 1e-12, f"({float(s1 - s2):.1e})")
    close("rotary preserves norms", torch.linalg.norm(ref.rotary(xa, [12345])), torch.linalg.norm(xa))

    # 12. feature maps
    z = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    close("elu1", ref.feature_map(z, "elu1"), torch.tensor([math.exp(-2), math.exp(-.5), 1, 1.5, 3], dtype=torch.float64))
    close("relu_eps", ref.feature_map(z, "relu_eps", 0.25), torch.tensor([.25, .25, .25, .75, 2.25], dtype=torch.float64))
    close("relu", ref.feature_map(z, "relu"), torch.tensor([0, 0, 0, .5, 2.0], dtype=torch.float64))
    close("identity", ref.feature_map(z, "identity"), z, 0.0)
    try:
        ref.causal_mhla(qs, ks, vs, m, C, "identity", normalize=True)
        check("normalized identity refused", False)
    except ValueError:
        check("normalized identity refused", True)

    # 13. non-causal: windows of a grid one window wide are contiguous 1-D blocks
    mm = torch.tensor(rng.uniform(0, 1, (4, 4)))
    a = ref.noncausal_mhla(q[:16], k[:16], v[:16], mm, grid=(8, 2), window=2, feature_map="elu1", rotary=True)
    b = ref.noncausal_mhla(q[:16], k[:16], v[:16], mm, block_size=4, feature_map="elu1", rotary=True)
    close("non-causal 8x2 grid, window 2 == 1-D blocks of 4", a, b, 0.0)
    # a 4x4 grid with 2x2 windows permutes tokens: block of token (y, x) = (y//2)*2 + x//2
    blocks, M = ref.noncausal_blocks(16, grid=(4, 4), window=2)
    check("window block indices", blocks == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3] and M == 4)
    # one block: global normalized linear attention
    fq1, fk1 = ref.feature_map(q[:8], "relu_eps"), ref.feature_map(k[:8], "relu_eps")
    glob = torch.zeros(8, H, dv, dtype=torch.float64)
    for h in range(H):
        kk = fk1[:, h // 2]
        glob[:, h] = (fq1[:, h] @ kk.T @ v[:8, h // 2]) / ((fq1[:, h] @ kk.sum(0)).unsqueeze(1) + 1e-6)
    close("non-causal one block == global linear attention",
          ref.noncausal_mhla(q[:8], k[:8], v[:8], torch.ones(1, 1), 8, feature_map="relu_eps"), glob)
    # the non-causal form with lower-triangular mixing and one token per block is causal
    # (block == token), so it equals the causal form with C = 1 and the same (already valid) weights
    mt = torch.tensor(np.tril(rng.uniform(0.05, 1.0, (10, 10))))
    close("non-causal, C = 1, tril mixing == causal, C = 1",
          ref.noncausal_mhla(q[:10], k[:10], v[:10], mt, 1, feature_map="elu1", rotary=True, scale=0.5,
                             normalize=True),
          ref.causal_mhla(q[:10], k[:10], v[:10], mt, 1, feature_map="elu1", rotary=True, scale=0.5, normalize=True))

    # 14. safetensors round trip, every dtype, metadata
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "b": np.linspace(-1, 1, 5),
               "c": np.array([1.5, -2.25], dtype=np.float16), "d": torch.tensor([1.0, 3.14159, -1e30, 2e-3]),
               "e": np.zeros((0, 4), dtype=np.float32), "s": np.float32(2.5)}
    meta = {"mode": "causal", "x": "1e-06"}
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.safetensors")
        write_safetensors(p, tensors, meta, dtypes={"d": "BF16"})
        back, bmeta = read_safetensors(p)
        raw = open(p, "rb").read()
    check("safetensors metadata", bmeta == meta)
    check("safetensors header aligned to 8", int.from_bytes(raw[:8], "little") % 8 == 0)
    check("safetensors F32", back["a"].dtype == np.float32 and np.array_equal(back["a"], tensors["a"]))
    check("safetensors F64", back["b"].dtype == np.float64 and np.array_equal(back["b"], tensors["b"]))
    check("safetensors F16", back["c"].dtype == np.float16 and np.array_equal(back["c"], tensors["c"]))
    check("safetensors BF16", np.array_equal(back["d"], tensors["d"].to(torch.bfloat16).float().numpy()), str(back["d"]))
    check("safetensors empty and scalar", back["e"].shape == (0, 4) and back["s"].shape == () and back["s"] == 2.5)
    t2, m2, dt2 = decode(encode({"x": np.ones(3)}, None))
    check("safetensors without metadata", m2 == {} and dt2 == {"x": "F64"})

    print("all checks passed" if failures == 0 else f"{failures} check(s) FAILED")
    return 1 if failures else 0


def _grouped_noncausal_pair(q, k, v, kd, vd):
    mm = torch.tensor(np.random.default_rng(3).uniform(0, 1, (4, 4)))
    a = ref.noncausal_mhla(q, k, v, mm, grid=(4, 4), window=2, feature_map="elu1", rotary=True)
    b = ref.noncausal_mhla(q, kd, vd, mm, grid=(4, 4), window=2, feature_map="elu1", rotary=True)
    return a, b


if __name__ == "__main__":
    sys.exit(main())
