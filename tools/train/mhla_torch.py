"""The MHLA language model (MHLA.md section 6) as a trainable PyTorch module.

The math is the one of tools/reference/model.py (whose configuration parsing, RMSNorm and
initializations it reuses); what differs is the form: the causal operator runs block by block
with matrix products (section 3's chunk form) instead of the reference's explicit weighted sum
over token pairs, so it is fast enough to train. `check_parity.py` compares the two.

`plain_linear=True` fixes every mixing weight to 1, which is causal linear attention with one
global summary: the baseline that shows what the learned mixing adds.
"""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))

import mhla_ref  # noqa: E402
import safetensors_io  # noqa: E402
from model import ModelConfig, rms_norm  # noqa: E402


def rotary_tables(T, d, base, device):
    """cos, sin [T, d/2] of the angles t * base^(-2j/d), computed in float64."""
    j = torch.arange(d // 2, dtype=torch.float64, device=device)
    theta = base ** (-2.0 * j / d)
    angles = torch.arange(T, dtype=torch.float64, device=device)[:, None] * theta[None, :]
    return torch.cos(angles).float(), torch.sin(angles).float()


def rotate(x, cos, sin):
    """Rotate-half rotary of x [..., T, d] (pairs j, j + d/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def causal_mhla_blocks(q, k, v, W, C):
    """Unnormalized causal MHLA in block form. q, k [B, H, T, dk] (feature-mapped, rotated,
    q scaled), v [B, H, T, dv], W the effective [n, n] weights of the T / C blocks."""
    B, H, T, dk = q.shape
    dv = v.shape[-1]
    n = T // C
    q = q.reshape(B, H, n, C, dk)
    k = k.reshape(B, H, n, C, dk)
    v = v.reshape(B, H, n, C, dv)
    summaries = k.transpose(-1, -2) @ v                               # S_b [B, H, n, dk, dv]
    prefix = torch.einsum("ij,bhjkv->bhikv", torch.tril(W, -1).to(summaries.dtype), summaries)
    inter = q @ prefix                                                # q_t P_i
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0)
    intra = scores @ v                                                # within the block, s <= t
    diag = torch.diagonal(W).to(intra.dtype)[None, None, :, None, None]
    return (inter + diag * intra).reshape(B, H, T, dv)


class Layer(nn.Module):
    def __init__(self, cfg, L, plain_linear):
        super().__init__()
        D, H, dk, dv, I = cfg.hidden, cfg.heads, cfg.dk, cfg.dv, cfg.intermediate
        self.cfg = cfg
        self.attn_norm = nn.Parameter(torch.ones(D))
        self.q_proj = nn.Linear(D, H * dk, bias=False)
        self.k_proj = nn.Linear(D, H * dk, bias=False)
        self.v_proj = nn.Linear(D, H * dv, bias=False)
        self.g_proj = nn.Linear(D, H * dv, bias=False)
        self.o_proj = nn.Linear(H * dv, D, bias=False)
        self.g_norm = nn.Parameter(torch.ones(dv))
        self.mlp_norm = nn.Parameter(torch.ones(D))
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)
        init = torch.ones(L, L) if plain_linear else mhla_ref.harmonic_init(L).float()
        # The research code's parameter, clamped into [1e-5, 1] before every use.
        self.mixing = nn.Parameter(init, requires_grad=not plain_linear)

    def effective_mixing(self):
        return torch.tril(torch.clamp(self.mixing, mhla_ref.CLAMP_MIN, mhla_ref.CLAMP_MAX))

    def forward(self, x, cos, sin, dropout):
        cfg = self.cfg
        B, T, _ = x.shape
        H, dk, dv, C = cfg.heads, cfg.dk, cfg.dv, cfg.block_size
        h = rms_norm(x, self.attn_norm, cfg.norm_eps)
        q = F.relu(self.q_proj(h)).view(B, T, H, dk).transpose(1, 2) * dk ** -0.5
        k = F.relu(self.k_proj(h)).view(B, T, H, dk).transpose(1, 2)
        v = self.v_proj(h).view(B, T, H, dv).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        W = self.effective_mixing()[: T // C, : T // C]
        o = causal_mhla_blocks(q, k, v, W, C).transpose(1, 2).float()      # [B, T, H, dv]
        o = rms_norm(o, self.g_norm, cfg.norm_eps)
        g = self.g_proj(h).view(B, T, H, dv)
        o = (o * F.silu(g.float())).reshape(B, T, H * dv).to(h.dtype)
        x = x + F.dropout(self.o_proj(o), dropout, self.training)
        h = rms_norm(x, self.mlp_norm, cfg.norm_eps)
        y = self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return x + F.dropout(y, dropout, self.training)


class MHLALanguageModel(nn.Module):
    def __init__(self, raw_config, mixing_blocks, plain_linear=False, dropout=0.0):
        super().__init__()
        self.raw_config = dict(raw_config)
        cfg = ModelConfig(raw_config)
        if cfg.feature_map != "relu" or not cfg.use_output_gate or not cfg.tie_word_embeddings:
            raise ValueError("the trainer builds the section-6 model: relu, output gate, tied embeddings")
        self.cfg, self.L, self.plain_linear, self.dropout = cfg, mixing_blocks, plain_linear, dropout
        self.embeddings = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(Layer(cfg, mixing_blocks, plain_linear) for _ in range(cfg.layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden))
        self.reset_parameters()

    def reset_parameters(self):
        std = 0.02
        nn.init.normal_(self.embeddings.weight, std=std)
        for layer in self.layers:
            for lin in (layer.q_proj, layer.k_proj, layer.v_proj, layer.g_proj, layer.gate_proj, layer.up_proj):
                nn.init.normal_(lin.weight, std=std)
            for lin in (layer.o_proj, layer.down_proj):  # residual branches: GPT-2's depth scaling
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.cfg.layers))

    def window(self):
        return self.L * self.cfg.block_size

    def forward(self, ids):
        """Logits [B, T, vocab] of ids [B, T]; T a multiple of the block size, at most L * C."""
        T = ids.shape[1]
        C = self.cfg.block_size
        if T % C or T > self.window():
            raise ValueError(f"sequence length {T} must be a multiple of {C} and at most {self.window()}")
        cos, sin = rotary_tables(T, self.cfg.dk, self.cfg.rope_theta, ids.device)
        x = self.embeddings(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, self.dropout)
        x = rms_norm(x, self.norm, self.cfg.norm_eps)
        return x @ self.embeddings.weight.T

    # ------------------------------------------------------------------------------------------

    def parameters_by_name(self):
        """Research tensor name (MHLA.md section 6) -> the parameter behind it."""
        out = {"model.embeddings.weight": self.embeddings.weight, "model.norm.weight": self.norm}
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            out.update({
                p + "attn_norm.weight": layer.attn_norm,
                p + "attn.q_proj.weight": layer.q_proj.weight,
                p + "attn.k_proj.weight": layer.k_proj.weight,
                p + "attn.v_proj.weight": layer.v_proj.weight,
                p + "attn.g_proj.weight": layer.g_proj.weight,
                p + "attn.o_proj.weight": layer.o_proj.weight,
                p + "attn.g_norm_swish_gate.weight": layer.g_norm,
                p + "attn.mixing_matrix": layer.mixing,
                p + "mlp_norm.weight": layer.mlp_norm,
                p + "mlp.gate_proj.weight": layer.gate_proj.weight,
                p + "mlp.up_proj.weight": layer.up_proj.weight,
                p + "mlp.down_proj.weight": layer.down_proj.weight,
            })
        return out

    def research_tensors(self):
        """name -> float32 CPU tensor; mixing matrices in the research shape [L, L, 1, 1, 1, 1]."""
        out = {}
        for name, param in self.parameters_by_name().items():
            t = param.detach().float().cpu()
            out[name] = t.reshape(self.L, self.L, 1, 1, 1, 1) if name.endswith("mixing_matrix") else t
        return out

    def save(self, directory, dtype="F16", metadata=None):
        """config.json and model.safetensors (weights in `dtype`, mixing matrices in F32)."""
        os.makedirs(directory, exist_ok=True)
        tensors = self.research_tensors()
        dtypes = {k: ("F32" if k.endswith("mixing_matrix") else dtype) for k in tensors}
        safetensors_io.write_safetensors(os.path.join(directory, "model.safetensors"), tensors,
                                         dtypes=dtypes, metadata=metadata or {})
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.raw_config, f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, directory, plain_linear=False, dropout=0.0):
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
        arrays, _ = safetensors_io.read_safetensors(os.path.join(directory, "model.safetensors"))
        L = arrays["model.layers.0.attn.mixing_matrix"].shape[0]
        model = cls(raw, L, plain_linear=plain_linear, dropout=dropout)
        tensors = {k: torch.from_numpy(v.astype("float32")) for k, v in arrays.items()}
        with torch.no_grad():
            for name, param in model.parameters_by_name().items():
                param.copy_(tensors[name].reshape(param.shape))
        return model
