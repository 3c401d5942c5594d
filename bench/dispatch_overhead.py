"""What `fa4doctor.dispatch.attention()` adds to a call, and where it goes.

Median microseconds per call on identical tiny tensors, every row timed in blocks interleaved
round by round, in a shuffled order, so drift (clocks, caches, other load) hits all rows alike.
Differences are medians of per-round differences, with a 95% bootstrap interval for `added`:

- direct:    the backend called by hand with exactly the keywords and layout work the adapter
             uses (taken from the adapter, so the two cannot drift apart);
- control:   the same direct call as a second row: its difference from `direct` is the method's
             own error, which no figure below can be read more finely than;
- defaults:  FA4 only: the call as a user writes it, leaving FA4's defaults (the keywords that
             differ are printed);
- adapter:   the adapter's bound closure alone (no key, no plan lookup, no counting);
- attention: `attention()`;
- dispatch:  `attention()` with the kernel call removed, alone (hot caches), and "beside a
             kernel": each such call right after a direct call, minus the direct call;
- floor:     a Python function with `attention()`'s signature that only reads what any key
             covering the validation must hold (shape, dtype and device of q, k and v; whether
             autograd records the call), alone and beside a kernel: no dispatcher written in
             Python that validates can cost less (the compiled hit path can).

    python bench/dispatch_overhead.py                                # CPU, SDPA
    python bench/dispatch_overhead.py --device cuda --backend fa4    # GPU machine with FA4

`attention()` is the compiled hit path where `fa4doctor native build` has built it for this torch
(the first line says `path=native`), else the Python function; FA4DOCTOR_NATIVE=0 times the latter.

Targets (issue 3): at most 3 us added on a 2-core CI-class CPU; at most 2% of a direct FA4 call
on the GPU (FA4 takes about 100 us per tiny call on an H100: docs/sources.md#fa4-start-up-cost).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time

GRAD_ENABLED = None  # torch.is_grad_enabled, bound in main() (no torch import at import time)
FA4_DEFAULTS = {"softmax_scale": None, "causal": False, "window_size": (None, None), "softcap": 0.0,
                "num_splits": 1, "deterministic": False}  # flash_attn_func's own (b36 iface@b36:4145)


def exact_call(backend: str, plan):
    """The backend called by hand exactly as `plan`'s adapter calls it."""
    if backend == "fa4":
        from flash_attn.cute import flash_attn_func

        from fa4doctor.runtime.adapters.fa4 import call_kwargs

        kw = call_kwargs(plan.spec, plan.scale)
        assert set(kw) == set(FA4_DEFAULTS), f"adapter keywords changed: {sorted(kw)}"
        s, c, w, cap, det = (kw[n] for n in ("softmax_scale", "causal", "window_size", "softcap", "deterministic"))
        return lambda q, k, v: flash_attn_func(q=q, k=k, v=v, softmax_scale=s, causal=c, window_size=w,
                                               softcap=cap, num_splits=1, deterministic=det)[0]
    import torch.nn.functional as F

    from fa4doctor.runtime.adapters.sdpa import fast_kwargs

    kw = fast_kwargs(plan.spec, plan.scale)
    assert kw is not None, "this spec takes SDPA's slow path; the bench times the fast one"
    return lambda q, k, v: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw).transpose(1, 2)


def default_call(backend: str, plan):
    """FA4 called the short way (its defaults); None, [] where that is the exact call already."""
    if backend != "fa4":
        return None, []
    from flash_attn.cute import flash_attn_func

    from fa4doctor.runtime.adapters.fa4 import call_kwargs

    kw = call_kwargs(plan.spec, plan.scale)
    given = {"causal": kw["causal"], "window_size": kw["window_size"], "num_splits": 1}
    differ = [f"{n}={kw[n]!r} (FA4 default {FA4_DEFAULTS[n]!r})" for n in kw if n not in given]
    return (lambda q, k, v: flash_attn_func(q=q, k=k, v=v, **given)[0]), differ


