"""The runtime's numerics on a real GPU: FA4 (through `call_backend("fa4")` and through
`attention()`) and SDPA's CUDA kernels, against the float64 reference, forward and every gradient.

Run on an H100/H200 with FA4 installed (`../shared/gpu/fetch-fa4-wheels`), keeping the output:

    FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 python -m pytest tests/gpu/test_gpu_numerics.py -s -q \
        | tee docs/validation/h100-gpu-numerics.txt

Skips with the reason where there is no CUDA device or FA4 does not import. FA4 JIT-compiles each
new configuration (seconds each: docs/sources.md#fa4-start-up-cost), so the FA4 configurations stay few.
"""

from __future__ import annotations

import importlib
import math
from itertools import accumulate

import pytest
import torch

from runtime.reference import reference, rel_err  # tests/runtime/reference.py

pytestmark = pytest.mark.gpu
HAVE_CUDA = torch.cuda.is_available()
TOL = {torch.bfloat16: 0.02, torch.float16: 0.005}  # FA4 on an H100 measured 0.0019-0.0027 (bf16)
ROWS: list[str] = []


def _fa4_problem() -> str | None:
    if not HAVE_CUDA:
        return "no CUDA device"
    try:
        importlib.import_module("flash_attn.cute")
    except Exception as exc:  # noqa: BLE001 (any import failure means: no FA4 here)
        return f"flash_attn.cute does not import: {type(exc).__name__}: {exc}"
    return None


FA4_PROBLEM = _fa4_problem()
requires_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
requires_fa4 = pytest.mark.skipif(FA4_PROBLEM is not None, reason=f"FA4 not usable: {FA4_PROBLEM}")


