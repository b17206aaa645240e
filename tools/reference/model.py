"""Plain PyTorch reference of the MHLA language model (the MHLA description, section 6).

Computes in float64 by default, straight from the definition, for checking the engine:

    h  = RMSNorm(x) * attn_norm.weight
    q, k, v, g = projections of h
    o  = causal MHLA (relu feature map, rotary, scale dk^-1/2, unnormalized)
    o  = RMSNorm_per_head(o) * g_norm_swish_gate.weight * g * sigmoid(g)   (no gate without g_proj)
    x  = x + o_proj(o)
    h  = RMSNorm(x) * mlp_norm.weight
    x  = x + down(silu(gate(h)) * up(h))
    logits = (RMSNorm(x) * norm.weight) E^T     (E = lm_head.weight, or the embeddings when absent)

Usage:
    from model import load_model, logits
    out = logits("tests/data/models/tiny", [1, 5, 7])          # [3, vocab] float64
"""

import json
import math
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mhla_ref  # noqa: E402
import safetensors_io  # noqa: E402

DEFAULT_BLOCK_SIZE = 64
DEFAULT_ROPE_THETA = 10000.0

# Keys that change the computation (or are checked and refused).
USED_KEYS = {
    "hidden_size", "num_hidden_layers", "num_heads", "num_kv_heads", "expand_k", "expand_v",
    "hidden_ratio", "intermediate_size", "feature_map", "norm_eps", "vocab_size",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "use_short_conv",
    "use_output_gate", "hidden_act", "rope_theta", "mhla_block_size", "attn", "model_type",
    "attn_extends",
}
# Keys that only steer training kernels or bookkeeping.
IGNORED_KEYS = {
    "fuse_norm", "fuse_swiglu", "fuse_cross_entropy", "fuse_linear_cross_entropy", "attn_mode",
    "use_cache", "use_gk", "use_gv", "clamp_min", "initializer_range", "max_position_embeddings",
    "elementwise_affine", "use_l2warp", "transformers_version", "torch_dtype", "architectures",
    "conv_size", "gate_logit_normalizer", "gate_low_rank_dim", "auto_map",
}


class ModelConfig:
    """The config.json of a model plus the derived sizes."""

    def __init__(self, raw):
        if not isinstance(raw, dict):
            raise ValueError("config must be a JSON object")
        self.raw = dict(raw)
        for key in sorted(raw):
            if key not in USED_KEYS and key not in IGNORED_KEYS:
                warnings.warn(f"config.json: unknown key {key!r} ignored")

        def get(key, default=None):
            value = raw.get(key, default)
            return default if value is None else value

        if get("use_short_conv", False):
            raise ValueError("config.json: use_short_conv: true is not supported")
        if raw.get("attn") is not None:
            raise ValueError("config.json: attn (hybrid softmax-attention layers) is not supported")
        if get("hidden_act", "swish") != "swish":
            raise ValueError(f"config.json: hidden_act {raw['hidden_act']!r} is not supported (only swish)")
        self.feature_map = get("feature_map", "relu")
        if self.feature_map not in mhla_ref.FEATURE_MAPS:
            raise ValueError(f"config.json: feature_map {self.feature_map!r} is not supported")

        self.hidden = int(get("hidden_size", 1024))
        self.layers = int(get("num_hidden_layers", 24))
        self.heads = int(get("num_heads", 4))
        self.kv_heads = int(get("num_kv_heads", self.heads))
        self.expand_k = float(get("expand_k", 0.5))
        self.expand_v = float(get("expand_v", 1.0))
        self.hidden_ratio = float(get("hidden_ratio", 4))
        self.norm_eps = float(get("norm_eps", 1e-6))
        self.vocab = int(get("vocab_size", 32000))
        self.tie_word_embeddings = bool(get("tie_word_embeddings", True))
        self.bos_token_id = get("bos_token_id", 1)
        self.eos_token_id = get("eos_token_id", 2)
        self.use_output_gate = bool(get("use_output_gate", True))
        self.rope_theta = float(get("rope_theta", DEFAULT_ROPE_THETA))
        self.block_size = int(get("mhla_block_size", DEFAULT_BLOCK_SIZE))

        self.key_dim = _whole(self.hidden * self.expand_k, "hidden_size * expand_k")
        self.value_dim = _whole(self.hidden * self.expand_v, "hidden_size * expand_v")
        if self.heads <= 0 or self.kv_heads <= 0 or self.heads % self.kv_heads:
            raise ValueError(f"config.json: num_heads {self.heads} must be a positive multiple of "
                             f"num_kv_heads {self.kv_heads}")
        if self.key_dim % self.heads or self.value_dim % self.heads:
            raise ValueError(f"config.json: key_dim {self.key_dim} and value_dim {self.value_dim} "
                             f"must be multiples of num_heads {self.heads}")
        self.dk = self.key_dim // self.heads
        self.dv = self.value_dim // self.heads
        if self.dk % 2:
            raise ValueError(f"rotary needs an even head dim, got dk {self.dk}")
        if raw.get("intermediate_size") is not None:
            self.intermediate = int(raw["intermediate_size"])
        else:
            self.intermediate = intermediate_from_ratio(self.hidden, self.hidden_ratio)
        if self.block_size <= 0:
            raise ValueError(f"config.json: mhla_block_size must be positive, got {self.block_size}")

    def expected_shapes(self):
        """name -> shape of every weight except the mixing matrices (whose L is free)."""
        D, H, Hkv, dk, dv, I = self.hidden, self.heads, self.kv_heads, self.dk, self.dv, self.intermediate
        shapes = {"model.embeddings.weight": (self.vocab, D), "model.norm.weight": (D,)}
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            shapes.update({
                p + "attn_norm.weight": (D,),
                p + "attn.q_proj.weight": (H * dk, D),
                p + "attn.k_proj.weight": (Hkv * dk, D),
                p + "attn.v_proj.weight": (Hkv * dv, D),
                p + "attn.o_proj.weight": (D, H * dv),
                p + "attn.g_norm_swish_gate.weight": (dv,),
                p + "mlp_norm.weight": (D,),
                p + "mlp.gate_proj.weight": (I, D),
                p + "mlp.up_proj.weight": (I, D),
                p + "mlp.down_proj.weight": (D, I),
            })
            if self.use_output_gate:
                shapes[p + "attn.g_proj.weight"] = (H * dv, D)
        return shapes


