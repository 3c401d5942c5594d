"""On a GPU node with a smoke ledger: no `attention()` training call returns a wrong gradient.

For every head dim whose backward failed in the ledger (under this node's fingerprint), this calls
`attention()` for training across mask alignments, windows, GQA and both dtypes, and judges the
output and every gradient against a float64 reference with smoke's own rule; it also checks that
training calls at head dims that passed still run FA4. Then, where torch has
`torch.nn.attention.activate_flash_attention_impl`, it activates torch's FA4 and checks that a
head-dim-72 training call through `attention()` still gets a right dq (FA4 is refused for it, so
SDPA must run without its FA4-backed flash kernel).

    FA4DOCTOR_LEDGER=ledger.json python scripts/gpu/b40_truth.py
Exit status: 0 every call right and every routing as expected, 1 otherwise.
"""

from __future__ import annotations

import sys

VARIANTS = (  # (label, attention() keywords, seqlen_q, seqlen_kv, heads_q, heads_kv, dtype)
    ("causal", {"attn_mask_type": "causal"}, 256, 256, 4, 4, "bf16"),
    ("no_mask", {"attn_mask_type": "no_mask"}, 256, 256, 4, 4, "bf16"),
    ("causal top-left sq>sk", {"attn_mask_type": "causal"}, 256, 128, 4, 4, "bf16"),
    ("causal_bottom_right sq<sk", {"attn_mask_type": "causal_bottom_right"}, 128, 384, 4, 4, "bf16"),
    ("window (64,0)", {"attn_mask_type": "causal", "window_size": (64, 0)}, 256, 256, 4, 4, "bf16"),
    ("window (32,32)", {"attn_mask_type": "no_mask", "window_size": (32, 32)}, 256, 256, 4, 4, "bf16"),
    ("GQA 8/2", {"attn_mask_type": "causal"}, 256, 256, 8, 2, "bf16"),
    ("fp16 causal", {"attn_mask_type": "causal"}, 256, 256, 4, 4, "fp16"),
    ("fp16 GQA window", {"attn_mask_type": "causal", "window_size": (64, 0)}, 256, 256, 8, 2, "fp16"),
)


def run_case(dim: int, label: str, keywords: dict, sq: int, sk: int, hq: int, hk: int, dtype_name: str):
    import torch

    from fa4doctor.dispatch import attention
    from fa4doctor.runtime import dispatcher
    from fa4doctor.smoke import reference

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    gen = torch.Generator(device="cuda").manual_seed(dim * 1000 + sq + hq)
    q, k, v = (torch.randn(2, n, h, dim, device="cuda", dtype=dtype, generator=gen)
               for n, h in ((sq, hq), (sk, hk), (sk, hk)))
    grad = torch.randn(2, sq, hq, dim, device="cuda", dtype=dtype, generator=gen)
    results = {}
    for name, compute in (("kernel", None), ("float64", torch.float64), ("low", dtype)):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        if compute is None:
            out = attention(*leaves, **keywords)
        else:
            window = keywords.get("window_size", (-1, -1))
            out = reference.attention(*leaves, attn_mask_type=keywords["attn_mask_type"], window_size=window,
                                      compute_dtype=compute)
        out.backward(grad.to(out.dtype))
        results[name] = (out.detach(), *(t.grad for t in leaves))
    chosen = list(dispatcher._plans.values())[-1].decision.chosen.value
    checks = [reference.judge(t, got, ref, low, dtype) for t, got, ref, low in
              zip(("out", "dq", "dk", "dv"), results["kernel"], results["float64"], results["low"])]
    return chosen, checks


def main() -> int:
    import torch

    from fa4doctor.names import BackendName
    from fa4doctor.dispatch.vetting import fingerprint
    from fa4doctor.runtime import local_env

    env = local_env.environment(need_gpus=True)
    fa4 = BackendName.FA4
    current = fingerprint(fa4, env, env.gpu(0))
    ledger = [e for e in env.ledger if e.backend is fa4 and e.fingerprint == current]
    failed = sorted({e.case_class.head_dim_qk for e in ledger if e.failed and e.direction == "bwd"})
    passed = sorted({e.case_class.head_dim_qk for e in ledger if not e.failed and e.direction == "bwd"}
                    - set(failed))
    print(f"fa4 {env.backend(fa4).version} on {env.gpu(0).name}; ledger: {len(ledger)} entries under the current "
          f"fingerprint; backward failed at head dims {failed}")
    ok = True
    for dim in failed + [d for d in (64, 96, 128) if d in passed]:
        for label, keywords, sq, sk, hq, hk, dtype in VARIANTS:
            chosen, checks = run_case(dim, label, keywords, sq, sk, hq, hk, dtype)
            right = all(c.ok for c in checks)
            routed = chosen != fa4.value if dim in failed else True
            ok &= right and routed
            errors = " ".join(f"{c.tensor} {c.error:.2e}/{c.tolerance:.2e}" for c in checks)
            print(f"d{dim:<4} {label:<26} -> {chosen:<5} {'right' if right else 'WRONG'} "
                  f"{'' if routed else 'ROUTED TO A FAILED KERNEL '}{errors}")
        if dim not in failed:
            chosen, _ = run_case(dim, "plain", {"attn_mask_type": "causal"}, 256, 256, 4, 4, "bf16")
            print(f"d{dim:<4} passing head dim, plain causal bf16 -> {chosen}")
            ok &= chosen == fa4.value
    ok &= torch_fa4_impl()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def torch_fa4_impl() -> bool:
    import torch.nn.attention as nn_attention

    activate = getattr(nn_attention, "activate_flash_attention_impl", None)
    if activate is None:
        import torch

        print(f"torch {torch.__version__} has no torch.nn.attention.activate_flash_attention_impl: "
              "point 2 is proven on the CPU with a fake registry (tests/runtime/test_sdpa_flash_impl.py)")
        return True
    try:
        activate("FA4")
    except Exception as exc:  # noqa: BLE001 (report what torch said and go on)
        print(f"activate_flash_attention_impl('FA4') failed: {type(exc).__name__}: {exc}")
        return True
    from fa4doctor.runtime import dispatcher

    dispatcher.reset()
    chosen, checks = run_case(72, "torch FA4 active", {"attn_mask_type": "causal"}, 256, 256, 4, 4, "bf16")
    dq = next(c for c in checks if c.tensor == "dq")
    print(f"torch FA4 impl active, d72 training -> {chosen}; dq {dq.error:.2e}/{dq.tolerance:.2e} "
          f"{'right' if dq.ok else 'WRONG'}")
    return all(c.ok for c in checks)


if __name__ == "__main__":
    sys.exit(main())