# name, attention kwargs, (b, sq, sk, hq, hk, d, dv), dtype, varlen lengths (q, kv) or None,
# whether FA4 can express it (False: call_backend("fa4") must refuse and attention() falls back).
CASES = [
    ("no_mask", {}, (2, 128, 128, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("causal sq=sk", {"attn_mask_type": "causal"}, (2, 256, 256, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("causal_br sq<sk", {"attn_mask_type": "causal_bottom_right"}, (2, 128, 384, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("causal_br sq>sk", {"attn_mask_type": "causal_bottom_right"}, (2, 384, 128, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("causal(tl) sq>sk", {"attn_mask_type": "causal"}, (2, 384, 128, 8, 8, 128, 128), torch.bfloat16, None, True),
    # b30+ reads the negative window side of this translation literally (semantics.fa_mask).
    ("causal(tl) sq<sk", {"attn_mask_type": "causal"}, (2, 128, 384, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("causal(tl)+win sq<sk", {"attn_mask_type": "causal", "window_size": (64, 0)}, (2, 128, 384, 8, 8, 64, 64), torch.bfloat16, None, True),
    ("window (64,0) br", {"attn_mask_type": "causal_bottom_right", "window_size": (64, 0)}, (2, 256, 256, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("window (32,16)", {"window_size": (32, 16)}, (2, 256, 384, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("window left (48,-1)", {"window_size": (48, -1)}, (2, 256, 256, 8, 8, 64, 64), torch.bfloat16, None, True),
    ("window right (-1,24)", {"window_size": (-1, 24)}, (2, 256, 256, 8, 8, 64, 64), torch.bfloat16, None, True),
    ("gqa 8/2 causal", {"attn_mask_type": "causal"}, (2, 256, 256, 8, 2, 128, 128), torch.bfloat16, None, True),
    ("mqa 8/1", {}, (2, 128, 256, 8, 1, 64, 64), torch.bfloat16, None, True),
    ("mla (192,128) causal", {"attn_mask_type": "causal"}, (2, 256, 256, 8, 8, 192, 128), torch.bfloat16, None, True),
    ("gqa+mla (192,128)", {"attn_mask_type": "causal"}, (2, 256, 256, 8, 2, 192, 128), torch.bfloat16, None, False),
    ("d256 causal", {"attn_mask_type": "causal"}, (1, 256, 256, 4, 4, 256, 256), torch.bfloat16, None, True),
    ("softcap 30", {"attn_mask_type": "causal", "softcap": 30.0}, (2, 256, 256, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("fp16 causal", {"attn_mask_type": "causal"}, (2, 256, 256, 8, 8, 128, 128), torch.float16, None, True),
    ("fp16 gqa window", {"attn_mask_type": "causal_bottom_right", "window_size": (64, 0)}, (2, 128, 256, 8, 2, 64, 64), torch.float16, None, True),
    ("sink causal", {"attn_mask_type": "causal", "learnable_sink": True}, (2, 256, 256, 8, 8, 128, 128), torch.bfloat16, None, True),
    ("varlen padding_causal_br", {"attn_mask_type": "padding_causal_bottom_right"}, (0, 0, 0, 8, 2, 128, 128), torch.bfloat16, ((100, 37, 256, 5), (120, 200, 256, 5)), True),
    ("varlen padding_causal same", {"attn_mask_type": "padding_causal"}, (0, 0, 0, 8, 8, 128, 128), torch.bfloat16, ((64, 200, 17), (64, 200, 17)), True),
    ("varlen padding_causal tl", {"attn_mask_type": "padding_causal"}, (0, 0, 0, 8, 8, 128, 128), torch.bfloat16, ((64, 200), (100, 200)), False),
    ("varlen padding window", {"attn_mask_type": "padding", "window_size": (32, 32)}, (0, 0, 0, 8, 8, 64, 64), torch.bfloat16, ((90, 130), (150, 60)), True),
    ("bshd padding causal_br", {"attn_mask_type": "padding_causal_bottom_right"}, (2, 192, 256, 8, 8, 128, 128), torch.bfloat16, "bshd", True),
]


def _make(case, seed=0):
    name, kwargs, (b, sq, sk, hq, hk, d, dv), dtype, lens, _ = case
    g = torch.Generator(device="cuda").manual_seed(seed)
    kwargs = dict(kwargs)
    def rand(*shape):
        return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype).requires_grad_()
    if isinstance(lens, tuple):
        lq, lk = lens
        cu = lambda ls: torch.tensor([0, *accumulate(ls)], dtype=torch.int32, device="cuda")  # noqa: E731
        q, k, v = rand(sum(lq), hq, d), rand(sum(lk), hk, d), rand(sum(lk), hk, dv)
        kwargs.update(qkv_format="thd", cu_seqlens_q=cu(lq), cu_seqlens_kv=cu(lk), max_seqlen_q=max(lq),
                      max_seqlen_kv=max(lk))
    else:
        q, k, v = rand(b, sq, hq, d), rand(b, sk, hk, d), rand(b, sk, hk, dv)
        if lens == "bshd":
            kwargs.update(cu_seqlens_q=torch.tensor([0, sq - 50, 2 * sq - 50], dtype=torch.int32, device="cuda"),
                          cu_seqlens_kv=torch.tensor([0, sk, 2 * sk - 90], dtype=torch.int32, device="cuda"))
    leaves = [q, k, v]
    if kwargs.pop("learnable_sink", False):
        sink = (torch.randn(hq, generator=g, device="cuda") * 0.5).float().requires_grad_()
        kwargs["learnable_sink"] = sink
        leaves.append(sink)
    return leaves, kwargs


def _reference(leaves, kwargs):
    ref = [t.detach().double().requires_grad_() for t in leaves]
    fmt = kwargs.get("qkv_format", "bshd")
    want = reference(ref[0], ref[1], ref[2], mask=kwargs.get("attn_mask_type", "no_mask"),
                     window=kwargs.get("window_size") or (-1, -1), softcap=kwargs.get("softcap", 0.0),
                     sink=ref[3] if len(ref) > 3 else None, cu_q=kwargs.get("cu_seqlens_q"),
                     cu_kv=kwargs.get("cu_seqlens_kv"), qkv_format=fmt)
    return ref, want


def _errors(fn, leaves, kwargs, ref, want, grad):
    for t in leaves:
        t.grad = None
    out = fn(*leaves[:3], **kwargs)
    out.backward(grad.to(out.dtype))
    errors = {"out": rel_err(out, want)}
    for name, got, r in zip(("dq", "dk", "dv", "dsink"), leaves, ref):
        errors[name] = rel_err(got.grad, r.grad) if got.grad is not None else math.nan
    assert torch.isfinite(out).all()
    return errors


def _row(case_name, path, errors, backend=""):
    text = " ".join(f"{k}={v:.4f}" for k, v in errors.items())
    ROWS.append(f"{case_name:28s} {path:22s} {backend:5s} {text}")
    print(ROWS[-1])


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    if ROWS:
        print(f"\n{torch.cuda.get_device_name()} cc={torch.cuda.get_device_capability()} torch={torch.__version__}")
        print("relative L2 error vs float64 (out, dq, dk, dv[, dsink])")
        print("\n".join(ROWS))


def _reference_with_grad(leaves, kwargs):
    ref, want = _reference(leaves, kwargs)
    grad = torch.randn(want.shape, generator=torch.Generator(device="cuda").manual_seed(3), device="cuda",
                       dtype=torch.float64)
    want.backward(grad)
    return ref, want, grad


@requires_fa4
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fa4_call_backend_and_attention(case):
    from fa4doctor.runtime import dispatcher as runtime

    leaves, kwargs = _make(case)
    ref, want, grad = _reference_with_grad(leaves, kwargs)
    tol = TOL[case[3]]
    if case[5]:
        errors = _errors(lambda *a, **kw: runtime.call_backend("fa4", *a, **kw), leaves, kwargs, ref, want, grad)
        _row(case[0], "call_backend(fa4)", errors, "fa4")
        assert all(e < tol for e in errors.values()), errors
    else:
        # Refused by the adapter (top-left causal), or by FA4 itself in the backward (GQA + MLA on SM90).
        with pytest.raises((ValueError, AssertionError)) as refused:
            runtime.call_backend("fa4", *leaves[:3], **kwargs).float().sum().backward()
        ROWS.append(f"{case[0]:28s} {'call_backend(fa4)':22s} refused: {str(refused.value).splitlines()[0][:70]}")
        print(ROWS[-1])
    errors = _errors(runtime.attention, leaves, kwargs, ref, want, grad)
    plan = list(runtime._plans.values())[-1]
    _row(case[0], "attention()", errors, plan.decision.chosen.value)
    assert plan.decision.chosen.value == ("fa4" if case[5] else "sdpa")
    assert all(e < tol for e in errors.values()), errors
    # The same call again runs from the plan: through the compiled hit path where it is built
    # (runtime/native; its `direct` FA4 call), which must serve every dense call without a sink.
    native = runtime.attention is not runtime.python_attention
    hits = runtime.attention.__self__.stats()["hits"] if native else 0
    errors = _errors(runtime.attention, leaves, kwargs, ref, want, grad)
    _row(case[0], "attention() again" + (" [native]" if native else ""), errors, plan.decision.chosen.value)
    if native:
        served = "cu_seqlens_q" not in kwargs and len(leaves) == 3
        assert runtime.attention.__self__.stats()["hits"] == hits + served
    assert all(e < tol for e in errors.values()), errors


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sdpa_cuda_kernels(case):
    from fa4doctor.runtime import dispatcher as runtime

    leaves, kwargs = _make(case, seed=1)
    ref, want, grad = _reference_with_grad(leaves, kwargs)
    errors = _errors(lambda *a, **kw: runtime.call_backend("sdpa", *a, **kw), leaves, kwargs, ref, want, grad)
    _row(case[0], "call_backend(sdpa)", errors, "sdpa")
    assert all(e < TOL[case[3]] for e in errors.values()), errors
