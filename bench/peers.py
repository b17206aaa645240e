"""Peers of the MHLA operator benchmark, timed on the same GPU in the same command:
FlashAttention through torch's scaled_dot_product_attention (the softmax shapes of the same
hidden size: 16 heads x 64, bf16, causal), with and without a KV cache, and MHLA written
directly in PyTorch (batched matmuls, dense causal mixing over the N/64 blocks; relu features,
no rotary). Prints one line per figure and one JSON line each."""
import json

import torch
import torch.nn.functional as F

assert torch.cuda.is_available(), "no GPU"
dev = "cuda"
torch.manual_seed(0)


def median_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def report(name, ms):
    print(f"{name:<48} {ms:10.4f} ms")
    print("JSON " + json.dumps({"figure": name, "ms": ms}))


print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
for n in (2048, 8192, 32768, 131072):
    q, k, v = (torch.randn(1, 16, n, 64, device=dev, dtype=torch.bfloat16) for _ in range(3))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        report(f"flash prefill N={n}", median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)))
    del q, k, v

for ctx in (2048, 32768, 131072):
    for b in (1, 32):
        if b * ctx * 16 * 64 * 2 * 2 > 40e9:
            continue
        q = torch.randn(b, 16, 1, 64, device=dev, dtype=torch.bfloat16)
        k, v = (torch.randn(b, 16, ctx, 64, device=dev, dtype=torch.bfloat16) for _ in range(2))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            report(f"flash decode ctx={ctx} B={b}", median_ms(lambda: F.scaled_dot_product_attention(q, k, v)))
        del q, k, v


def mhla_torch(q, k, v, w, c=64):
    # q, k: [H, N, dk]; v: [H, N, dv]; w: [M, M] effective weights (lower triangular).
    h, n, dk = q.shape
    m = n // c
    q, k = F.relu(q) * dk ** -0.5, F.relu(k)
    qb, kb, vb = q.view(h, m, c, dk), k.view(h, m, c, dk), v.view(h, m, c, -1)
    s = torch.matmul(kb.transpose(-1, -2), vb)                      # [H, M, dk, dv]
    p = torch.matmul(torch.tril(w, -1), s.reshape(h, m, -1)).view_as(s)
    o = torch.matmul(qb, p)
    scores = torch.matmul(qb, kb.transpose(-1, -2)) * torch.diagonal(w).view(1, m, 1, 1)
    o = o + torch.matmul(torch.tril(scores), vb)
    return o.reshape(h, n, -1)


for n in (2048, 8192, 32768, 131072):
    m = n // 64
    q, k = (torch.randn(4, n, 128, device=dev, dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(4, n, 256, device=dev, dtype=torch.bfloat16)
    w = torch.tril(torch.rand(m, m, device=dev, dtype=torch.bfloat16))
    report(f"pytorch mhla prefill N={n}", median_ms(lambda: mhla_torch(q, k, v, w)))
    del q, k, v, w
