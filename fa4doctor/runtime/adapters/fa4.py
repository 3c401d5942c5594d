"""FlashAttention-4 (`flash_attn.cute`), called the one way that means the same on every beta.

- Keywords only: b9 inserted `qv, gather_kv_indices` after `v`, so a positional `softmax_scale`
  silently became `qv` (docs/sources.md#fa4-keyword-arguments).
- An unbounded window side is `None`, never -1: from b30 `window_size=(-1, 0)` masks every key and
  returns zeros (FA PR #2490; docs/sources.md#fa4-window-sides). Plain causal is `causal=True`
  with no window.
- `num_splits=1`: any split > 1 asserts below SM100 (iface@b36:1612, 1631; docs/sources.md#fa4-architectures).
- `max_seqlen_*` as Python ints: a tensor recompiles on every step before b26 (FA PRs #2507, #2762).
- Both public functions return `(out, lse)` in every beta (iface@b36:3854, 4032).
- `learnable_sink` in bfloat16, the only dtype most betas accept.
"""

from __future__ import annotations

import torch

from fa4doctor.dispatch.backends import FA4
from fa4doctor.runtime.adapters import Direct, fa_window, installed_version, load_module, unwrap
from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec

MODULE = "flash_attn.cute"


def call_kwargs(spec: AttentionSpec, scale: float) -> dict:
    """The keywords every FA4 call of `spec` gets besides the tensors (`bench/dispatch_overhead.py`
    calls FA4 with exactly these to time the adapter against a direct call)."""
    # Negative sides only reach a beta that reads them literally: the same gate as the rules'
    # (FA4.NEGATIVE_WINDOWS_SINCE); below it a top-left mask that needs one raises SpecError here.
    mask = fa_window(spec, BackendName.FA4, negative_sides=FA4.negative_windows(installed_version(BackendName.FA4)))
    # causal=True already hides keys right of the diagonal; the window adds only a left bound.
    window = (mask.left, None) if mask.causal else (mask.left, mask.right)
    return {"softmax_scale": scale, "causal": mask.causal, "window_size": window,
            "softcap": spec.softcap, "num_splits": 1, "deterministic": spec.deterministic}


def bind(spec: AttentionSpec, scale: float):
    module = load_module(BackendName.FA4, MODULE)
    static = call_kwargs(spec, scale)
    dense, varlen_func = module.flash_attn_func, module.flash_attn_varlen_func
    # Spelled out, not `**static`: splatting a dict into a Python function with b36's 23 parameters
    # cost ~0.45 us more per call (timeit, 2-core EPYC, Python 3.11); a test pins both to one call.
    scale, causal, window, softcap, deterministic = (static[name] for name in (
        "softmax_scale", "causal", "window_size", "softcap", "deterministic"))

    def run(q, k, v, varlen=None, alibi_slopes=None, learnable_sink=None):
        if varlen is None and learnable_sink is None:
            out = dense(q=q, k=k, v=v, softmax_scale=scale, causal=causal, window_size=window, softcap=softcap,
                        num_splits=1, deterministic=deterministic)
            return out[0] if isinstance(out, (tuple, list)) else out  # unwrap(), inlined
        # FA4 asserts "learnable_sink must be bfloat16" (interface.py input checks, b26-b36); the
        # cast is differentiable, so the caller's sink keeps its dtype and gets its gradient.
        extra = {} if learnable_sink is None else {"learnable_sink": learnable_sink.to(torch.bfloat16)}
        if varlen is None:
            return unwrap(dense(q=q, k=k, v=v, **static, **extra))
        return unwrap(varlen_func(q=q, k=k, v=v, cu_seqlens_q=varlen.cu_seqlens_q,
                                  cu_seqlens_k=varlen.cu_seqlens_kv, max_seqlen_q=int(varlen.max_seqlen_q),
                                  max_seqlen_k=int(varlen.max_seqlen_kv), **static, **extra))
    return run


def direct(spec: AttentionSpec, scale: float) -> Direct:
    """`flash_attn_func` with `run`'s dense keywords, in `run`'s order (tests/runtime/test_native.py)."""
    return Direct.of(load_module(BackendName.FA4, MODULE).flash_attn_func, call_kwargs(spec, scale))
