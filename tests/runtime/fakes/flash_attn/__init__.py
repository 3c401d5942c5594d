"""Fake `flash_attn` (FA2 2.8.3's public surface): records calls, computes in float64.

FA2 reads -1 as an unbounded side and `(-1, 0)` as causal (flash_api.cpp:139); q, k and v must
share one head dim, a multiple of 8 (flash_api.cpp:393-395, 418); ALiBi slopes are fp32.
"""

from fake_fa_core import attend, check_varlen, record


def _run(q, k, v, kwargs, **varlen):
    if not q.shape[-1] == k.shape[-1] == v.shape[-1] or q.shape[-1] % 8:
        raise RuntimeError("FlashAttention forward only supports head dimension a multiple of 8, same for q, k, v")
    alibi = kwargs.get("alibi_slopes")
    if alibi is not None and alibi.dtype.is_floating_point and alibi.element_size() != 4:
        raise RuntimeError("ALiBi slopes must have dtype fp32")
    left, right = kwargs.get("window_size", (-1, -1))
    causal = kwargs.get("causal", False) or (left < 0 and right == 0)
    return attend(q, k, v, causal=causal, left=None if left < 0 else left, right=None if right < 0 else right,
                  scale=kwargs.get("softmax_scale"), softcap=kwargs.get("softcap", 0.0), alibi=alibi, **varlen)


def flash_attn_func(*args, **kwargs):
    record("fa2", "flash_attn_func", args, kwargs)
    return _run(kwargs["q"], kwargs["k"], kwargs["v"], kwargs)


def flash_attn_varlen_func(*args, **kwargs):
    record("fa2", "flash_attn_varlen_func", args, kwargs)
    check_varlen(kwargs["cu_seqlens_q"], kwargs["cu_seqlens_k"], kwargs["max_seqlen_q"], kwargs["max_seqlen_k"])
    return _run(kwargs["q"], kwargs["k"], kwargs["v"], kwargs, cu_q=kwargs["cu_seqlens_q"], cu_k=kwargs["cu_seqlens_k"])
