"""What the fake FA modules share: a call log, and FA-convention attention in float64.

FA conventions (docs/sources.md#causal-alignment, #fa4-window-sides): the diagonal is always bottom-right
(d = sk - sq); key j is kept iff `i + d - left <= j <= i + d + right`, an unbounded side being
None (FA4) or -1 (FA2/FA3, where `(-1, 0)` also means causal); FA4 from b30 reads a negative side
literally, so a -1 that reaches it masks everything, as on a real H100.
"""

from __future__ import annotations

import math

import torch

CALLS: list[dict] = []


def record(backend: str, function: str, args: tuple, kwargs: dict) -> None:
    CALLS.append({"backend": backend, "function": function, "args": args, "kwargs": dict(kwargs)})


def _sequence(q, k, v, causal, left, right, scale, softcap, slopes, sink):
    sq, heads, sk = q.shape[0], q.shape[1], k.shape[0]
    group = heads // k.shape[1]
    d = sk - sq
    i = torch.arange(sq)[:, None]
    j = torch.arange(sk)[None, :]
    keep = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        keep &= j <= i + d
    if left is not None:
        keep &= j >= i + d - left
    if right is not None:
        keep &= j <= i + d + right
    kk = k.double().repeat_interleave(group, 1)
    vv = v.double().repeat_interleave(group, 1)
    s = torch.einsum("ihd,jhd->hij", q.double(), kk) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if slopes is not None:
        s = s - slopes.double()[:, None, None] * (i + d - j).abs().double()
    s = s.masked_fill(~keep, -math.inf)
    top = s.amax(-1, keepdim=True).clamp(min=-1e30)
    if sink is not None:
        top = torch.maximum(top, sink.double()[:, None, None].expand_as(top))
    e = torch.exp(s - top) * keep
    den = e.sum(-1, keepdim=True)
    if sink is not None:
        den = den + torch.exp(sink.double()[:, None, None] - top)
    p = e / torch.where(den > 0, den, torch.ones_like(den))
    return torch.einsum("hij,jhd->ihd", p, vv)


def attend(q, k, v, *, causal, left, right, scale, softcap=0.0, alibi=None, sink=None,
           cu_q=None, cu_k=None):
    """bshd (4-D) or thd with cu_q/cu_k; returns the input dtype."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    def slopes(b):
        return None if alibi is None else (alibi if alibi.dim() == 1 else alibi[b])
    if cu_q is not None:
        oq, ok = cu_q.tolist(), cu_k.tolist()
        outs = [_sequence(q[oq[b]:oq[b + 1]], k[ok[b]:ok[b + 1]], v[ok[b]:ok[b + 1]], causal, left, right,
                          scale, softcap, slopes(b), sink) for b in range(len(oq) - 1)]
        return torch.cat(outs, 0).to(q.dtype)
    outs = [_sequence(q[b], k[b], v[b], causal, left, right, scale, softcap, slopes(b), sink)
            for b in range(q.shape[0])]
    return torch.stack(outs, 0).to(q.dtype)


def check_varlen(cu_q, cu_k, max_q, max_k) -> None:
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if cu.dtype is not torch.int32:
            raise RuntimeError(f"{name} must have dtype int32")
    for name, value in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if not isinstance(value, int):
            raise TypeError(f"{name} must be a Python int in this fake, got {type(value).__name__}")
