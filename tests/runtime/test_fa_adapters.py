"""FA2, FA3 and FA4 adapters against fake modules that record every call and compute the
FA-convention result in float64, so a wrong translation fails on the numbers as well as the log."""

from __future__ import annotations

import pytest
import torch

from fa4doctor.runtime.dispatcher import call_backend

from .reference import reference, rel_err

FA = ("fa4", "fa3", "fa2")


def _qkv(sq=6, sk=9, hq=4, hk=2, d=16, dv=16, thd=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    lead_q, lead_k = ((sq,), (sk,)) if thd else ((2, sq), (2, sk))
    return (torch.randn(*lead_q, hq, d, generator=g).bfloat16(), torch.randn(*lead_k, hk, d, generator=g).bfloat16(),
            torch.randn(*lead_k, hk, dv, generator=g).bfloat16())


def _only_call(calls, backend):
    mine = [c for c in calls if c["backend"] == backend]
    assert len(mine) == 1, calls
    return mine[0]


CASES = [  # (mask, window, sq, sk): every FA-expressible canonical mask
    ("no_mask", None, 6, 9), ("causal_bottom_right", None, 6, 9), ("causal_bottom_right", None, 9, 6),
    ("causal", None, 7, 7), ("causal", None, 9, 6),  # top-left, sq > sk: shifted window
    ("causal", (4, -1), 9, 6), ("no_mask", (3, 1), 6, 9), ("no_mask", (-1, 0), 6, 9),
    ("causal_bottom_right", (2, -1), 6, 9), ("no_mask", (2, -1), 9, 6),
]


@pytest.mark.parametrize("backend", FA)
@pytest.mark.parametrize("mask,window,sq,sk", CASES)
def test_dense_translation(fakes, backend, mask, window, sq, sk):
    q, k, v = _qkv(sq, sk)
    out = call_backend(backend, q, k, v, attn_mask_type=mask, window_size=window)
    call = _only_call(fakes, backend)
    assert call["args"] == ()  # keywords only (FA4 b9 moved the positions: docs/sources.md#fa4-keyword-arguments)
    assert call["kwargs"]["softmax_scale"] == pytest.approx(16 ** -0.5)
    want = reference(q, k, v, mask=mask, window=window or (-1, -1))
    assert rel_err(out, want) < 2e-2, rel_err(out, want)
    if backend == "fa4":
        left, right = call["kwargs"]["window_size"]
        assert all(side is None or side >= 0 for side in (left, right)), call["kwargs"]  # never -1 (b30)
        assert call["kwargs"]["num_splits"] == 1


@pytest.mark.parametrize("backend", FA)
def test_plain_causal_is_the_flag_without_a_window(fakes, backend):
    q, k, v = _qkv(8, 8)
    call_backend(backend, q, k, v, attn_mask_type="causal")
    kwargs = _only_call(fakes, backend)["kwargs"]
    assert kwargs["causal"] is True
    unbounded = {"fa4": (None, None), "fa3": (-1, 0), "fa2": None}[backend]
    assert kwargs.get("window_size") == unbounded


@pytest.mark.parametrize("backend", FA)
def test_top_left_causal_with_more_keys_is_refused_not_passed_through(fakes, backend):
    q, k, v = _qkv(6, 9)
    if backend == "fa4":  # b30+ reads a negative side literally: the exact window is (None, -3)
        out = call_backend(backend, q, k, v, attn_mask_type="causal")
        kwargs = _only_call(fakes, backend)["kwargs"]
        assert kwargs["causal"] is False and kwargs["window_size"] == (None, -3)
        assert rel_err(out, reference(q, k, v, mask="causal")) < 2e-2
        return
    with pytest.raises(ValueError, match="attn_mask_type.*bottom-right"):
        call_backend(backend, q, k, v, attn_mask_type="causal")
    assert fakes == []


@pytest.mark.parametrize("backend", FA)
def test_varlen_int32_offsets_and_python_int_max_seqlen(fakes, backend):
    cu_q = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
    cu_kv = torch.tensor([0, 5, 8, 12], dtype=torch.int32)
    q, k, v = _qkv(10, 12, thd=True)
    out = call_backend(backend, q, k, v, qkv_format="thd", attn_mask_type="padding_causal_bottom_right",
                       cu_seqlens_q=cu_q, cu_seqlens_kv=cu_kv, max_seqlen_q=6)
    kwargs = _only_call(fakes, backend)["kwargs"]
    assert kwargs["cu_seqlens_q"].dtype is torch.int32 and kwargs["cu_seqlens_k"].dtype is torch.int32
    assert type(kwargs["max_seqlen_q"]) is int and kwargs["max_seqlen_q"] == 6
    assert type(kwargs["max_seqlen_k"]) is int and kwargs["max_seqlen_k"] == 5
    want = reference(q, k, v, mask="padding_causal_bottom_right", qkv_format="thd", cu_q=cu_q, cu_kv=cu_kv)
    assert rel_err(out, want) < 2e-2


def test_fa4_unwraps_out_lse_and_passes_sink_and_softcap(fakes):
    q, k, v = _qkv(6, 6)
    sink = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    out = call_backend("fa4", q, k, v, attn_mask_type="causal", softcap=3.0, learnable_sink=sink)
    kwargs = _only_call(fakes, "fa4")["kwargs"]
    assert isinstance(out, torch.Tensor) and kwargs["softcap"] == 3.0
    assert kwargs["learnable_sink"].dtype is torch.bfloat16  # FA4 asserts bf16 sinks
    out.float().sum().backward()
    assert sink.grad is not None and sink.grad.dtype is torch.float32
    want = reference(q, k, v, mask="causal", softcap=3.0, sink=sink)
    assert rel_err(out, want) < 2e-2


def test_fa3_unwraps_tuple(fakes):
    q, k, v = _qkv(6, 6)
    out = call_backend("fa3", q, k, v)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 6, 4, 16)


