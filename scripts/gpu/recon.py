"""One-off reconnaissance on the GPU machine: facts the adapters rely on (prints a report)."""
import importlib.metadata as md
import os
import time

import torch
import torch.nn.functional as F

print("torch", torch.__version__, "cuda", torch.version.cuda, "abi", torch._C._GLIBCXX_USE_CXX11_ABI)
print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), "nproc", os.cpu_count())
for dist in ("flash-attn-4", "nvidia-cutlass-dsl", "quack-kernels", "apache-tvm-ffi", "torch-c-dlpack-ext"):
    try:
        print(dist, md.version(dist), md.requires(dist) if dist == "flash-attn-4" else "")
    except md.PackageNotFoundError:
        print(dist, "MISSING")
t = time.perf_counter()
from flash_attn.cute import flash_attn_func, flash_attn_varlen_func  # noqa: E402
print(f"import flash_attn.cute {time.perf_counter() - t:.1f}s")


def ref(q, k, v, allowed):
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.double())


def allowed(sq, sk, offset, left=None, right=None, causal=False):
    i = torch.arange(sq, device="cuda")[:, None]
    j = torch.arange(sk, device="cuda")[None, :]
    m = torch.ones(sq, sk, dtype=torch.bool, device="cuda")
    if causal:
        m &= j <= i + offset
    if left is not None:
        m &= j >= i + offset - left
    if right is not None:
        m &= j <= i + offset + right
    return m


def err(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


torch.manual_seed(0)
for sq, sk in ((384, 128), (128, 384), (256, 256)):
    q = torch.randn(2, sq, 4, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, sk, 4, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, sk, 4, 64, device="cuda", dtype=torch.bfloat16)
    tl = allowed(sq, sk, 0, causal=True)
    br = allowed(sq, sk, sk - sq, causal=True)
    cases = {
        "causal=True win(None,None)": dict(causal=True),
        "causal=False win(None,sq-sk)": dict(causal=False, window_size=(None, sq - sk)),
        "causal=True win(32,0)": dict(causal=True, window_size=(32, 0)),
        "causal=False win(16,8)": dict(causal=False, window_size=(16, 8)),
    }
    for name, kw in cases.items():
        try:
            out = flash_attn_func(q=q, k=k, v=v, **kw)
            out = out[0] if isinstance(out, tuple) else out
            win = kw.get("window_size", (None, None))
            expect = allowed(sq, sk, sk - sq, win[0], win[1], kw["causal"])
            print(f"sq={sq} sk={sk} {name}: vs FA-conv ref {err(out, ref(q, k, v, expect)):.4f}; "
                  f"vs top-left {err(out, ref(q, k, v, tl)):.4f}; vs bottom-right {err(out, ref(q, k, v, br)):.4f}")
        except Exception as exc:  # noqa: BLE001
            print(f"sq={sq} sk={sk} {name}: {type(exc).__name__}: {str(exc)[:200]}")
print("sdpa enable_gqa:", "enable_gqa" in F.scaled_dot_product_attention.__doc__)
from torch.nn.attention.bias import causal_lower_right  # noqa: E402,F401
print("causal_lower_right ok")
