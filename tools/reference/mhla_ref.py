"""Plain float64 reference of MHLA (docs: the MHLA description, sections 2-5).

Written for clarity, not speed: every output is an explicit weighted sum over tokens,
    o_t = sum_s w(t, s) (q_t . k_s) v_s        [ / (q~_t . sum_s w(t, s) k~_s + eps) ]
where w(t, s) is the mixing weight of (block of t, block of s), zero for s > t in the causal
form. Inputs may be torch tensors or numpy arrays of any float dtype; everything is computed
in float64 and returned as a float64 torch tensor.

Shapes: q [T, H, dk], k [T, Hkv, dk], v [T, Hkv, dv] -> o [T, H, dv]; query head h reads
key/value head h // (H // Hkv).
"""

import math

import numpy as np
import torch

CLAMP_MIN = 1e-5
CLAMP_MAX = 1.0

FEATURE_MAPS = ("relu", "elu1", "identity", "relu_eps")
POLICIES = ("strict", "slide", "slide_mean")


class RefusedError(ValueError):
    """The inputs are well-formed but the definition refuses them (e.g. strict policy past the window)."""


def _f64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).clone()
    return torch.tensor(np.asarray(x, dtype=np.float64), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# Mixing weights


def effective_mixing(m):
    """W = tril(clamp(M, 1e-5, 1)) of a learned L x L matrix (entries above the diagonal are 0)."""
    m = _f64(m)
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"mixing matrix must be square [L, L], got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("mixing matrix holds a NaN or infinity")
    return torch.tril(torch.clamp(m, CLAMP_MIN, CLAMP_MAX))


def locality_init(L):
    """W[i][j] = 1 - (i - j) / (i + 1) for j <= i, each row normalized to sum 1."""
    w = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for j in range(i + 1):
            w[i, j] = 1.0 - (i - j) / (i + 1)
        w[i] /= w[i].sum()
    return w


def harmonic_init(L):
    """W[i][b] = 1 / (i + 1) for b <= i (the research code's initial value)."""
    w = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for b in range(i + 1):
            w[i, b] = 1.0 / (i + 1)
    return w


def grid_distance_mixing(grid_h, grid_w, window):
    """Non-causal M x M mixing from Euclidean distances between 2-D block centres:
    W = 1 - D / max(D), then each column divided by its sum."""
    rows, cols = grid_h // window, grid_w // window
    m = rows * cols
    d = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m):
        for j in range(m):
            d[i, j] = math.hypot(i // cols - j // cols, i % cols - j % cols)
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    w = 1.0 - d / d.max()
    return w / w.sum(dim=0, keepdim=True)


def causal_block_weight(W, i, b, policy):
    """Weight of key block b (b <= i) for query block i under a context policy.
    W is the effective L x L matrix."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    if b > i:
        return 0.0
    L = W.shape[0]
    if i < L:
        return float(W[i, b])
    if policy == "strict":
        raise RefusedError(f"block {i} is past the trained window of {L} blocks (strict policy)")
    if L < 2:
        raise ValueError(f"the {policy} policy needs at least 2 blocks, got {L}")
    r = i - b
    if r <= L - 2:
        return float(W[L - 1, L - 1 - r])
    tail = float(W[L - 1, 0])
    if policy == "slide_mean":
        n = i - L + 2  # number of older blocks sharing the tail weight
        tail /= n
    return tail


# ----------------------------------------------------------------------------------------------
# Features


def feature_map(x, name, eps=1e-6):
    if name == "relu":
        return torch.relu(x)
    if name == "elu1":
        return torch.nn.functional.elu(x) + 1.0
    if name == "identity":
        return x.clone()
    if name == "relu_eps":
        return torch.relu(x) + eps
    raise ValueError(f"unknown feature map {name!r}")


def rotary(x, positions, base=10000.0):
    """Rotate-half rotary on the last dim d: pairs (j, j + d/2), angle t * base^(-2j/d).
    x [T, heads, d]; positions: T absolute positions. Angles in float64."""
    T, _, d = x.shape
    if d % 2:
        raise ValueError(f"rotary needs an even head dim, got {d}")
    half = d // 2
    out = torch.empty_like(x)
    for t in range(T):
        pos = float(positions[t])
        for j in range(half):
            theta = base ** (-2.0 * j / d)
            a = pos * theta
            c, s = math.cos(a), math.sin(a)
            x1 = x[t, :, j]
            x2 = x[t, :, j + half]
            out[t, :, j] = x1 * c - x2 * s
            out[t, :, j + half] = x2 * c + x1 * s
    return out


def _prepare(q, k, v, feature, use_rotary, rotary_base, scale, eps):
    q, k, v = _f64(q), _f64(k), _f64(v)
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError("q, k, v must be [T, heads, dim]")
    T, H, dk = q.shape
    if k.shape[0] != T or v.shape[0] != T or k.shape[2] != dk or v.shape[1] != k.shape[1]:
        raise ValueError(f"inconsistent shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
    Hkv = k.shape[1]
    if H % Hkv:
        raise ValueError(f"query heads {H} must be a multiple of key/value heads {Hkv}")
    fq = feature_map(q, feature, eps) * scale  # scaled, un-rotated
    fk = feature_map(k, feature, eps)          # un-rotated
    if use_rotary:
        pos = list(range(T))
        rq, rk = rotary(fq, pos, rotary_base), rotary(fk, pos, rotary_base)
    else:
        rq, rk = fq, fk
    return fq, fk, rq, rk, v


def _mix(fq, fk, rq, rk, v, token_weight, normalize, eps):
    """o[t, h] = sum_s w[t, s] (rq[t,h] . rk[s,g]) v[s,g]  (/ (fq[t,h] . sum_s w[t,s] fk[s,g] + eps))."""
    T, H, _ = rq.shape
    Hkv = rk.shape[1]
    group = H // Hkv
    o = torch.zeros(T, H, v.shape[2], dtype=torch.float64)
    for h in range(H):
        g = h // group
        scores = (rq[:, h, :] @ rk[:, g, :].T) * token_weight  # [T, T]
        num = scores @ v[:, g, :]
        if normalize:
            den = ((fq[:, h, :] @ fk[:, g, :].T) * token_weight).sum(dim=1, keepdim=True) + eps
            o[:, h, :] = num / den
        else:
            o[:, h, :] = num
    return o


# ----------------------------------------------------------------------------------------------
# Causal MHLA (section 3)


def causal_mhla(q, k, v, mixing, block_size=64, feature_map="relu", rotary=False, rotary_base=10000.0,
                scale=None, normalize=False, eps=1e-6, policy="strict"):
    """Causal MHLA. mixing: the learned [L, L] matrix BEFORE the clamp (the effective weights are
    tril(clamp(M, 1e-5, 1))). Returns o [T, H, dv] float64."""
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {feature_map!r}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    if normalize and feature_map == "identity":
        raise ValueError("the normalized form needs a non-negative feature map, not identity")
    C = int(block_size)
    if C <= 0:
        raise ValueError("block size must be positive")
    W = effective_mixing(mixing)
    L = W.shape[0]
    T, _, dk = (q.shape[0], q.shape[1], q.shape[2])
    if policy == "strict" and T > L * C:
        raise RefusedError(
            f"position {L * C} is past the trained window of {L * C} tokens ({L} blocks of {C}) under the strict policy")
    s = dk ** -0.5 if scale is None else float(scale)
    fq, fk, rq, rk, v = _prepare(q, k, v, feature_map, rotary, rotary_base, s, eps)

    w = torch.zeros(T, T, dtype=torch.float64)
    for t in range(T):
        for u in range(t + 1):
            w[t, u] = causal_block_weight(W, t // C, u // C, policy)
    return _mix(fq, fk, rq, rk, v, w, normalize, eps)


# ----------------------------------------------------------------------------------------------
# Non-causal MHLA (section 5)


def noncausal_blocks(T, block_size=64, grid=None, window=None):
    """Block index of each token: contiguous runs of block_size, or the s x s windows (row-major)
    of an h x w grid whose tokens are in row-major order."""
    if grid is None:
        C = int(block_size)
        if C <= 0 or T <= 0 or T % C:
            raise ValueError(f"T={T} must be a positive multiple of the block size {C}")
        return [t // C for t in range(T)], T // C
    gh, gw = grid
    s = int(window)
    if s <= 0 or gh % s or gw % s:
        raise ValueError(f"grid {gh}x{gw} must split into whole {s}x{s} windows")
    if T != gh * gw:
        raise ValueError(f"grid {gh}x{gw} holds {gh * gw} tokens, got T={T}")
    cols = gw // s
    blocks = []
    for t in range(T):
        y, x = divmod(t, gw)
        blocks.append((y // s) * cols + x // s)
    return blocks, (gh // s) * cols


def noncausal_mhla(q, k, v, mixing, block_size=64, grid=None, window=None, feature_map="relu", rotary=False,
                   rotary_base=10000.0, scale=None, normalize=True, eps=1e-6):
    """Non-causal MHLA: every block i mixes all M summaries with mixing[i][b] (used as given).
    Rotary positions are the token indices in the given order. Default scale 1."""
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature map {feature_map!r}")
    if normalize and feature_map == "identity":
        raise ValueError("the normalized form needs a non-negative feature map, not identity")
    if (grid is None) != (window is None):
        raise ValueError("grid and window go together")
    T = q.shape[0]
    blocks, M = noncausal_blocks(T, block_size, grid, window)
    Wm = _f64(mixing)
    if tuple(Wm.shape) != (M, M):
        raise ValueError(f"mixing must be [{M}, {M}], got {tuple(Wm.shape)}")
    s = 1.0 if scale is None else float(scale)
    fq, fk, rq, rk, v = _prepare(q, k, v, feature_map, rotary, rotary_base, s, eps)
    w = torch.zeros(T, T, dtype=torch.float64)
    for t in range(T):
        for u in range(T):
            w[t, u] = Wm[blocks[t], blocks[u]]
    return _mix(fq, fk, rq, rk, v, w, normalize, eps)