def test_fa2_pads_head_dims_and_slices(fakes):
    q, k, v = _qkv(6, 9, d=20, dv=12)
    out = call_backend("fa2", q, k, v, attn_mask_type="causal_bottom_right")
    kwargs = _only_call(fakes, "fa2")["kwargs"]
    assert kwargs["q"].shape[-1] == kwargs["k"].shape[-1] == kwargs["v"].shape[-1] == 24
    assert kwargs["softmax_scale"] == pytest.approx(20 ** -0.5)  # the unpadded head dim's scale
    assert out.shape[-1] == 12
    assert rel_err(out, reference(q, k, v, mask="causal_bottom_right")) < 2e-2


def test_fa2_alibi_slopes_fp32(fakes):
    q, k, v = _qkv(6, 9)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.bfloat16)
    out = call_backend("fa2", q, k, v, alibi_slopes=slopes)
    assert _only_call(fakes, "fa2")["kwargs"]["alibi_slopes"].dtype is torch.float32
    assert rel_err(out, reference(q, k, v, alibi=slopes.float())) < 2e-2


def test_call_backend_lets_the_backends_own_errors_through(fakes):
    q, k, v = _qkv(6, 6, d=12)  # FA2 needs head dims divisible by 8; the adapter pads to 16
    call_backend("fa2", q, k, v)
    import flash_attn.cute

    def broken(*args, **kwargs):
        raise AssertionError("inputs must be float16, bfloat16, fp8 e4m3fn, or fp8 e5m2")
    flash_attn.cute.flash_attn_func = broken
    with pytest.raises(AssertionError, match="inputs must be"):
        call_backend("fa4", q, k, v)


def test_unknown_backend_names_the_choices():
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(ValueError, match="fa4, fa3, fa2, sdpa"):
        call_backend("fa5", q, q, q)


@pytest.mark.parametrize("mask,window,sq,sk", CASES)
def test_fa4_calls_with_exactly_call_kwargs(fakes, mask, window, sq, sk):
    """The spelled-out fast call and `call_kwargs` (what the overhead bench calls FA4 with) agree."""
    from fa4doctor.runtime.adapters.fa4 import call_kwargs
    from fa4doctor.runtime.inputs import prepare

    q, k, v = _qkv(sq, sk)
    call_backend("fa4", q, k, v, attn_mask_type=mask, window_size=window)
    prepared = prepare(q, k, v, attn_mask_type=mask, window_size=window)
    kwargs = _only_call(fakes, "fa4")["kwargs"]
    assert {n: kwargs[n] for n in kwargs if n not in ("q", "k", "v")} == call_kwargs(prepared.spec, prepared.scale)


def test_fa4_sink_call_is_call_kwargs_plus_the_sink(fakes):
    from fa4doctor.runtime.adapters.fa4 import call_kwargs
    from fa4doctor.runtime.inputs import prepare

    q, k, v = _qkv(6, 6)
    sink = torch.zeros(4)
    call_backend("fa4", q, k, v, attn_mask_type="causal", softcap=2.0, learnable_sink=sink)
    prepared = prepare(q, k, v, attn_mask_type="causal", softcap=2.0, learnable_sink=sink)
    kwargs = dict(_only_call(fakes, "fa4")["kwargs"])
    assert kwargs.pop("learnable_sink").dtype is torch.bfloat16
    assert {n: kwargs[n] for n in kwargs if n not in ("q", "k", "v")} == call_kwargs(prepared.spec, prepared.scale)
