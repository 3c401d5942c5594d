"""FlashAttention-2 (`flash_attn`; docs/sources.md#flashattention-2).

FA2 needs one head dim for q, k and v, a multiple of 8: the adapter zero-pads them to the same
size (TE does the same, utils.py:903-946; zeros change no dot product) with an explicit
`softmax_scale`, and slices the output back. Keywords only: 2.6 inserted `softcap` before
`alibi_slopes`. Arguments newer than 2.1 (`window_size` 2.3, `alibi_slopes` 2.4, `deterministic`
2.4.1, `softcap` 2.6) are passed only when used, so older releases the rules allow still work.
"""

from __future__ import annotations

import torch.nn.functional as F

from fa4doctor.runtime.adapters import fa_window, load_module, minus_one_window, unwrap
from fa4doctor.dispatch.backends.fa2 import FA2
from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec

MODULE = "flash_attn"


def _static(spec: AttentionSpec, scale: float) -> dict:
    mask = fa_window(spec, BackendName.FA2)
    window = minus_one_window(mask)
    static = {"dropout_p": spec.dropout_p, "softmax_scale": scale, "causal": mask.causal}
    if window != (-1, -1) and not (mask.causal and window == (-1, 0)):  # FA2: (-1, 0) is causal
        static["window_size"] = window
    if spec.softcap > 0:
        static["softcap"] = spec.softcap
    if spec.deterministic:
        static["deterministic"] = True
    return static


def bind(spec: AttentionSpec, scale: float):
    module = load_module(BackendName.FA2, MODULE)
    static = _static(spec, scale)
    width = FA2.padded_head_dim(spec)
    pad_qk, pad_v = width - spec.head_dim_qk, width - spec.head_dim_v
    dense, varlen_func = module.flash_attn_func, module.flash_attn_varlen_func

    def run(q, k, v, varlen=None, alibi_slopes=None, learnable_sink=None):
        if pad_qk:
            q, k = F.pad(q, (0, pad_qk)), F.pad(k, (0, pad_qk))
        if pad_v:
            v = F.pad(v, (0, pad_v))
        extra = {} if alibi_slopes is None else {"alibi_slopes": alibi_slopes.float()}  # fp32 only
        if varlen is None:
            out = unwrap(dense(q=q, k=k, v=v, **static, **extra))
        else:
            out = unwrap(varlen_func(q=q, k=k, v=v, cu_seqlens_q=varlen.cu_seqlens_q,
                                     cu_seqlens_k=varlen.cu_seqlens_kv, max_seqlen_q=int(varlen.max_seqlen_q),
                                     max_seqlen_k=int(varlen.max_seqlen_kv), **static, **extra))
        return out[..., :spec.head_dim_v] if pad_v else out
    return run
