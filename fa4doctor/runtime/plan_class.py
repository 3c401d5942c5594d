"""The class of calls that share one plan: everything their decision and bound adapter read.

`attention()` decides and binds once per class, so a new sequence length (dynamic padding, a
curriculum, evaluation at many lengths: issue 14) that the rules and the adapters read only
through its class reuses the plan instead of deciding and binding again (~190 us).

The rules (`dispatch.select`) and the adapters read every field of the `AttentionSpec` as it is,
but the sequence lengths only through these predicates:

- seqlen_q == seqlen_kv: a fixed-length batch's `same_seqlens`, hence `top_left_misaligned`
  (dispatch/backends/base.py `mask_reasons`, dispatch/backends/sdpa.py `kernels`); FA4's (256, 256)
  cross-attention refusal (dispatch/backends/fa4.py `head_dim_problem`); TE's causal
  cross-attention (dispatch/backends/te.py);
- which one is longer: SDPA's flags for a causal mask (runtime/adapters/sdpa.py `mask_flags`);
- seqlen_q == 1, a decode: the ledger class (dispatch/vetting.py `case_class`), so the evidence,
  known-bug lifting and the unvetted tally;
- an empty side: SDPA's adapter sends it to its dense path (runtime/adapters/sdpa.py `fast_kwargs`).

Two cases hold both lengths exactly, because a length is baked into what is bound: a top-left
causal mask over a fixed-length batch with seqlen_q != seqlen_kv, which FA runs as a window shifted
by seqlen_kv - seqlen_q (dispatch/semantics.py `fa_mask`: the FA adapters bind that window, and the
rules' refusal names both lengths), and a bottom-right causal mask with seqlen_q < seqlen_kv and no
left window, for which SDPA's adapter binds `causal_lower_right(seqlen_q, seqlen_kv)`. A
variable-length batch's lengths are its maxima, read as above; its per-sequence lengths reach the
adapter with every call (`inputs.Varlen`). The batch size is not in the spec at all.

tests/runtime/test_plan_class.py holds this to a fresh decision and a fresh output over random lengths.

>>> from fa4doctor.dispatch.spec import AttentionSpec
>>> lengths(AttentionSpec(seqlen_q=700, attn_mask_type="causal")) == lengths(AttentionSpec(seqlen_q=9))
True
>>> lengths(AttentionSpec(seqlen_q=128, seqlen_kv=512, attn_mask_type="causal"))
('exact', 128, 512)
"""

from __future__ import annotations

from dataclasses import fields

from fa4doctor.dispatch.policy import FASTEST, Policy
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import seqlen_bucket

_FIELDS = tuple(f.name for f in fields(AttentionSpec) if f.name not in ("seqlen_q", "seqlen_kv"))


def _baked(spec: AttentionSpec) -> bool:
    """Whether a bound adapter holds a length itself (the two exact cases of the module docstring)."""
    mask, q, kv = spec.attn_mask_type, spec.seqlen_q, spec.seqlen_kv
    if spec.varlen or not mask.is_causal or q == kv:
        return False
    if mask.is_top_left:
        return True  # fa_mask's window, shifted by kv - q
    return q < kv and spec.window_size[0] < 0  # sdpa.mask_flags: causal_lower_right(q, kv)


def lengths(spec: AttentionSpec) -> tuple:
    """The sequence lengths as the rules and the adapters read them."""
    q, kv = spec.seqlen_q, spec.seqlen_kv
    if _baked(spec):
        return ("exact", q, kv)
    return ((q > kv) - (q < kv), q == 1, q == 0, kv == 0)


def lengths_free(spec: AttentionSpec, policy: Policy) -> bool:
    """Whether the class's plan serves any lengths that `lengths` reads alike: no length bound in its
    adapter, and no speed bucket read (`FASTEST`). The compiled hit path then keeps one entry for
    every length of the class (runtime/native/hit.cpp `lengths_free`).

    >>> lengths_free(AttentionSpec(seqlen_q=700, attn_mask_type="causal"), Policy())
    True
    """
    return not spec.varlen and not _baked(spec) and policy.order != FASTEST


def plan_class(spec: AttentionSpec, scale: float, gpu: int | None, policy: Policy) -> tuple:
    """What `select` and `bind` are given, with the lengths reduced to `lengths(spec)`. Under
    `FA4DOCTOR_POLICY=fastest` the rules also read each length's speed bucket (dispatch/speed.py
    `shape_class`: the speed records are per power-of-two length), so the class holds those too."""
    buckets = (seqlen_bucket(spec.seqlen_q), seqlen_bucket(spec.seqlen_kv)) if policy.order == FASTEST else None
    return (tuple(getattr(spec, name) for name in _FIELDS), lengths(spec), buckets, scale, gpu, policy)
