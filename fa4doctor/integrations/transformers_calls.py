"""One transformers attention call translated for the dispatcher, never approximated: bhsd in, bshd
out; a padded batch packed to `thd` with `cu_seqlens` and scattered back (docs/transformers.md).
`fa4doctor.integrations.transformers` hands each layer's call here, in eager mode directly and
under torch.compile from inside its custom op (`transformers_ops`).

>>> _offsets(torch.tensor([3, 1])).tolist()
[0, 3, 4]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fa4doctor.dispatch.spec import SpecError
from fa4doctor.names import DispatchError
from fa4doctor.runtime.inputs import put_rows, take_rows
from fa4doctor.runtime.tensor_memo import TensorMemo


class AttentionRefused(ValueError):
    """A transformers attention call fa4doctor cannot run exactly; names the layer."""

    def __init__(self, what: str, layer: int | None = None, module: str | None = None):
        self.layer = layer
        where = f"layer {layer if layer is not None else '?'} ({module})" if module else "mask"
        super().__init__(f"fa4doctor: {where}: {what}; no backend runs this exactly, so it is refused "
                         "rather than changed (attn_implementation=\"eager\" runs it)")


def _contiguous(keep: torch.Tensor) -> bool:
    """Every row's valid positions form one run (left or right padding, never holes)."""
    index = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    first = torch.where(keep, index, keep.shape[1]).amin(1)
    last = torch.where(keep, index, -1).amax(1)
    count = keep.sum(1)
    return bool(((count == 0) | (last - first + 1 == count)).all())


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


@dataclass(frozen=True)
class _Packing:
    """Where one padding mask's valid tokens are, as `_padded` packs them: index tensors for the
    gather and scatter (no host sync to use them) and the `thd` offsets and maxima."""

    rows_q: torch.Tensor  # batch * seqlen_q + position of each valid query, in order
    rows_k: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int


# transformers hands every layer of a forward the same mask tensor, and reading a mask waits for the
# device several times (its runs, the index tensors, the maxima): one packing per mask.
_PACKINGS = TensorMemo(limit=8)  # a forward's full and sliding masks, with room


def _packing(mask: torch.Tensor, seqlen_q: int) -> _Packing:
    kept = _PACKINGS.get(mask, seqlen_q)
    if kept is not None:
        return kept
    keep_k = mask.to(torch.bool)
    keep_q = keep_k[:, -seqlen_q:]
    if not _contiguous(keep_k):
        raise SpecError("attention_mask", "a padding mask with holes (valid tokens must be one run per row)")
    lens_q, lens_k = keep_q.sum(1), keep_k.sum(1)
    packing = _Packing(keep_q.reshape(-1).nonzero().squeeze(1), keep_k.reshape(-1).nonzero().squeeze(1),
                       _offsets(lens_q), _offsets(lens_k), int(lens_q.max()), int(lens_k.max()))
    return _PACKINGS.put(mask, packing, seqlen_q)


def _padded(run, q, k, v, mask: torch.Tensor, causal: bool, call: dict[str, Any]) -> torch.Tensor:
    """Valid tokens packed to `thd`, run, and put back; queries are the last seqlen_q keys."""
    if mask.dim() != 2 or mask.shape[1] != k.shape[1]:
        raise SpecError("attention_mask", f"a mask of shape {tuple(mask.shape)} for {k.shape[1]} keys; "
                        "fa4doctor reads 2D padding masks (batch, keys) only")
    pack = _packing(mask, q.shape[1])
    out = run(
        take_rows(q, pack.rows_q), take_rows(k, pack.rows_k), take_rows(v, pack.rows_k), qkv_format="thd",
        attn_mask_type="padding_causal_bottom_right" if causal else "padding",
        cu_seqlens_q=pack.cu_q, cu_seqlens_kv=pack.cu_k, max_seqlen_q=pack.max_q, max_seqlen_kv=pack.max_k, **call)
    return put_rows(out, pack.rows_q, q)


def attend(run, query, key, value, mask: torch.Tensor | None, sink: torch.Tensor | None, causal: bool,
           sliding_window: int | None, scaling: float | None, softcap: float, deterministic: bool, dropout: float,
           layer: int | None, module: str) -> torch.Tensor:
    """One layer's call through `run` (the dispatcher's `attention` or `recompute`), bhsd in, bshd out."""
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    window = None if sliding_window is None else (int(sliding_window) - 1, 0)
    call = {"window_size": window, "softmax_scale": scaling, "dropout_p": dropout, "softcap": softcap,
            "learnable_sink": sink, "deterministic": deterministic}
    try:
        if mask is not None:
            return _padded(run, q, k, v, mask, causal, call)
        mask_type = ("causal" if q.shape[1] == k.shape[1] else "causal_bottom_right") if causal else "no_mask"
        return run(q, k, v, attn_mask_type=mask_type, **call)
    except (SpecError, DispatchError) as exc:
        raise AttentionRefused(str(exc), layer, module) from exc
