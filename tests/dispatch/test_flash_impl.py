"""SDPA's flash kernel is FA4 where torch's registry (torch >= 2.12) activated FA4: then it is held to
FA4's rules and ledger, so a fallback from FA4 never runs FA4 (torch/nn/attention/_fa4.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fa4doctor.dispatch.backends.sdpa import excluded_kernels, flash_impl_reasons, kernels
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import BackendName, ReasonCode, decision_to_plain
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import Environment, LedgerEntry, TorchInfo

from .dispatch_envs import make_env

FA4 = BackendName.FA4
SPEC = AttentionSpec(dtype="bf16", head_dim_qk=128, attn_mask_type="causal", training=True, device="cuda")


def with_flash(env: Environment, impl: str | None, registry: bool = True) -> Environment:
    return replace(env, torch=replace(env.torch, flash_registry=registry,
                                      flash_impls=("FA3", "FA4") if registry else (), flash_impl=impl))


def smoke_failed(env: Environment, spec: AttentionSpec = SPEC) -> Environment:
    """`env` with FA4's backward smoke case for `spec`'s class failed on this node."""
    entry = LedgerEntry(backend=FA4, fingerprint=fingerprint(FA4, env, env.gpu(0)), case="fa4:bf16-d128-causal",
                        case_class=case_class(spec), direction="bwd", outcome="wrong_result",
                        detail="dq max error 1.2")
    return env.with_ledger((entry,))


def test_a_refused_fa4_keeps_sdpa_off_its_flash_kernel():
    env = with_flash(smoke_failed(make_env((9, 0), fa4="4.0.0b36")), "FA4")
    decision = decide(SPEC, env)
    assert decision.chosen is BackendName.SDPA and decision.reasons_for(FA4)[0].code is ReasonCode.SMOKE_FAILED
    ((kernel, (why,)),) = decision.sdpa_excluded
    assert kernel == "flash" and why.code is ReasonCode.SMOKE_FAILED
    assert why.detail.startswith("it is FA4 here and FA4 is refused: ")
    flash = dict(kernels(SPEC, env))["flash"]
    assert why in flash  # explain's kernel table says the same
    assert decision_to_plain(decision)["sdpa_excluded"] == [{"kernel": "flash", "reasons": [
        {"code": "smoke_failed", "detail": why.detail}]}]


def test_the_same_smoke_failure_leaves_torchs_own_flash_alone():
    env = with_flash(smoke_failed(make_env((9, 0), fa4="4.0.0b36")), None)
    assert decide(SPEC, env).chosen is BackendName.SDPA and decide(SPEC, env).sdpa_excluded == ()
    assert dict(kernels(SPEC, env))["flash"] == ()


def test_fa4_not_installed_but_active_is_refused_too():
    # activate_flash_attention_impl("FA4") imports flash_attn.cute first (_fa4.py
    # `register_flash_attention_fa4`), so this is a snapshot edited by hand, or FA4 removed since.
    env = with_flash(make_env((9, 0)), "FA4")
    (why,) = flash_impl_reasons(SPEC, env)
    assert why.code is ReasonCode.NOT_INSTALLED


def test_an_eligible_fa4_keeps_flash_allowed():
    env = with_flash(make_env((9, 0), fa4="4.0.0b36"), "FA4")
    decision = decide(SPEC, env)
    assert decision.chosen is FA4 and decision.sdpa_excluded == ()
    assert dict(kernels(SPEC, env))["flash"] == ()


def test_one_call_refused_another_allowed():
    # the ledger refuses head dim 128's class only; head dim 64 is FA4's to run, in SDPA too
    env = with_flash(smoke_failed(make_env((9, 0), fa4="4.0.0b36")), "FA4")
    assert excluded_kernels(SPEC, env)
    assert excluded_kernels(replace(SPEC, head_dim_qk=64, head_dim_v=64), env) == ()


def test_disabling_fa4_by_policy_keeps_it_out_of_sdpa():
    env = with_flash(make_env((9, 0), fa4="4.0.0b36"), "FA4")
    decision = decide(SPEC, env, Policy(disabled=frozenset({FA4})))
    assert decision.chosen is BackendName.SDPA
    assert decision.sdpa_excluded[0][1][0].code is ReasonCode.DISABLED_BY_POLICY


def test_fa3_active_follows_fa3s_rules():
    env = with_flash(make_env((8, 0)), "FA3")  # FA3 runs on 9.0 only
    (why,) = flash_impl_reasons(SPEC, env)
    assert why.detail.startswith("it is FA3 here and FA3 is refused")


@pytest.mark.parametrize("impl, registry", [(None, False), (None, None), ("SomeoneElsesImpl", True)])
def test_no_registry_torchs_own_or_an_unknown_impl_excludes_nothing(impl, registry):
    env = with_flash(smoke_failed(make_env((9, 0), fa4="4.0.0b36")), impl, registry)
    assert excluded_kernels(SPEC, env) == ()


def test_cpu_tensors_are_never_restricted():
    # the registry replaces CUDA kernels only (_fa4.py `Library("aten", "IMPL", "CUDA")`)
    env = with_flash(make_env((9, 0)), "FA4")
    assert excluded_kernels(replace(SPEC, device="cpu"), env) == ()


def test_the_registry_facts_round_trip_and_old_snapshots_read():
    env = with_flash(make_env((9, 0)), "FA4")
    assert Environment.from_json(env.to_json()) == env
    assert env.torch.flash_kernel == "FA4" and TorchInfo().flash_kernel == "FA2"
    plain = Environment().to_plain()
    for name in ("flash_registry", "flash_impls", "flash_impl"):
        del plain["torch"][name]
    assert Environment.from_plain(plain).torch.flash_registry is None
