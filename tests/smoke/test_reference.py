"""The float64 reference is attention by definition, and the tolerance rule separates rounding
from wrong results."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fa4doctor.smoke.reference import UNIT_ROUNDOFF, allowed, attention, judge, tolerance

f64 = torch.float64


def _qkv(b=1, sq=16, sk=16, h=2, hk=2, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, sq, h, d, generator=gen, dtype=f64), torch.randn(b, sk, hk, d, generator=gen, dtype=f64),
            torch.randn(b, sk, hk, d, generator=gen, dtype=f64))


def _sdpa(q, k, v, mask=None, causal=False):
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=causal).transpose(1, 2)


@pytest.mark.parametrize("sq,sk", [(16, 16), (24, 8), (8, 24)])
def test_top_left_causal_matches_torch_is_causal(sq, sk):
    q, k, v = _qkv(sq=sq, sk=sk)
    torch.testing.assert_close(attention(q, k, v, attn_mask_type="causal"), _sdpa(q, k, v, causal=True))


def test_bottom_right_causal_keeps_the_last_query_seeing_every_key():
    q, k, v = _qkv(sq=4, sk=12)
    keep = allowed(4, 12, "causal_bottom_right", (-1, -1))
    assert keep[-1].all() and keep[0].sum() == 9  # j <= i + (sk - sq)
    torch.testing.assert_close(attention(q, k, v, attn_mask_type="causal_bottom_right"), _sdpa(q, k, v, mask=keep))


def test_window_and_empty_rows():
    keep = allowed(6, 6, "no_mask", (1, 0))
    assert keep.sum(1).tolist() == [1, 2, 2, 2, 2, 2]
    q, k, v = _qkv(sq=8, sk=4)
    out = attention(q, k, v, attn_mask_type="causal_bottom_right")  # rows 0..3 see no key
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert out[:, 4:].abs().sum() > 0


def test_gqa_is_repeated_kv_heads():
    q, k, v = _qkv(h=4, hk=2)
    expanded = attention(q, k.repeat_interleave(2, 2), v.repeat_interleave(2, 2))
    torch.testing.assert_close(attention(q, k, v), expanded)


def test_varlen_is_each_sequence_alone():
    q, k, v = _qkv(b=1, sq=20, sk=20)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    packed = attention(q[0], k[0], v[0], attn_mask_type="padding_causal", cu_seqlens_q=cu, cu_seqlens_kv=cu)
    first = attention(q[:, :7], k[:, :7], v[:, :7], attn_mask_type="causal")[0]
    second = attention(q[:, 7:], k[:, 7:], v[:, 7:], attn_mask_type="causal")[0]
    torch.testing.assert_close(packed, torch.cat([first, second]))


def test_softcap_is_tanh_of_the_scores():
    q, k, v = _qkv(d=4)
    scores = torch.einsum("bqhd,bkhd->bhqk", q / 2, k)
    expected = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(5 * torch.tanh(scores / 5), -1), v)
    torch.testing.assert_close(attention(q, k, v, softcap=5.0), expected)


def test_tolerance_follows_the_dtype():
    q, k, v = _qkv(sq=64, sk=64, d=64)
    ref = attention(q, k, v)
    tols = {}
    for dtype in (torch.bfloat16, torch.float16):
        low = attention(*(t.to(dtype) for t in (q, k, v)), compute_dtype=dtype)
        tols[dtype] = tolerance(ref, low, dtype)[0]
    assert tols[torch.float16] < tols[torch.bfloat16] / 4  # 3 more mantissa bits
    assert UNIT_ROUNDOFF[torch.bfloat16] == 2.0 ** -8


def test_judge_flags_a_wrong_tensor_and_nan():
    q, k, v = _qkv(sq=32, sk=32, d=16)
    ref = attention(q, k, v)
    low = attention(*(t.to(torch.bfloat16) for t in (q, k, v)), compute_dtype=torch.bfloat16)
    assert judge("out", ref.to(torch.bfloat16), ref, low, torch.bfloat16).ok
    wrong = judge("out", (ref * 1.5).to(torch.bfloat16), ref, low, torch.bfloat16)
    assert not wrong.ok and wrong.error > wrong.tolerance and "out max error" in wrong.describe()
    poisoned = ref.clone()
    poisoned[0, 0, 0, 0] = float("nan")
    assert math.isnan(judge("out", poisoned, ref, low, torch.bfloat16).error)
    assert not judge("out", poisoned, ref, low, torch.bfloat16).ok


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.sampled_from([8, 16, 64]), dtype=st.sampled_from(["bf16", "fp16"]),
       mask=st.sampled_from(["no_mask", "causal", "causal_bottom_right"]))
def test_the_reference_rounded_to_the_dtype_always_passes(seed, d, dtype, mask):
    """A kernel as exact as its output dtype allows is never called wrong."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    q, k, v = (t.to(dtype) for t in _qkv(sq=24, sk=24, d=d, seed=seed))
    ref = attention(q, k, v, attn_mask_type=mask)
    low = attention(q, k, v, attn_mask_type=mask, compute_dtype=dtype)
    assert judge("out", ref.to(dtype), ref, low, dtype).ok
