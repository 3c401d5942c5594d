"""Attention from its definition, in float64, and how far a kernel may stray from it.

The reference follows fa4doctor's canonical semantics (docs/runtime.md, `dispatch/semantics.py`): query
i sees key j when `i + d - left <= j <= i + d + right`, and for causal masks also `j <= i + d`,
with d = 0 for top-left masks and `seqlen_kv - seqlen_q` for all others; a row that sees no key
gives 0. Variable-length batches are computed one sequence at a time.

Tolerance: FA4's own tests judge a kernel against a reference computed in low precision, not
against an absolute bound (flash-attention `tests/cute/test_flash_attn.py`: the kernel's error
must be within `rtol` times the error of a plain PyTorch attention run in the input dtype, plus a
rounding allowance). The rule here is our own version of that idea, per tensor (out, dq, dk, dv):

    error(kernel) <= RTOL * error(low-precision reference) + 2 * u(dtype) * max|reference|

where error is the largest absolute difference from the float64 reference, the low-precision
reference is the same definition evaluated in the input dtype (scores, softmax and products
rounded to it), and u is the dtype's unit roundoff: one rounding of the result into the dtype
already costs `u * |value|`, twice that is the allowance. The scale therefore follows the dtype,
the head dim and the sequence lengths of the problem, as a naive implementation's error does.

>>> import torch
>>> q = k = v = torch.ones(1, 4, 1, 8, dtype=torch.float64)
>>> float(attention(q, k, v, attn_mask_type="causal")[0, 3, 0, 0])
1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Unit roundoff 2**-(mantissa bits + 1) (IEEE 754; bf16 keeps 7 explicit mantissa bits, fp16 10).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24,
                 torch.float64: 2.0 ** -53}
RTOL = 2.0
RTOL_SOFTCAP = 3.0  # tanh adds a rounding step the low-precision reference does not amplify alike


def allowed(seqlen_q: int, seqlen_kv: int, mask: str, window: tuple[int, int],
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_kv): which keys each query may see, canonical semantics."""
    causal = "causal" in mask
    top_left = causal and not mask.endswith("bottom_right")
    diagonal = 0 if top_left else seqlen_kv - seqlen_q
    i = torch.arange(seqlen_q, device=device).unsqueeze(1) + diagonal
    j = torch.arange(seqlen_kv, device=device).unsqueeze(0)
    keep = torch.ones(seqlen_q, seqlen_kv, dtype=torch.bool, device=device)
    left, right = window
    if left >= 0:
        keep &= j >= i - left
    if right >= 0:
        keep &= j <= i + right
    if causal:
        keep &= j <= i
    return keep


def _dense(q, k, v, keep, scale, softcap, compute_dtype):
    # q (sq, h, d), k/v (sk, hk, d); GQA by repeating kv heads, as grouped attention means.
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).to(compute_dtype)
    v = v.repeat_interleave(groups, dim=1).to(compute_dtype)
    q = q.to(compute_dtype)
    scores = torch.einsum("qhd,khd->hqk", q * scale, k)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row that sees no key gives 0
    return torch.einsum("hqk,khd->qhd", probs.to(compute_dtype), v)


def attention(q, k, v, *, attn_mask_type="no_mask", window_size=(-1, -1), softmax_scale=None,
              softcap=0.0, cu_seqlens_q=None, cu_seqlens_kv=None, compute_dtype=torch.float64):
    """Attention by definition, `bshd` (or `thd` with `cu_seqlens_*`), computed in `compute_dtype`.

    Differentiable, so gradients of the reference come from autograd.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    window = tuple(window_size) if window_size is not None else (-1, -1)
    if cu_seqlens_q is None:
        keep = allowed(q.shape[1], k.shape[1], attn_mask_type, window, q.device)
        return torch.stack([_dense(q[b], k[b], v[b], keep, scale, softcap, compute_dtype)
                            for b in range(q.shape[0])])
    outs = []
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_kv.tolist()
    for b in range(len(bounds_q) - 1):
        qs, ks = slice(bounds_q[b], bounds_q[b + 1]), slice(bounds_k[b], bounds_k[b + 1])
        keep = allowed(qs.stop - qs.start, ks.stop - ks.start, attn_mask_type, window, q.device)
        outs.append(_dense(q[qs], k[ks], v[ks], keep, scale, softcap, compute_dtype))
    return torch.cat(outs)


@dataclass(frozen=True, slots=True)
class Check:
    """One tensor judged: the kernel's largest error from float64, and what it was allowed."""

    tensor: str
    error: float
    tolerance: float
    reference_error: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance  # NaN compares False: a NaN output is never ok

    def describe(self) -> str:
        return f"{self.tensor} max error {self.error:.3g} > tolerance {self.tolerance:.3g}"


def tolerance(reference: torch.Tensor, low_precision: torch.Tensor, dtype: torch.dtype,
              softcap: float = 0.0) -> tuple[float, float]:
    """(tolerance, low-precision reference error) for one tensor."""
    reference_error = (low_precision.to(torch.float64) - reference).abs().max().item()
    rtol = RTOL_SOFTCAP if softcap else RTOL
    allowance = 2 * UNIT_ROUNDOFF[dtype] * reference.abs().max().item()
    return rtol * reference_error + allowance, reference_error


def judge(tensor: str, result: torch.Tensor, reference: torch.Tensor, low_precision: torch.Tensor,
          dtype: torch.dtype, softcap: float = 0.0) -> Check:
    """Compare a kernel's `result` with the float64 `reference` under the rule above."""
    tol, reference_error = tolerance(reference, low_precision, dtype, softcap)
    diff = (result.to(torch.float64) - reference).abs()
    error = float("nan") if torch.isnan(diff).any() else diff.max().item()
    return Check(tensor, error, tol, reference_error)
