"""`attention()` on the CPU (SDPA) against the float64 reference, forward and dq, dk, dv.

Tolerances are relative L2 errors: fp32 must agree to ~1e-5 (it is the same math in another
order); bf16 keeps 8 mantissa bits, so ~1e-2, as the H100 measurements saw for FA4 (0.002-0.003
with larger head dims and longer rows averaging the rounding out); fp64 is the reference's own
precision, so ~1e-15 (1e-12 allowed).
"""

from __future__ import annotations

import pytest
import torch

from fa4doctor.dispatch import attention

from .reference import reference, rel_err

TOL = {torch.float32: 2e-5, torch.bfloat16: 2.5e-2, torch.float64: 1e-12}
MASKS = ("no_mask", "causal", "causal_bottom_right")


def _inputs(dtype, b=2, sq=5, sk=7, hq=4, hk=2, d=16, dv=None, seed=0, thd=False):
    g = torch.Generator().manual_seed(seed)
    shape_q = (sq, hq, d) if thd else (b, sq, hq, d)
    shape_k = (sk, hk, d) if thd else (b, sk, hk, d)
    shape_v = (sk, hk, dv or d) if thd else (b, sk, hk, dv or d)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in (shape_q, shape_k, shape_v)]


def check(dtype, q, k, v, extra_leaves=(), tol_scale=1.0, **kwargs):
    """Run attention and the reference on the same values; compare output and every gradient."""
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v, *extra_leaves)]
    names = {"attn_mask_type": "mask", "window_size": "window", "softmax_scale": "scale",
             "alibi_slopes": "alibi", "learnable_sink": "sink", "cu_seqlens_q": "cu_q", "cu_seqlens_kv": "cu_kv"}
    ref_kwargs = {names.get(key, key): value for key, value in kwargs.items()}
    if extra_leaves:
        ref_kwargs["sink"] = ref_leaves[3]
    ref_kwargs.pop("max_seqlen_q", None), ref_kwargs.pop("max_seqlen_kv", None)
    if ref_kwargs.get("window") is None:
        ref_kwargs.pop("window", None)
    out = attention(q, k, v, **kwargs)
    want = reference(*ref_leaves[:3], **ref_kwargs)
    assert out.dtype == q.dtype and out.shape == want.shape
    assert torch.isfinite(out).all()
    tol = TOL[dtype] * tol_scale
    assert rel_err(out, want) < tol, ("out", rel_err(out, want))
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out.backward(grad.to(out.dtype))
    want.backward(grad)
    for name, got, ref in zip(("dq", "dk", "dv", "dsink"), (q, k, v, *extra_leaves), ref_leaves):
        assert got.grad is not None and torch.isfinite(got.grad).all(), name
        assert rel_err(got.grad, ref.grad) < 2 * tol, (name, rel_err(got.grad, ref.grad))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("sq,sk", [(5, 7), (7, 5), (6, 6)], ids=["sq<sk", "sq>sk", "sq=sk"])
def test_masks_both_alignments(dtype, mask, sq, sk):
    check(dtype, *_inputs(dtype, sq=sq, sk=sk), attn_mask_type=mask)


@pytest.mark.parametrize("window", [(2, -1), (-1, 1), (2, 1), (0, 0)], ids=["left", "right", "both", "diag"])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("sq,sk", [(5, 8), (8, 5)], ids=["sq<sk", "sq>sk"])
def test_sliding_windows(window, mask, sq, sk):
    check(torch.float32, *_inputs(torch.float32, sq=sq, sk=sk), attn_mask_type=mask, window_size=window)