def floor(q, k, v, *, attn_mask_type="no_mask", window_size=None, softmax_scale=None, dropout_p=0.0,
          softcap=0.0, alibi_slopes=None, learnable_sink=None, deterministic=False, qkv_format="bshd",
          cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None):
    return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device,
            GRAD_ENABLED() and (q.requires_grad or k.requires_grad or v.requires_grad))


def block(fn, args, calls: int, sync) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    sync()
    return (time.perf_counter() - start) / calls * 1e6


def only_plan():
    from fa4doctor.runtime import dispatcher as runtime

    plans = list(runtime._plans.values())
    assert len(plans) == 1, f"expected one cached plan, found {len(plans)}"
    return plans[0]


def measure(rows: dict, plan, real_run, args, rounds: int, calls: int, sync, refresh) -> dict[str, list[float]]:
    """rows: name -> (fn, whether the plan runs the kernel, whether fn launches kernels at all);
    the plan's run (and direct call) are swapped between blocks, never inside one, and `refresh`
    makes the compiled hit path take the swap. The rows run in a fresh random order each round
    (fixed seed), so no row always follows the same one and inherits its cache state."""
    noop = lambda *a: None  # noqa: E731
    real_direct = plan.direct
    times = {name: [] for name in rows}
    order, shuffle = list(rows), random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            fn, kernel, launches = rows[name]
            plan.run, plan.direct = (real_run, real_direct) if kernel else (noop, None)
            refresh()
            times[name].append(block(fn, args, calls, sync if launches else noop))
    plan.run, plan.direct = real_run, real_direct
    refresh()
    return times


def paired(times: dict[str, list[float]], row: str, base: str, draws: int = 2000) -> tuple[float, float, float]:
    """Median over rounds of `row - base` in the same round, and its 95% bootstrap interval: drift
    between rounds cancels, so this resolves what two separate medians cannot."""
    diffs = [a - b for a, b in zip(times[row], times[base])]
    pick = random.Random(1).choices
    medians = sorted(statistics.median(pick(diffs, k=len(diffs))) for _ in range(draws))
    return statistics.median(diffs), medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def report(times: dict[str, list[float]], differ: list[str]) -> list[str]:
    med = {name: statistics.median(t) for name, t in times.items()}
    d = med["direct"]

    def pct(x: float) -> str:
        return f"{x / d * 100:+.1f}%"

    added, lo, hi = paired(times, "attention", "direct")
    noise, nlo, nhi = paired(times, "control", "direct")
    lines = [f"direct     {d:9.2f} us/call (exactly the adapter's backend call, by hand)"]
    if "defaults" in med:
        lines.append(f"defaults   {med['defaults']:9.2f} us/call (the short call; the adapter also passes "
                     f"{', '.join(differ) or 'nothing'})")
    lines += [
        f"attention  {med['attention']:9.2f} us/call",
        f"added      {added:9.2f} us/call ({pct(added)} of the direct call; 95% interval {lo:.2f} to {hi:.2f} us, "
        f"{pct(lo)} to {pct(hi)})",
        f"control    {noise:9.2f} us/call (the direct call again as its own row, minus direct: the method's "
        f"error; 95% interval {nlo:.2f} to {nhi:.2f} us)",
        f"  adapter      {paired(times, 'adapter', 'direct')[0]:7.2f} us  (adapter closure - direct)",
        f"  dispatcher   {paired(times, 'attention', 'adapter')[0]:7.2f} us  (attention - adapter closure)",
        f"dispatch   {med['dispatch']:9.2f} us/call (attention() with the kernel call removed, alone)",
        f"beside     {paired(times, 'beside', 'direct')[0]:9.2f} us/call (the same, each right after a direct call, "
        "minus direct)",
        f"floor      {med['floor']:9.2f} us/call (a Python function with attention()'s signature that only reads "
        f"what a validating key needs, alone; {pct(med['floor'])} of direct)",
        f"  beside     {paired(times, 'floor_beside', 'direct')[0]:7.2f} us  (the same, each right after a direct "
        "call, minus direct)",
    ]
    return lines


