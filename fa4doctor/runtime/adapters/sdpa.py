"""PyTorch SDPA, made to mean exactly the canonical call (docs/runtime.md, "What the arguments mean").

SDPA's `is_causal` is top-left, `causal_lower_right` is bottom-right (docs/sources.md#pytorch-sdpa). Windows,
padding and ALiBi become explicit masks and biases; softcap and the learnable sink, which SDPA has
no flag for, run in plain math, in float32 (float64 for float64 inputs). Rows with no allowed key
give zeros, as FlashAttention's do (FA2 README: "If the row of the mask is all zero, the output will
be zero"), never NaN: such rows are unmasked for the softmax and then multiplied by zero, so their
gradients are zero too.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fa4doctor.dispatch.backends.sdpa import KERNELS
from fa4doctor.dispatch.spec import AttentionSpec, MaskType
from fa4doctor.dispatch.versions import at_least

try:  # torch >= 2.4; without it a bottom-right causal mask is materialized
    from torch.nn.attention.bias import causal_lower_right
except ImportError:  # pragma: no cover
    causal_lower_right = None

try:  # torch >= 2.12 (torch/nn/attention/_registry.py); before it, flash is always torch's own FA2
    from torch.nn.attention import current_flash_attention_impl
except ImportError:  # pragma: no cover
    current_flash_attention_impl = None

# `enable_gqa` first appeared in torch 2.5; older releases need expanded k/v heads.
HAS_ENABLE_GQA = at_least(torch.__version__, "2.5")
# The dispatcher's names for SDPA's kernels (dispatch/backends/sdpa.py `KERNELS`) as torch's.
SDP_BACKENDS = dict(zip(KERNELS, (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                  SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)))


@functools.lru_cache(maxsize=256)
def allowed_keys(mask: MaskType, window: tuple[int, int], sq: int, sk: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(allowed (sq, sk) bool, rows that keep at least one key (sq,), whether every row does)."""
    d = 0 if mask.is_top_left else sk - sq
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    ok = torch.ones(sq, sk, dtype=torch.bool, device=device)
    left, right = window
    if mask.is_causal:
        ok &= j <= i + d
    if left >= 0:
        ok &= j >= i + d - left
    if right >= 0:
        ok &= j <= i + d + right
    rows = ok.any(-1)
    return ok, rows, bool(rows.all())


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32, or float64 for float64 inputs


def _alibi_bias(slopes: torch.Tensor, mask: MaskType, sq: int, sk: int, dtype: torch.dtype) -> torch.Tensor:
    """-slope * |i + d - j| (TE/FA2 ALiBi), shaped (b or 1, h, sq, sk), in `_compute_dtype(dtype)`."""
    d = 0 if mask.is_top_left else sk - sq
    i = torch.arange(sq, device=slopes.device)[:, None]
    j = torch.arange(sk, device=slopes.device)[None, :]
    compute = _compute_dtype(dtype)
    distance = (i + d - j).abs().to(compute)
    slopes = slopes.to(compute)
    slopes = slopes[None] if slopes.dim() == 1 else slopes
    return -slopes[:, :, None, None] * distance


def _expand_heads(k: torch.Tensor, v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    groups = heads // k.shape[1]
    return (k, v) if groups == 1 else (k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1))


def mask_flags(mask: MaskType, window: tuple[int, int], sq: int, sk: int) -> dict | None:
    """SDPA's own way to say this mask (nothing, `is_causal`, `causal_lower_right`), or None when
    it takes an explicit boolean mask. For sq, sk > 0 and no ALiBi."""
    if not mask.is_causal and window == (-1, -1):
        return {}
    if not mask.is_causal or window[0] >= 0:
        return None
    if mask.is_top_left or sq == sk:
        return {"is_causal": True}
    if causal_lower_right is not None and sq < sk:
        return {"attn_mask": causal_lower_right(sq, sk)}
    return None


