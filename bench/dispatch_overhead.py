"""What `fa4doctor.dispatch.attention()` adds to a call: median microseconds per call of
`attention()` and of a direct call of the same backend on identical tiny tensors, interleaved in
blocks so drift (clocks, caches) hits both alike; prints both and the difference.

    python bench/dispatch_overhead.py                                # CPU, SDPA
    python bench/dispatch_overhead.py --device cuda --backend fa4    # GPU machine with FA4

Targets (issue 3): at most 3 us added on a 2-core CI-class CPU; at most 2% of a direct FA4 call
on the GPU (FA4 takes about 99 us per tiny call on an H100: h100-fa4-measurements.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def direct_call(backend: str, causal: bool):
    """The backend called by hand the way the adapter calls it (same layout work, no dispatch)."""
    if backend == "fa4":
        from flash_attn.cute import flash_attn_func

        return lambda q, k, v: flash_attn_func(q=q, k=k, v=v, causal=causal, window_size=(None, None),
                                               num_splits=1)[0]
    import torch.nn.functional as F

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=causal).transpose(1, 2)
    return sdpa


def block(fn, args, calls: int, sync) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    sync()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default="sdpa", choices=["sdpa", "fa4"])
    parser.add_argument("--shape", default=None, help="batch,seq,heads,head_dim (default: 1,8,2,16 on the CPU; "
                        "1,128,8,64 on CUDA, the tiny FA4 call of h100-fa4-measurements.md)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--block", type=int, default=50, help="calls per timed block")
    parser.add_argument("--no-causal", dest="causal", action="store_false")
    args = parser.parse_args()
    os.environ["FA4DOCTOR_BACKEND"] = args.backend  # time exactly this backend behind attention()

    import torch

    from fa4doctor.dispatch import attention

    args.shape = args.shape or ("1,128,8,64" if args.device == "cuda" else "1,8,2,16")
    b, s, h, d = (int(x) for x in args.shape.split(","))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    q, k, v = (torch.randn(b, s, h, d, device=args.device, dtype=dtype) for _ in range(3))
    mask = "causal" if args.causal else "no_mask"
    direct = direct_call(args.backend, args.causal)
    dispatched = lambda q, k, v: attention(q, k, v, attn_mask_type=mask)  # noqa: E731
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for fn in (direct, dispatched):  # warm-up: JIT compile, first decision, allocator
            block(fn, (q, k, v), 20, sync)
        direct_us, dispatch_us = [], []
        for _ in range(args.rounds):
            direct_us.append(block(direct, (q, k, v), args.block, sync))
            dispatch_us.append(block(dispatched, (q, k, v), args.block, sync))
        # The dispatcher's own cost without the kernel: the cached plan's adapter swapped for a no-op.
        from fa4doctor.dispatch import runtime

        for plan in runtime._plans.values():
            plan.run = lambda *args: None
        bare_us = [block(dispatched, (q, k, v), args.block, lambda: None) for _ in range(args.rounds)]
    a, c = statistics.median(direct_us), statistics.median(dispatch_us)
    print(f"device={args.device} backend={args.backend} shape={args.shape} dtype={str(dtype).split('.')[-1]} "
          f"mask={mask} torch={torch.__version__} calls={args.rounds * args.block} each")
    print(f"direct     {a:9.2f} us/call (median of {args.rounds} blocks)")
    print(f"attention  {c:9.2f} us/call")
    print(f"added      {c - a:9.2f} us/call ({(c - a) / a * 100:+.1f}% of the direct call)")
    print(f"dispatch   {statistics.median(bare_us):9.2f} us/call (attention() with the kernel call removed)")


if __name__ == "__main__":
    main()
