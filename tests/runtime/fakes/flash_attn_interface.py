"""Fake `flash_attn_interface` (FA3, hopper/flash_attn_interface.py): records calls, float64.

Windows the FA2 way (-1 unbounded, `(-1, 0)` causal); returns `(out, lse)` as FA3 did before
FA PR #1851, so the adapter's unwrapping is exercised.
"""

from fake_fa_core import attend, check_varlen, record


def _run(kwargs, **varlen):
    left, right = kwargs.get("window_size", (-1, -1))
    causal = kwargs.get("causal", False) or (left < 0 and right == 0)
    out = attend(kwargs["q"], kwargs["k"], kwargs["v"], causal=causal, left=None if left < 0 else left,
                 right=None if right < 0 else right, scale=kwargs.get("softmax_scale"),
                 softcap=kwargs.get("softcap", 0.0), **varlen)
    return out, None


def flash_attn_func(*args, **kwargs):
    record("fa3", "flash_attn_func", args, kwargs)
    return _run(kwargs)


def flash_attn_varlen_func(*args, **kwargs):
    record("fa3", "flash_attn_varlen_func", args, kwargs)
    check_varlen(kwargs["cu_seqlens_q"], kwargs["cu_seqlens_k"], kwargs["max_seqlen_q"], kwargs["max_seqlen_k"])
    return _run(kwargs, cu_q=kwargs["cu_seqlens_q"], cu_k=kwargs["cu_seqlens_k"])