def _flags(q, k, v, spec: AttentionSpec, scale: float, alibi, sq: int, sk: int) -> torch.Tensor:
    """q, k, v in bhsd; everything SDPA itself can express."""
    kwargs = {"dropout_p": spec.dropout_p, "scale": scale}
    if spec.gqa:
        if HAS_ENABLE_GQA:
            kwargs["enable_gqa"] = True
        else:
            k, v = _expand_heads(k, v, q.shape[1])
    mask, window = spec.attn_mask_type, spec.window_size
    flags = None if alibi is not None else mask_flags(mask, window, sq, sk)
    if flags is not None:
        return F.scaled_dot_product_attention(q, k, v, **flags, **kwargs)
    ok, rows, every_row = allowed_keys(mask, window, sq, sk, q.device)
    if not every_row:
        ok = ok | ~rows[:, None]  # let empty rows see everything, then zero them below
    attn_mask = ok
    if alibi is not None:
        attn_mask = _alibi_bias(alibi, mask, sq, sk, q.dtype).to(q.dtype).masked_fill(~ok, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)
    return out if every_row else out * rows[:, None].to(out.dtype)


def _math(q, k, v, spec: AttentionSpec, scale: float, alibi, sink, sq: int, sk: int) -> torch.Tensor:
    """Softcap and learnable sink, in float32 (float64 for float64 inputs), from the definition (FA4
    `learnable_sink`: the sink logit joins the softmax denominator only)."""
    k, v = _expand_heads(k, v, q.shape[1])
    compute = _compute_dtype(q.dtype)
    s = torch.einsum("bhid,bhjd->bhij", q.to(compute), k.to(compute)) * scale
    if spec.softcap > 0:
        s = spec.softcap * torch.tanh(s / spec.softcap)
    if alibi is not None:
        s = s + _alibi_bias(alibi, spec.attn_mask_type, sq, sk, q.dtype)
    ok, rows, every_row = allowed_keys(spec.attn_mask_type, spec.window_size, sq, sk, q.device)
    if not every_row:
        ok = ok | ~rows[:, None]
    s = s.masked_fill(~ok, float("-inf"))
    if sink is not None:
        column = sink.to(compute)[None, :, None, None].expand(s.shape[0], -1, sq, 1)
        p = torch.softmax(torch.cat([s, column], -1), -1)[..., :sk]
    else:
        p = torch.softmax(s, -1)
    if spec.dropout_p > 0:
        p = F.dropout(p, spec.dropout_p)
    out = torch.einsum("bhij,bhjd->bhid", p, v.to(compute))
    if not every_row:
        out = out * rows[:, None].to(out.dtype)
    return out.to(q.dtype)


def dense(q, k, v, spec: AttentionSpec, scale: float, alibi=None, sink=None) -> torch.Tensor:
    """One fixed-length batch, `bshd` in and out."""
    sq, sk = q.shape[1], k.shape[1]
    if q.shape[0] == 0 or sq == 0:
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    if spec.fp8:  # SDPA takes no FP8; FA4's FP8 output is bf16 too (iface@b36:925)
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if sk == 0:
        return q.new_zeros(q.shape[0], sq, q.shape[1], v.shape[-1]) + 0 * q.sum()
    if spec.softcap > 0 or sink is not None:
        out = _math(q, k, v, spec, scale, alibi, sink, sq, sk)
    else:
        out = _flags(q, k, v, spec, scale, alibi, sq, sk)
    return out.transpose(1, 2)


def fast_kwargs(spec: AttentionSpec, scale: float) -> dict | None:
    """SDPA keyword arguments for a fixed-length call SDPA's flags express as they are, or None.

    Decided once per plan, so the hot path is one SDPA call between two transposes.
    """
    sq, sk, mask = spec.seqlen_q, spec.seqlen_kv, spec.attn_mask_type
    if spec.varlen or spec.fp8 or spec.alibi or spec.learnable_sink or spec.softcap > 0 or sq == 0 or sk == 0:
        return None
    if spec.gqa and not HAS_ENABLE_GQA:
        return None
    kwargs = {"enable_gqa": True} if spec.gqa else {}
    if spec.dropout_p > 0:
        kwargs["dropout_p"] = spec.dropout_p
    if scale != spec.head_dim_qk ** -0.5:
        kwargs["scale"] = scale
    flags = mask_flags(mask, spec.window_size, sq, sk)
    return None if flags is None else {**kwargs, **flags}


