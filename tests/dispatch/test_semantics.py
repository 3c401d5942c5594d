"""`fa_mask`: the FA (bottom-right) call that keeps exactly the canonical key set, checked by enumeration."""

from __future__ import annotations

import itertools

import pytest

from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.semantics import FaMask, fa_mask
from fa4doctor.dispatch.spec import AttentionSpec, MaskType

from .dispatch_envs import codes, only

NON_ARBITRARY = [m for m in MaskType if m is not MaskType.ARBITRARY]
SIDES = (-1, 0, 1, 2, 5)


def canonical(mask: MaskType, window: tuple[int, int], sq: int, sk: int) -> set[tuple[int, int]]:
    """TransformerEngine's meaning, written from its definition (docs/runtime.md, spec docstring)."""
    top_left = mask in (MaskType.CAUSAL, MaskType.PADDING_CAUSAL)
    d = 0 if top_left else sk - sq
    left, right = window
    keep = set()
    for i, j in itertools.product(range(sq), range(sk)):
        if "causal" in mask.value and j > i + d:
            continue
        if left >= 0 and j < i + d - left:
            continue
        if right >= 0 and j > i + d + right:
            continue
        keep.add((i, j))
    return keep


def flash(call: FaMask, sq: int, sk: int) -> set[tuple[int, int]]:
    """What FA2 >= 2.1, FA3 and FA4 keep: always the bottom-right diagonal (docs/sources.md#causal-alignment)."""
    d = sk - sq
    return {(i, j) for i, j in itertools.product(range(sq), range(sk))
            if not (call.causal and j > i + d)
            and not (call.left is not None and j < i + d - call.left)
            and not (call.right is not None and j > i + d + call.right)}


@pytest.mark.parametrize("mask", NON_ARBITRARY)
def test_fa_mask_keeps_exactly_the_canonical_pairs(mask):
    translated = refused = 0
    for sq, sk, left, right in itertools.product(range(1, 7), range(1, 7), SIDES, SIDES):
        spec = AttentionSpec(seqlen_q=sq, seqlen_kv=sk, attn_mask_type=mask, window_size=(left, right),
                             varlen=mask.is_padding, same_seqlens=(sq == sk) if mask.is_padding else None)
        call = fa_mask(spec)
        if call is None:
            refused += 1
            assert spec.top_left_misaligned  # only top-left causal with sq != sk is ever refused
            continue
        translated += 1
        assert call.left is None or call.left >= 0  # None for unbounded, never FA2's -1 (docs/sources.md#fa4-window-sides)
        assert call.right is None or call.right >= 0
        assert flash(call, sq, sk) == canonical(mask, spec.window_size, sq, sk), (spec.short(), call)
    assert translated
    assert bool(refused) is mask.is_top_left


def test_top_left_with_more_queries_is_a_window():
    # sq > sk: top-left j <= i lies sq - sk keys right of FA's diagonal j <= i + (sk - sq).
    call = fa_mask(AttentionSpec(seqlen_q=6, seqlen_kv=4, attn_mask_type="causal"))
    assert call == FaMask(causal=False, left=None, right=2)
    assert fa_mask(AttentionSpec(seqlen_q=4, seqlen_kv=6, attn_mask_type="causal")) is None


def test_variable_length_top_left_is_refused_unless_every_sequence_is_square():
    ragged = AttentionSpec(attn_mask_type="padding_causal", varlen=True, same_seqlens=False)
    unknown = AttentionSpec(attn_mask_type="padding_causal", varlen=True)
    square = AttentionSpec(attn_mask_type="padding_causal", varlen=True, same_seqlens=True)
    assert fa_mask(ragged) is None and fa_mask(unknown) is None
    assert fa_mask(square) == FaMask(causal=True, left=None, right=0)


@pytest.mark.parametrize("backend", [BackendName.FA4, BackendName.FA3, BackendName.FA2])
@pytest.mark.parametrize("sq, sk, alibi, refused", [
    (128, 512, False, True), (512, 128, False, False), (512, 512, False, False), (512, 128, True, True)])
def test_causal_alignment_reason(backend, sq, sk, alibi, refused):
    spec = AttentionSpec(seqlen_q=sq, seqlen_kv=sk, attn_mask_type="causal", alibi=alibi)
    found = codes(backend, spec, only(backend))
    # The newest FA4 reads a negative window side literally, so seqlen_q < seqlen_kv translates too.
    literal = backend is BackendName.FA4 and not alibi
    assert (ReasonCode.CAUSAL_ALIGNMENT in found) is (refused and not literal)
    bottom_right = AttentionSpec(seqlen_q=sq, seqlen_kv=sk, attn_mask_type="causal_bottom_right", alibi=alibi)
    assert ReasonCode.CAUSAL_ALIGNMENT not in codes(backend, bottom_right, only(backend))


def test_a_translation_that_needs_a_window_needs_a_release_with_windows():
    spec = AttentionSpec(seqlen_q=512, seqlen_kv=128, attn_mask_type="causal", training=False)
    assert ReasonCode.CAUSAL_ALIGNMENT in codes(BackendName.FA2, spec, only(BackendName.FA2, version="2.2.1"))
    assert ReasonCode.CAUSAL_ALIGNMENT not in codes(BackendName.FA2, spec, only(BackendName.FA2, version="2.3.0"))


def test_sdpa_takes_top_left_as_it_is():
    spec = AttentionSpec(seqlen_q=128, seqlen_kv=512, attn_mask_type="padding_causal")
    assert codes(BackendName.SDPA, spec, only(BackendName.FA4)) == set()


@pytest.mark.parametrize("version, refused", [("4.0.0b29", True), ("4.0.0b30", False), ("4.0.0b36", False)])
def test_fa4_takes_negative_window_sides_from_b30(version, refused):
    spec = AttentionSpec(seqlen_q=128, seqlen_kv=512, attn_mask_type="causal", window_size=(64, -1))
    found = codes(BackendName.FA4, spec, only(BackendName.FA4, version=version))
    assert (ReasonCode.CAUSAL_ALIGNMENT in found) is refused


def test_negative_sides_keep_the_canonical_key_set():
    spec = AttentionSpec(seqlen_q=5, seqlen_kv=9, attn_mask_type="causal", window_size=(2, -1))
    mask = fa_mask(spec, negative_sides=True)
    assert mask == FaMask(causal=False, left=6, right=-4)
    shift = spec.seqlen_kv - spec.seqlen_q
    for i in range(spec.seqlen_q):
        for j in range(spec.seqlen_kv):
            canonical = i - 2 <= j <= i
            fa = i + shift - mask.left <= j <= i + shift + mask.right
            assert canonical == fa, (i, j)
