"""FlashAttention-3 (`flash_attn_interface`, the Hopper build; docs/sources.md#flashattention-3).

FA3 reads windows FA2's way (-1 = unbounded, `(-1, 0)` = causal), aligns causal bottom-right,
and returned `(out, lse)` by default before FA PR #1851, so the result is unwrapped.
"""

from __future__ import annotations

from fa4doctor.runtime.adapters import fa_window, load_module, minus_one_window, unwrap
from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec

MODULE = "flash_attn_interface"


def bind(spec: AttentionSpec, scale: float):
    module = load_module(BackendName.FA3, MODULE)
    mask = fa_window(spec, BackendName.FA3)
    static = {"softmax_scale": scale, "causal": mask.causal, "window_size": minus_one_window(mask),
              "softcap": spec.softcap, "deterministic": spec.deterministic}
    dense, varlen_func = module.flash_attn_func, module.flash_attn_varlen_func

    def run(q, k, v, varlen=None, alibi_slopes=None, learnable_sink=None):
        if varlen is None:
            return unwrap(dense(q=q, k=k, v=v, **static))
        return unwrap(varlen_func(q=q, k=k, v=v, cu_seqlens_q=varlen.cu_seqlens_q,
                                  cu_seqlens_k=varlen.cu_seqlens_kv, max_seqlen_q=int(varlen.max_seqlen_q),
                                  max_seqlen_k=int(varlen.max_seqlen_kv), **static))
    return run
