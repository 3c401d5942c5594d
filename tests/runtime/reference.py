"""Attention from its definition, in float64: the yardstick every backend is measured against.

Written from the canonical meaning (docs/runtime.md): query i of a sequence with sq queries and sk keys
may see key j when the mask and window allow it, with the diagonal at i + d, where d = 0 for the
top-left masks (`causal`, `padding_causal`) and d = sk - sq for all others. Scores are
`scale * q.k`, then softcap `c * tanh(s / c)`, then ALiBi `-slope * |i + d - j|`; the sink adds
`exp(sink)` to the denominator only; a query with no allowed key outputs zeros. Never calls SDPA.
"""

from __future__ import annotations

import math

import torch

TOP_LEFT = ("causal", "padding_causal")


def allowed(mask: str, window: tuple[int, int], sq: int, sk: int) -> torch.Tensor:
    d = 0 if mask in TOP_LEFT else sk - sq
    left, right = window
    rows = []
    for i in range(sq):
        row = []
        for j in range(sk):
            ok = True
            if "causal" in mask and j > i + d:
                ok = False
            if left >= 0 and j < i + d - left:
                ok = False
            if right >= 0 and j > i + d + right:
                ok = False
            row.append(ok)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).reshape(sq, sk)


def _one(q, k, v, mask, window, scale, softcap, slopes, sink):
    """One sequence: q (sq, h, d), k/v (sk, hk, d) in float64 -> (sq, h, dv)."""
    sq, heads, sk = q.shape[0], q.shape[1], k.shape[0]
    group = heads // k.shape[1]
    d = 0 if mask in TOP_LEFT else sk - sq
    keep = allowed(mask, window, sq, sk).to(q.device)
    outs = []
    for h in range(heads):
        s = scale * q[:, h] @ k[:, h // group].T
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        if slopes is not None:
            distance = torch.tensor([[abs(i + d - j) for j in range(sk)] for i in range(sq)],
                                    dtype=torch.float64, device=q.device).reshape(sq, sk)
            s = s - slopes[h] * distance
        s = s.masked_fill(~keep, -math.inf)
        top = s.amax(-1, keepdim=True).clamp(min=-1e30)
        if sink is not None:
            top = torch.maximum(top, sink[h].expand_as(top))
        e = torch.exp(s - top) * keep
        denominator = e.sum(-1, keepdim=True)
        if sink is not None:
            denominator = denominator + torch.exp(sink[h] - top)
        p = e / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        outs.append(p @ v[:, h // group])
    return torch.stack(outs, 1)


def reference(q, k, v, *, mask="no_mask", window=(-1, -1), scale=None, softcap=0.0, alibi=None, sink=None,
              cu_q=None, cu_kv=None, qkv_format="bshd"):
    """Float64 output for bshd (optionally padded, with cu_q/cu_kv as lengths) or thd tensors."""
    q, k, v = (t.double() for t in (q, k, v))
    alibi = alibi.double() if alibi is not None else None
    sink = sink.double() if sink is not None else None
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if "causal" in mask:
        window = (window[0], 0)
    def slopes(b):
        return None if alibi is None else (alibi if alibi.dim() == 1 else alibi[b])
    if qkv_format == "thd":
        oq, ok, outs = cu_q.tolist(), cu_kv.tolist(), []
        for b in range(len(oq) - 1):
            outs.append(_one(q[oq[b]:oq[b + 1]], k[ok[b]:ok[b + 1]], v[ok[b]:ok[b + 1]], mask, window, scale,
                             softcap, slopes(b), sink))
        return torch.cat(outs, 0)
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])
    rows = []
    for b in range(q.shape[0]):
        lq = q.shape[1] if cu_q is None else int(cu_q[b + 1] - cu_q[b])
        lk = k.shape[1] if cu_kv is None else int(cu_kv[b + 1] - cu_kv[b])
        one = _one(q[b, :lq], k[b, :lk], v[b, :lk], mask, window, scale, softcap, slopes(b), sink)
        rows.append(torch.cat([one, one.new_zeros(q.shape[1] - lq, *one.shape[1:])], 0))
    return torch.stack(rows, 0) if rows else out


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative L2 error, as the H100 runs in docs/validation/ report it."""
    got, want = got.double(), want.double()
    scale = want.norm().item()
    return (got - want).norm().item() / (scale if scale > 0 else 1.0)
