"""Reproduce, without fa4doctor in the path, what its thorough smoke level found on an H100:
FA4's SM90 backward and head dims below 128 with head_dim % 32 in {8, 16}.

Calls `flash_attn.cute.flash_attn_func` directly (keywords only) and compares out, dq, dk, dv
with a float64 reference written here. Usage on the GPU machine, FA4 on PYTHONPATH:
    python scripts/gpu/repro_sm90_dq.py
"""

import torch

from flash_attn.cute import flash_attn_func


def reference(q, k, v, causal):
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        keep = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def main():
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    print(f"{'d':>4} {'causal':>6} {'shape':>14} {'out':>8} {'dq':>8} {'dk':>8} {'dv':>8}")
    for d in (64, 72, 80, 88, 104, 112, 120):
        for causal in (False, True):
            for b, s, h in ((1, 128, 2), (2, 512, 8)) if d in (80, 88) else ((1, 128, 2),):
                q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3))
                grad = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
                refs = [t.detach().double().requires_grad_() for t in (q, k, v)]
                want = reference(*refs, causal)
                want.backward(grad.double())
                try:
                    out, _ = flash_attn_func(q=q, k=k, v=v, causal=causal)
                    out.backward(grad)
                    errs = [rel(out, want)] + [rel(t.grad, r.grad) for t, r in zip((q, k, v), refs)]
                    print(f"{d:>4} {causal!s:>6} {f'{b}x{s}x{h}':>14} " + " ".join(f"{e:8.4f}" for e in errs))
                except Exception as exc:  # noqa: BLE001 (report, keep going)
                    print(f"{d:>4} {causal!s:>6} {f'{b}x{s}x{h}':>14} {type(exc).__name__}: {str(exc)[:90]}")


if __name__ == "__main__":
    main()