def allowed_backends(excluded: tuple[str, ...]) -> list[SDPBackend]:
    """The `sdpa_kernel` list for a call that must not use the `excluded` kernels: every other one,
    and math always (it runs every call, so torch always has a kernel left).

    >>> allowed_backends(("flash",))
    [<SDPBackend.CUDNN_ATTENTION: 3>, <SDPBackend.EFFICIENT_ATTENTION: 2>, <SDPBackend.MATH: 0>]
    """
    return [backend for name, backend in SDP_BACKENDS.items() if name not in excluded or name == "math"]


def restricted(run, backends: list[SDPBackend]):
    """`run` with torch kept to `backends`; the list is fixed here, once per plan. `run.backends`
    says which (the tests read it). `sdpa_kernel` sets and restores every kernel flag, 13.7 us a call
    measured on the CPU VM (torch 2.13): paid only by calls that must keep a kernel out."""
    def run_restricted(q, k, v, varlen=None, alibi_slopes=None, learnable_sink=None):
        with sdpa_kernel(backends):
            return run(q, k, v, varlen, alibi_slopes, learnable_sink)
    run_restricted.backends = backends
    return run_restricted


def guarded(run):
    """`run`, unless the process activates another flash impl after this plan was bound (the
    decision read the one active then, runtime/local_env.py): then flash is kept out, since
    nothing checked the new impl's rules for this call. One registry read a call (~30 ns)."""
    bound, live = current_flash_attention_impl(), current_flash_attention_impl
    fallback = restricted(run, allowed_backends(("flash",)))

    def run_guarded(q, k, v, varlen=None, alibi_slopes=None, learnable_sink=None):
        impl = live()
        if impl is None or impl == bound:  # None: torch's own FA2 again, which no rule refuses
            return run(q, k, v, varlen, alibi_slopes, learnable_sink)
        return fallback(q, k, v, varlen, alibi_slopes, learnable_sink)
    return run_guarded


def bind(spec: AttentionSpec, scale: float, excluded: tuple[str, ...] = ()):
    """`run` for `spec`, kept off the SDPA kernels the decision excluded (`Decision.sdpa_excluded`:
    flash, where torch's registry made it a refused FA4)."""
    run = _bind(spec, scale)
    if excluded:
        return restricted(run, allowed_backends(excluded))
    if current_flash_attention_impl is None or not spec.on_cuda:  # the registry swaps CUDA kernels only
        return run
    return guarded(run)


def _bind(spec: AttentionSpec, scale: float):
    fast = fast_kwargs(spec, scale)
    sdpa = F.scaled_dot_product_attention

    def run(q, k, v, varlen=None, alibi_slopes=None, learnable_sink=None):
        if fast is not None and varlen is None:
            return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **fast).transpose(1, 2)
        if varlen is None:
            return dense(q, k, v, spec, scale, alibi_slopes, learnable_sink)
        outs, oq, ok = [], 0, 0
        for index, (lq, lk) in enumerate(zip(varlen.lens_q, varlen.lens_kv)):
            alibi = alibi_slopes
            if alibi is not None and alibi.dim() == 2:
                alibi = alibi[index:index + 1]
            outs.append(dense(q[None, oq:oq + lq], k[None, ok:ok + lk], v[None, ok:ok + lk], spec, scale,
                              alibi, learnable_sink)[0])
            oq, ok = oq + lq, ok + lk
        return torch.cat(outs, 0) if outs else q.new_zeros(0, q.shape[1], v.shape[-1])
    return run
