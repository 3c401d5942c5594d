"""The levels are generated from the backends' own rules, so they follow the rules exactly."""

from __future__ import annotations

import pytest

from fa4doctor.dispatch.backends import PRIORITY
from fa4doctor.dispatch.backends.fa4 import head_dim_problem
from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec, Dtype, SpecError
from fa4doctor.environment import Environment, GpuFacts
from fa4doctor.smoke.cases import (LEVELS, MAX_SEQLEN, THOROUGH_HEAD_DIMS, parse_head_dims,
                                         plan_cases, user_specs)
from ledger_helpers import flat_entry

from .conftest import H100, fa4_env

B200 = GpuFacts(name="NVIDIA B200", compute_capability=(10, 0), cuda_index=0, uuid="GPU-b200")
A100 = GpuFacts(name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0), cuda_index=0, uuid="GPU-a100")
FA4 = BackendName.FA4


def _fa4(cases):
    return [c for c in cases if c.backend is FA4]


@pytest.mark.parametrize("gpu", [H100, B200], ids=["sm90", "sm100"])
def test_thorough_is_every_head_dim_fa4_takes_on_the_arch(gpu):
    env = fa4_env(gpu=gpu)
    cases = _fa4(plan_cases(env, "thorough", gpu=gpu, backends=[FA4]))
    major = gpu.compute_capability[0]
    expected = [d for d in THOROUGH_HEAD_DIMS if head_dim_problem(d, d, major, Dtype.BF16, True, False) is None]
    assert sorted({c.spec.head_dim_qk for c in cases}) == expected
    assert len(cases) == 2 * len(expected)  # causal and not
    assert {c.spec.attn_mask_type.value for c in cases} == {"causal", "no_mask"}
    assert all(c.spec.training for c in cases)  # forward and backward
    if major == 9:
        assert len(cases) == 64  # the "about 64 configurations" on an H100


def test_sm80_fa4_has_no_backward_so_cases_are_forward_only():
    cases = _fa4(plan_cases(fa4_env(gpu=A100), "quick", gpu=A100, backends=[FA4]))
    assert [c.spec.training for c in cases] == [False]


def test_standard_keeps_what_the_rules_accept_on_the_gpu():
    cases = plan_cases(fa4_env(), "standard", gpu=H100)
    names = {c.name for c in cases}
    assert len(names) == len(cases)
    fa4 = _fa4(cases)
    masks = {c.spec.attn_mask_type.value for c in fa4}
    assert masks >= {"no_mask", "causal", "causal_bottom_right", "padding", "padding_causal"}
    assert any(c.spec.gqa for c in fa4) and any(c.spec.mla for c in fa4) and any(c.spec.has_window for c in fa4)
    assert {c.spec.dtype for c in fa4} == {Dtype.BF16, Dtype.FP16}
    # Every SDPA case is there too: the fallback must accept every valid spec.
    assert len([c for c in cases if c.backend is BackendName.SDPA]) == len(fa4)


def test_uninstalled_backends_and_cpu_tensors_plan_nothing_for_them():
    assert plan_cases(Environment(gpus=(H100,)), "quick", gpu=H100, backends=[FA4]) == []
    cpu = plan_cases(fa4_env(), "standard", device="cpu")
    assert cpu and {c.backend for c in cpu} == {BackendName.SDPA}


def test_a_past_failure_in_the_ledger_never_hides_a_case():
    from fa4doctor.environment import LedgerEntry
    from fa4doctor.dispatch.vetting import fingerprint

    env = fa4_env()
    entry = flat_entry(backend=FA4, fingerprint=fingerprint(FA4, env, H100), case="x", dtype="bf16", head_dim_qk=128, head_dim_v=128, attn_mask_type="causal", window=False, direction="bwd", outcome="crash")
    assert _fa4(plan_cases(env.with_ledger((entry,)), "quick", gpu=H100)) == _fa4(plan_cases(env, "quick", gpu=H100))


def test_user_shapes_are_added_and_shrunk():
    big = AttentionSpec(head_dim_qk=96, num_heads_q=32, num_heads_kv=8, seqlen_q=1024, seqlen_kv=8192,
                        attn_mask_type="causal_bottom_right")
    (small, extra) = user_specs([big], [(192, 128)])
    assert max(small.seqlen_q, small.seqlen_kv) == MAX_SEQLEN and small.seqlen_q < small.seqlen_kv
    assert (small.head_dim_qk, small.num_heads_q, small.num_heads_kv) == (96, 32, 8)
    assert (extra.head_dim_qk, extra.head_dim_v) == (192, 128)
    cases = plan_cases(fa4_env(), "quick", gpu=H100, backends=[FA4], extra_specs=[big], head_dims=[(64, 64)])
    assert {c.spec.head_dim_qk for c in cases} == {128, 96, 64}


def test_head_dims_parse_and_errors():
    assert parse_head_dims("64, 128,192x128") == ((64, 64), (128, 128), (192, 128))
    with pytest.raises(SpecError, match="head_dims: 'x1'"):
        parse_head_dims("x1")
    with pytest.raises(SpecError, match="positive"):
        parse_head_dims("0")
    with pytest.raises(SpecError, match="valid: quick, standard, thorough"):
        plan_cases(Environment(), "deep")
    from fa4doctor.cli import smoke as smoke_cli

    # The CLI repeats levels and backends so that `--help` loads no smoke code: the copies must not drift.
    assert LEVELS == smoke_cli.SMOKE_LEVELS == ("quick", "standard", "thorough")
    assert smoke_cli.BACKENDS == tuple(b.NAME.value for b in PRIORITY)


def test_decode_specs_keep_their_real_shape_and_standard_has_decode_cases():
    """FA4 picks its decode kernel by KV length and batch x KV heads, so a decode spec is run as given."""
    decode = AttentionSpec(seqlen_q=1, seqlen_kv=16384, num_heads_q=32, num_heads_kv=8, training=False,
                           attn_mask_type="causal_bottom_right")
    (kept,) = user_specs([decode])
    assert kept == decode
    standard = [c.spec for c in plan_cases(fa4_env(), "standard", gpu=H100, backends=["fa4"])]
    decodes = [s for s in standard if s.seqlen_q == 1]
    assert decodes and all(not s.training for s in decodes) and any(s.gqa for s in decodes)
