"""Fake `flash_attn.cute` (FA4 b36's public surface): records calls, computes in float64.

Mirrors b36 `_resolve_causal_local_window` (iface@b36:438-460): both sides negative -> unbounded;
then causal forces right = 0; any other negative side is used literally (zeros).
"""

from fake_fa_core import attend, check_varlen, record

__version__ = "0.0.0"  # what every real beta reports (docs/sources.md#fa4-version)


def _resolve(causal, window_size):
    left, right = window_size
    if left is not None and right is not None and left < 0 and right < 0:
        left = right = None
    if causal:
        right = 0
    return left, right


def _run(q, k, v, softmax_scale, causal, window_size, learnable_sink, softcap, num_splits, **varlen):
    if num_splits != 1:
        raise AssertionError("SplitKV not supported on SM 8.0/9.0")
    if learnable_sink is not None and str(learnable_sink.dtype) != "torch.bfloat16":
        raise AssertionError("learnable_sink must be bfloat16")
    left, right = _resolve(causal, window_size)
    out = attend(q, k, v, causal=causal, left=left, right=right, scale=softmax_scale, softcap=softcap,
                 sink=learnable_sink, **varlen)
    return out, None


def flash_attn_func(*args, **kwargs):
    record("fa4", "flash_attn_func", args, kwargs)
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    return _run(q, k, v, kwargs.get("softmax_scale"), kwargs.get("causal", False),
                kwargs.get("window_size", (None, None)), kwargs.get("learnable_sink"),
                kwargs.get("softcap", 0.0), kwargs.get("num_splits", 1))


def flash_attn_varlen_func(*args, **kwargs):
    record("fa4", "flash_attn_varlen_func", args, kwargs)
    check_varlen(kwargs["cu_seqlens_q"], kwargs["cu_seqlens_k"], kwargs["max_seqlen_q"], kwargs["max_seqlen_k"])
    return _run(kwargs["q"], kwargs["k"], kwargs["v"], kwargs.get("softmax_scale"), kwargs.get("causal", False),
                kwargs.get("window_size", (None, None)), kwargs.get("learnable_sink"),
                kwargs.get("softcap", 0.0), kwargs.get("num_splits", 1),
                cu_q=kwargs["cu_seqlens_q"], cu_k=kwargs["cu_seqlens_k"])