def add_call_options(parser: argparse.ArgumentParser) -> None:
    """The timed call's options, shared with bench/policy_overhead.py."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default="sdpa", choices=["sdpa", "fa4"])
    parser.add_argument("--shape", default=None, help="batch,seq,heads,head_dim (default: 1,8,2,16 on the CPU; "
                        "1,128,8,64 on CUDA, the tiny FA4 call of docs/validation/h100-native/)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--block", type=int, default=50, help="calls per timed block")


def call_tensors(args: argparse.Namespace):
    """q, k and v of `--shape` (filling in its default) on `--device`, their dtype, and the device's sync."""
    import torch

    args.shape = args.shape or ("1,128,8,64" if args.device == "cuda" else "1,8,2,16")
    b, s, h, d = (int(x) for x in args.shape.split(","))
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    q, k, v = (torch.randn(b, s, h, d, device=args.device, dtype=dtype) for _ in range(3))
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    return q, k, v, dtype, sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_call_options(parser)
    parser.add_argument("--no-causal", dest="causal", action="store_false")
    parser.add_argument("--gc-off", action="store_true", help="disable Python's cyclic GC while timing")
    args = parser.parse_args()
    os.environ["FA4DOCTOR_BACKEND"] = args.backend  # time exactly this backend behind attention()

    import torch

    from fa4doctor.dispatch import attention
    from fa4doctor.runtime import dispatcher as runtime

    global GRAD_ENABLED
    GRAD_ENABLED = torch.is_grad_enabled

    q, k, v, dtype, sync = call_tensors(args)
    mask = "causal" if args.causal else "no_mask"
    with torch.inference_mode():
        attention(q, k, v, attn_mask_type=mask)  # the first decision; FA4 compiles here
        plan = only_plan()
        real_run = plan.run
        direct = exact_call(args.backend, plan)
        defaults, differ = default_call(args.backend, plan)
        dispatched = lambda q, k, v: attention(q, k, v, attn_mask_type=mask)  # noqa: E731

        def refresh():  # the compiled path keeps the run it was told: forget it, one call re-tells it
            if runtime._native is not None:
                runtime._forget_native()
                dispatched(q, k, v)

        def beside(q, k, v):
            direct(q, k, v)
            dispatched(q, k, v)

        def floor_beside(q, k, v):
            direct(q, k, v)
            floor(q, k, v, attn_mask_type=mask)

        rows = {"direct": (direct, True, True), "control": (direct, True, True),
                **({"defaults": (defaults, True, True)} if defaults else {}),
                "adapter": (lambda q, k, v: real_run(q, k, v, None, None, None), True, True),
                "attention": (dispatched, True, True), "dispatch": (dispatched, False, False),
                "beside": (beside, False, True),
                "floor": (lambda q, k, v: floor(q, k, v, attn_mask_type=mask), False, False),
                "floor_beside": (floor_beside, False, True)}
        measure(rows, plan, real_run, (q, k, v), 2, 20, sync, refresh)  # warm-up: allocator, caches
        if args.gc_off:
            gc.disable()
        times = measure(rows, plan, real_run, (q, k, v), args.rounds, args.block, sync, refresh)
        gc.enable()
    print(f"device={args.device} backend={args.backend} shape={args.shape} dtype={str(dtype).split('.')[-1]} "
          f"mask={mask} torch={torch.__version__} gc={'off' if args.gc_off else 'on'} "
          f"path={'python' if attention is runtime.python_attention else 'native'} "
          f"calls={args.rounds * args.block} per row, median of {args.rounds} blocks")
    print("\n".join(report(times, differ)))


if __name__ == "__main__":
    main()
