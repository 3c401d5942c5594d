"""Head dims per architecture, GQA, and the shape-specific known bugs."""

from __future__ import annotations

import math

import pytest

from fa4doctor.dispatch.backends.fa4 import SM100_HEAD_DIMS_SINCE
from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec, SpecError

from .dispatch_envs import codes, only, previous

R, B = ReasonCode, BackendName
HD = R.HEAD_DIM_UNSUPPORTED


def spec(hd, hd_v=None, **kw):
    return AttentionSpec(head_dim_qk=hd, head_dim_v=hd_v, **kw)


@pytest.mark.parametrize("dims, ok", [
    ((8, 8), True), ((256, 256), True), ((64, 64), True), ((96, 96), True), ((192, 128), True),
    ((264, 264), False), ((260, 260), False), ((4, 4), False), ((36, 36), False), ((100, 100), False),
    ((512, 512), False), ((128, 264), False),
])
@pytest.mark.parametrize("cc", [(9, 0), (8, 0), (12, 0)])
def test_fa4_head_dims_sm90_rule(dims, ok, cc):
    # iface@b36:121-139 on SM90 (measured on an H100: 36, 100, 260, 512 refused); SM8x/12x share it here.
    s = spec(*dims, training=False)
    assert (HD not in codes(B.FA4, s, only(B.FA4, cc))) is ok


@pytest.mark.parametrize("dims, ok", [
    ((8, 8), True), ((128, 128), True), ((128, 64), True), ((192, 128), True), ((64, 512), True),
    ((256, 256), True), ((136, 136), False), ((192, 192), False), ((160, 128), False), ((512, 512), False),
    ((96, 512), False), ((4, 4), False), ((120, 120), True), ((124, 124), False),
])
@pytest.mark.parametrize("cc", [(10, 0), (11, 0)])
def test_fa4_head_dims_sm100_rule(dims, ok, cc):
    s = spec(*dims, training=False)
    assert (HD not in codes(B.FA4, s, only(B.FA4, cc))) is ok


def test_fa4_fp8_needs_head_dims_divisible_by_16():
    env = only(B.FA4, (10, 0))
    assert HD not in codes(B.FA4, spec(64, dtype="fp8_e4m3", training=False), env)
    assert HD in codes(B.FA4, spec(72, dtype="fp8_e4m3", training=False), env)
    assert HD not in codes(B.FA4, spec(72, dtype="bf16", training=False), env)


@pytest.mark.parametrize("dims, since", sorted(SM100_HEAD_DIMS_SINCE.items()))
def test_fa4_sm100_head_dims_newer_than_b5(dims, since):

    s = spec(*dims, training=False)
    assert HD in codes(B.FA4, s, only(B.FA4, (10, 0), previous(since)))
    assert HD not in codes(B.FA4, s, only(B.FA4, (10, 0), since))


@pytest.mark.parametrize("seqlen_kv, ok", [(1024, True), (2048, False), (1, False)])
def test_fa4_sm100_hd256_cross_attention(seqlen_kv, ok):
    s = spec(256, seqlen_q=1024, seqlen_kv=seqlen_kv, training=False)  # TE utils.py:1026-1042
    assert (HD not in codes(B.FA4, s, only(B.FA4, (10, 0)))) is ok
    assert HD not in codes(B.FA4, s, only(B.FA4, (9, 0)))  # SM100 only


def _te_mla_bug(hd, hd_v):  # written from TE utils.py:1044-1069 (docs/sources.md#fa4-sm100-head-dim-exclusions)
    tile, tile_v = math.ceil(hd / 16) * 16, math.ceil(hd_v / 16) * 16
    return hd != hd_v and hd >= 128 and (tile_v // 2) % math.gcd(32, tile // 2) != 0


@pytest.mark.parametrize("dims", [(128, 96), (128, 112), (128, 64), (128, 32), (120, 96), (192, 128), (128, 8)])
def test_fa4_sm100_mla_backward_bug(dims):
    bug = _te_mla_bug(*dims)
    assert (128, 96) != dims or bug  # the example TE gives
    env = only(B.FA4, (10, 0))
    assert (HD in codes(B.FA4, spec(*dims), env)) is bug
    assert HD not in codes(B.FA4, spec(*dims, training=False), env)  # a backward bug only
    assert HD not in codes(B.FA4, spec(*dims), only(B.FA4, (9, 0)))  # SM100/110 only


@pytest.mark.parametrize("heads, dims, training, cc, ok", [
    ((16, 4), (192, 128), True, (9, 0), False),   # AssertionError measured on an H100 (docs/validation/h100-gpu-numerics.txt)
    ((16, 4), (192, 128), False, (9, 0), True),   # forward is fine
    ((16, 16), (192, 128), True, (9, 0), True),   # no GQA
    ((16, 4), (128, 128), True, (9, 0), True),    # equal head dims
    ((16, 4), (192, 128), True, (10, 0), True),   # SM90 only
])
def test_fa4_sm90_gqa_mla_backward(heads, dims, training, cc, ok):
    s = spec(*dims, num_heads_q=heads[0], num_heads_kv=heads[1], training=training)
    assert (R.GQA_UNSUPPORTED not in codes(B.FA4, s, only(B.FA4, cc))) is ok


@pytest.mark.parametrize("heads_q, heads_kv", [(6, 4), (16, 3), (1, 2)])
def test_gqa_divisibility_is_a_spec_error(heads_q, heads_kv):
    with pytest.raises(SpecError, match="num_heads_kv"):
        AttentionSpec(num_heads_q=heads_q, num_heads_kv=heads_kv)


@pytest.mark.parametrize("dims, training, dtype, ok", [
    ((256, 256), True, "bf16", True), ((264, 264), False, "bf16", False),
    ((192, 128), True, "bf16", True), ((160, 112), True, "bf16", True), ((192, 160), False, "bf16", False),
    ((128, 96), False, "bf16", False), ((64, 512), False, "bf16", True), ((64, 520), False, "bf16", False),
    ((64, 512), False, "fp8_e4m3", False), ((64, 256), False, "fp8_e4m3", True),
    ((100, 100), False, "bf16", True), ((100, 100), True, "bf16", False),  # backward needs % 8
])
def test_fa3_head_dims(dims, training, dtype, ok):
    s = spec(*dims, training=training, dtype=dtype)
    assert (HD not in codes(B.FA3, s, only(B.FA3))) is ok


@pytest.mark.parametrize("dims, cc, ok", [
    ((256, 256), (8, 0), True), ((250, 250), (8, 0), True), ((257, 257), (8, 0), False),
    ((192, 192), (8, 6), True), ((200, 200), (8, 6), False), ((200, 200), (8, 9), False),
    ((200, 200), (9, 0), True), ((200, 200), (10, 0), True), ((200, 200), (12, 0), True),
    ((200, 200), (12, 1), False), ((192, 128), (8, 6), True), ((256, 128), (8, 6), False),
    ((100, 100), (8, 0), True),  # FA2 pads to a multiple of 8 itself
])
def test_fa2_padded_head_dim(dims, cc, ok):
    s = spec(*dims, training=False)
    assert (HD not in codes(B.FA2, s, only(B.FA2, cc))) is ok
