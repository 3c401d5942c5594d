"""The canonical mask and window, translated into FlashAttention's bottom-right convention.

Canonical meaning (TransformerEngine's): query i may see key j when
`i + d - left <= j <= i + d + right` (an unbounded side is -1), and for causal masks also
`j <= i + d`, where the diagonal offset d is 0 for top-left masks (`causal`, `padding_causal`)
and `seqlen_kv - seqlen_q` for every other mask. FA2 >= 2.1, FA3 and FA4 always use
d = `seqlen_kv - seqlen_q` (FA2 README "2.1: change behavior of causal flag";
docs/sources.md#causal-alignment).

`fa_mask` returns the FA call that keeps exactly the canonical key set, or None when FA cannot
express it. Both the backend rules (to refuse) and the adapters (to call) use it.

>>> fa_mask(AttentionSpec(seqlen_q=256, seqlen_kv=128, attn_mask_type="causal"))
FaMask(causal=False, left=None, right=128)
>>> fa_mask(AttentionSpec(seqlen_q=128, seqlen_kv=256, attn_mask_type="causal")) is None
True
>>> fa_mask(AttentionSpec(seqlen_q=128, seqlen_kv=256, attn_mask_type="causal"), negative_sides=True)
FaMask(causal=False, left=None, right=-128)
"""

from __future__ import annotations

from dataclasses import dataclass

from fa4doctor.dispatch.spec import AttentionSpec


@dataclass(frozen=True, slots=True)
class FaMask:
    """FA's `causal` flag and window sides: None is unbounded (never -1); a negative side is a
    literal bound, which only `negative_sides` backends are given."""

    causal: bool
    left: int | None
    right: int | None

    @property
    def windowed(self) -> bool:
        """The call needs FA's `window_size` (a bounded side beyond what `causal` implies)."""
        return self.left is not None or (self.right is not None and not self.causal)


def _side(value: int) -> int | None:
    return None if value < 0 else value


def fa_mask(spec: AttentionSpec, negative_sides: bool = False) -> FaMask | None:
    """FA's flags for `spec`; `negative_sides` says the backend reads a negative window side as a
    literal bound (FA4 >= 4.0.0b30) instead of as "unbounded" (FA2, FA3, older FA4)."""
    left, right = spec.window_size
    if not spec.top_left_misaligned:
        if spec.attn_mask_type.is_causal:
            return FaMask(causal=True, left=_side(left), right=0)
        return FaMask(causal=False, left=_side(left), right=_side(right))
    # Top-left causal with seqlen_q != seqlen_kv: shift the diagonal by s = seqlen_kv - seqlen_q.
    # The right edge j <= i becomes window right = -s and a left bound L becomes L + s. FA2/FA3 read
    # any negative side as unbounded; FA4 >= b30 reads it literally (its _resolve_causal_local_window
    # only drops a window whose two sides sum below 0, and here they sum to L >= 0), checked on an
    # H100: docs/validation/h100-recon.txt. Per-sequence shifts of a variable-length batch cannot
    # be one window.
    if spec.varlen:
        return None
    shift = spec.seqlen_kv - spec.seqlen_q
    new_left = None if left < 0 else left + shift
    if not negative_sides and (shift > 0 or (new_left is not None and new_left < 0)):
        return None
    return FaMask(causal=False, left=new_left, right=-shift)