@pytest.mark.parametrize("hk", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gqa_mqa_and_head_dims(hk, dtype):
    check(dtype, *_inputs(dtype, hq=4, hk=hk, d=24, dv=16), attn_mask_type="causal_bottom_right")


@pytest.mark.parametrize("mask", ["no_mask", "causal", "causal_bottom_right", "padding", "padding_causal",
                                  "padding_causal_bottom_right"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_varlen_thd_unequal_lengths(mask, dtype):
    cu_q = torch.tensor([0, 3, 3, 9, 11], dtype=torch.int32)   # lengths 3, 0, 6, 2
    cu_kv = torch.tensor([0, 5, 7, 9, 10], dtype=torch.int32)  # lengths 5, 2, 2, 1
    q, k, v = _inputs(dtype, sq=11, sk=10, thd=True)
    check(dtype, q, k, v, attn_mask_type=mask, qkv_format="thd", cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv)


@pytest.mark.parametrize("mask", ["padding", "padding_causal", "padding_causal_bottom_right"])
def test_padding_over_bshd(mask):
    lengths_q, lengths_kv = torch.tensor([0, 4, 6], dtype=torch.int32), torch.tensor([0, 6, 9], dtype=torch.int32)
    q, k, v = _inputs(torch.float32, b=2, sq=5, sk=6)
    out = check(torch.float32, q, k, v, attn_mask_type=mask, cu_seqlens_q=lengths_q, cu_seqlens_kv=lengths_kv)
    assert out[1, 2:].abs().max() == 0  # padded queries give zeros


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_softcap(mask, dtype):
    check(dtype, *_inputs(dtype), attn_mask_type=mask, softcap=2.0, softmax_scale=0.9)


@pytest.mark.parametrize("per_batch", [False, True], ids=["slopes_h", "slopes_bh"])
@pytest.mark.parametrize("mask", MASKS)
def test_alibi(per_batch, mask):
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    slopes = torch.stack([slopes, slopes * 2]) if per_batch else slopes
    check(torch.float32, *_inputs(torch.float32), attn_mask_type=mask, alibi_slopes=slopes)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_learnable_sink(mask, dtype):
    sink = torch.tensor([0.5, -1.0, 2.0, 0.0]).requires_grad_()
    check(dtype, *_inputs(dtype), extra_leaves=(sink,), attn_mask_type=mask, learnable_sink=sink)


def test_sink_softcap_window_gqa_varlen_together():
    sink = torch.tensor([0.3, -0.2, 1.0, 0.1]).requires_grad_()
    cu_q, cu_kv = torch.tensor([0, 4, 9], dtype=torch.int32), torch.tensor([0, 6, 8], dtype=torch.int32)
    q, k, v = _inputs(torch.float32, sq=9, sk=8, thd=True, d=16, dv=8)
    check(torch.float32, q, k, v, extra_leaves=(sink,), attn_mask_type="padding_causal_bottom_right",
          window_size=(2, -1), softcap=3.0, learnable_sink=sink, qkv_format="thd",
          cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv)


@pytest.mark.parametrize("mask,window", [("causal_bottom_right", (-1, -1)), ("no_mask", (1, 0)),
                                         ("causal", (-1, -1))])
def test_rows_without_keys_give_zeros_not_nan(mask, window):
    # sq > sk bottom-right: the first sq - sk queries see no key; a window can empty rows too.
    q, k, v = _inputs(torch.float32, sq=8, sk=3)
    out = check(torch.float32, q, k, v, attn_mask_type=mask, window_size=window)
    if mask == "causal_bottom_right":
        assert out[:, :5].abs().max() == 0
        assert q.grad[:, :5].abs().max() == 0


def test_fp32_matches_reference_exactly_enough_for_mixed_scale():
    check(torch.float32, *_inputs(torch.float32, d=8), softmax_scale=0.3, attn_mask_type="causal")


def test_dropout_runs_and_drops():
    q, k, v = _inputs(torch.float32, sq=16, sk=16)
    torch.manual_seed(0)
    out = attention(q, k, v, dropout_p=0.5)
    full = attention(q, k, v)
    assert torch.isfinite(out).all() and not torch.allclose(out, full)


F64_PATHS = {  # each path of runtime/adapters/sdpa.py: SDPA's own flags, an explicit mask, plain math
    "flags": dict(attn_mask_type="causal_bottom_right"),
    "window": dict(attn_mask_type="causal", window_size=(2, -1)),
    "softcap": dict(attn_mask_type="causal", softcap=2.0, softmax_scale=0.9),
    "alibi": dict(attn_mask_type="no_mask", alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625])),
}


@pytest.mark.parametrize("path", sorted(F64_PATHS))
def test_float64_runs_in_float64(path):
    check(torch.float64, *_inputs(torch.float64), **F64_PATHS[path])


def test_float64_sink_and_varlen_run_in_float64():
    sink = torch.tensor([0.3, -0.2, 1.0, 0.1], dtype=torch.float64).requires_grad_()
    cu_q, cu_kv = torch.tensor([0, 4, 9], dtype=torch.int32), torch.tensor([0, 6, 8], dtype=torch.int32)
    q, k, v = _inputs(torch.float64, sq=9, sk=8, thd=True)
    check(torch.float64, q, k, v, extra_leaves=(sink,), attn_mask_type="padding_causal_bottom_right",
          learnable_sink=sink, qkv_format="thd", cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv)