def _whole(x, what):
    if abs(x - round(x)) > 1e-9:
        raise ValueError(f"config.json: {what} = {x} is not a whole number")
    return int(round(x))


def intermediate_from_ratio(hidden, hidden_ratio):
    """256 * ceil(floor(hidden * ratio * 2 / 3) / 256)."""
    inner = int(math.floor(hidden * hidden_ratio * 2 / 3))
    return 256 * ((inner + 255) // 256)


def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


class MHLAModel:
    """An MHLA language model held as plain tensors (float64 by default)."""

    def __init__(self, config, tensors, dtype=torch.float64):
        self.config = config if isinstance(config, ModelConfig) else ModelConfig(config)
        self.dtype = dtype
        cfg = self.config
        expected = cfg.expected_shapes()
        w = {}
        for name, shape in expected.items():
            if name not in tensors:
                raise ValueError(f"weights: tensor {name} is missing")
            t = tensors[name]
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"weights: tensor {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
            w[name] = t.detach().to(dtype=dtype).clone()
        self.mixing = []
        for layer in range(cfg.layers):
            name = f"model.layers.{layer}.attn.mixing_matrix"
            if name not in tensors:
                raise ValueError(f"weights: tensor {name} is missing")
            m = tensors[name]
            shape = tuple(m.shape)
            if len(shape) < 2 or shape[0] != shape[1] or any(s != 1 for s in shape[2:]):
                raise ValueError(f"weights: tensor {name} has shape {shape}, expected [L, L] or [L, L, 1, 1, 1, 1]")
            self.mixing.append(m.detach().to(torch.float64).reshape(shape[0], shape[0]).clone())
        if "lm_head.weight" in tensors:
            head = tensors["lm_head.weight"]
            if tuple(head.shape) != (cfg.vocab, cfg.hidden):
                raise ValueError(f"weights: tensor lm_head.weight has shape {tuple(head.shape)}, "
                                 f"expected {(cfg.vocab, cfg.hidden)}")
            self.lm_head = head.detach().to(dtype=dtype).clone()
        else:
            self.lm_head = w["model.embeddings.weight"]
        self.tied = "lm_head.weight" not in tensors
        if not cfg.use_output_gate and any(n.endswith("attn.g_proj.weight") for n in tensors):
            warnings.warn("weights: g_proj present but use_output_gate is false; ignored")
        self.weights = w

    @classmethod
    def load(cls, model_dir, dtype=torch.float64):
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
        tensors, _ = read_weights(os.path.join(model_dir, "model.safetensors"))
        return cls(raw, tensors, dtype=dtype)

    # ------------------------------------------------------------------------------------------

    def window(self, layer=0):
        """Trained window L*C of a layer, in tokens."""
        return self.mixing[layer].shape[0] * self.config.block_size

    def attention(self, layer, h, policy="strict"):
        """The attention sub-block of one layer on normed hidden states h [T, D] -> [T, D]."""
        cfg, w = self.config, self.weights
        p = f"model.layers.{layer}.attn."
        T = h.shape[0]
        q = (h @ w[p + "q_proj.weight"].T).reshape(T, cfg.heads, cfg.dk)
        k = (h @ w[p + "k_proj.weight"].T).reshape(T, cfg.kv_heads, cfg.dk)
        v = (h @ w[p + "v_proj.weight"].T).reshape(T, cfg.kv_heads, cfg.dv)
        o = mhla_ref.causal_mhla(
            q, k, v, self.mixing[layer], block_size=cfg.block_size, feature_map=cfg.feature_map,
            rotary=True, rotary_base=cfg.rope_theta, scale=cfg.dk ** -0.5, normalize=False,
            policy=policy)
        o = o.to(self.dtype)
        o = rms_norm(o, w[p + "g_norm_swish_gate.weight"], cfg.norm_eps)  # per head, over dv
        if cfg.use_output_gate:
            g = (h @ w[p + "g_proj.weight"].T).reshape(T, cfg.heads, cfg.dv)
            o = o * (g * torch.sigmoid(g))
        o = o.reshape(T, cfg.heads * cfg.dv)
        return o @ w[p + "o_proj.weight"].T

    def mlp(self, layer, h):
        w = self.weights
        p = f"model.layers.{layer}.mlp."
        gate = h @ w[p + "gate_proj.weight"].T
        up = h @ w[p + "up_proj.weight"].T
        return (torch.nn.functional.silu(gate) * up) @ w[p + "down_proj.weight"].T

    def hidden_states(self, ids, policy="strict"):
        """Final normed hidden states [T, D] for token ids (positions 0 .. T-1)."""
        cfg, w = self.config, self.weights
        ids = _ids(ids)
        if ids.numel() == 0:
            raise ValueError("need at least one token")
        if int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab:
            raise ValueError(f"token ids must be in [0, {cfg.vocab}), got {int(ids.min())} .. {int(ids.max())}")
        x = w["model.embeddings.weight"][ids]
        for layer in range(cfg.layers):
            p = f"model.layers.{layer}."
            x = x + self.attention(layer, rms_norm(x, w[p + "attn_norm.weight"], cfg.norm_eps), policy)
            x = x + self.mlp(layer, rms_norm(x, w[p + "mlp_norm.weight"], cfg.norm_eps))
        return rms_norm(x, w["model.norm.weight"], cfg.norm_eps)

    def forward(self, ids, policy="strict"):
        """Logits [T, vocab] for token ids."""
        return self.hidden_states(ids, policy) @ self.lm_head.T

    __call__ = forward


def _ids(ids):
    if isinstance(ids, torch.Tensor):
        t = ids.detach().cpu()
        if t.is_floating_point():
            if not torch.equal(t, torch.round(t)):
                raise ValueError("token ids must be whole numbers")
        return t.reshape(-1).to(torch.long)
    return torch.tensor(list(ids), dtype=torch.long).reshape(-1)


def read_weights(path):
    """(name -> float64 torch tensor, metadata) of a safetensors file."""
    arrays, metadata = safetensors_io.read_safetensors(path)
    return {name: torch.from_numpy(a.astype("float64")) for name, a in arrays.items()}, metadata


def load_model(model_dir, dtype=torch.float64):
    return MHLAModel.load(model_dir, dtype=dtype)


def logits(model_dir_or_model, ids, policy="strict"):
    """Logits [T, vocab] (float64 for a model directory) of token ids at positions 0 .. T-1."""
    model = model_dir_or_model
    if not isinstance(model, MHLAModel):
        model = MHLAModel.load(os.fspath(model))
    return model.forward(ids, policy=policy)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Logits of the reference MHLA language model")
    ap.add_argument("model_dir")
    ap.add_argument("ids", nargs="+", type=int)
    ap.add_argument("--policy", default="strict", choices=mhla_ref.POLICIES)
    args = ap.parse_args()
    out = logits(args.model_dir, args.ids, policy=args.policy)
    top = out.argmax(dim=-1).tolist()
    print(f"logits {tuple(out.shape)}; argmax per position: {top}")
