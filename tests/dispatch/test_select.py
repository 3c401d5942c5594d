"""`select`/`decide`: priority, purity and caching, policy, the vetting ledger."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import (BackendName, BackendNotEligible, FallbackRefused, NoBackendAvailable,
                                        PolicyError, ReasonCode, decision_to_plain)
from fa4doctor.dispatch.selection import decide, select
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import DriverInfo, LedgerEntry, TorchInfo
from ledger_helpers import flat_entry

from .dispatch_envs import make_env, only

R, B = ReasonCode, BackendName
SPEC = AttentionSpec(head_dim_qk=128, training=True)
ALL = make_env((9, 0), fa4="4.0.0b36", fa3="3.0.0b1", fa2="2.8.3")


def test_priority_is_fa4_fa3_fa2_sdpa():
    assert select(SPEC, ALL).chosen is B.FA4
    assert [name for name, _ in select(SPEC, ALL).reasons] == [B.FA4, B.FA3, B.FA2, B.SDPA]
    assert select(SPEC, make_env((9, 0), fa3="3.0.0b1", fa2="2.8.3")).chosen is B.FA3
    assert select(SPEC, make_env((9, 0), fa2="2.8.3")).chosen is B.FA2
    assert select(SPEC, make_env((9, 0))).chosen is B.SDPA


def test_decisions_are_cached_and_pure():
    first = decide(SPEC, ALL)
    assert decide(AttentionSpec(head_dim_qk=128), ALL) is first  # equal inputs, one cached object
    assert decide.cache_info().hits >= 1
    assert decide(SPEC, only(B.FA2)) is not first


def test_every_backend_is_reported_and_fallback_has_a_code():
    decision = select(AttentionSpec(dropout_p=0.1), ALL)
    assert decision.chosen is B.FA2 and decision.fell_back
    assert decision.fallback_code is R.DROPOUT_UNSUPPORTED
    plain = decision_to_plain(decision)
    assert plain["chosen"] == "fa2" and plain["fallback_reason"] == "dropout_unsupported"
    assert [b["eligible"] for b in plain["backends"]] == [False, False, True, True]


def test_force_a_backend():
    decision = select(SPEC, ALL, Policy(force=B.FA2))
    assert decision.chosen is B.FA2 and not decision.fell_back
    assert R.DISABLED_BY_POLICY in {r.code for r in decision.reasons_for(B.FA4)}
    with pytest.raises(BackendNotEligible, match="fa3") as raised:
        select(AttentionSpec(dropout_p=0.1), ALL, Policy(force=B.FA3))
    assert "dropout_unsupported" in str(raised.value)


def test_disable_and_strict():
    assert select(SPEC, ALL, Policy(disabled=frozenset({B.FA4, B.FA3}))).chosen is B.FA2
    decision = select(SPEC, ALL, Policy(disabled=frozenset({B.FA4})))
    assert decision.preferred is B.FA3 and not decision.fell_back
    with pytest.raises(FallbackRefused, match="fa4"):
        select(AttentionSpec(dropout_p=0.1), ALL, Policy(strict=True))
    assert select(SPEC, ALL, Policy(strict=True)).chosen is B.FA4
    with pytest.raises(NoBackendAvailable):
        select(SPEC, make_env((9, 0)), Policy(disabled=frozenset({B.SDPA})))


@pytest.mark.parametrize("environ, message", [
    ({"FA4DOCTOR_BACKEND": "fa5"}, "valid: fa4, fa3, fa2, sdpa"),
    ({"FA4DOCTOR_DISABLE": "fa4,flash"}, "FA4DOCTOR_DISABLE: unknown backend 'flash'"),
    ({"FA4DOCTOR_STRICT": "maybe"}, "FA4DOCTOR_STRICT"),
    ({"FA4DOCTOR_BACKEND": "fa4", "FA4DOCTOR_DISABLE": "fa4"}, "also listed"),
])
def test_bad_policy_names_the_variable(environ, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_env(environ)


def test_policy_from_env():
    policy = Policy.from_env({"FA4DOCTOR_BACKEND": " SDPA ", "FA4DOCTOR_DISABLE": "fa4, FA2,", "FA4DOCTOR_STRICT": "1"})
    assert policy == Policy(force=B.SDPA, disabled=frozenset({B.FA4, B.FA2}), strict=True)
    assert Policy.from_env({}) == Policy()


def _entry(env, backend=B.FA4, outcome="wrong_result", direction="bwd", **overrides):
    values = dict(backend=backend, fingerprint=fingerprint(backend, env, env.gpu(0)), case="bf16-d128-causal",
                  dtype="bf16", head_dim_qk=128, head_dim_v=128, attn_mask_type="causal", window=False,
                  direction=direction, outcome=outcome, detail="dq rel err 0.4")
    values.update(overrides)
    return flat_entry(**values)


def test_a_smoke_failure_on_this_node_refuses_the_backend():
    env = only(B.FA4)
    spec = AttentionSpec(attn_mask_type="causal")
    failed = env.with_ledger((_entry(env),))
    assert decide(spec, failed).reasons_for(B.FA4)[0].code is R.SMOKE_FAILED
    assert decide(AttentionSpec(attn_mask_type="causal", training=False), failed).chosen is B.FA4  # bwd only
    assert decide(spec, env.with_ledger((_entry(env, outcome="pass"),))).chosen is B.FA4
    assert decide(spec, env.with_ledger((_entry(env, fingerprint="0" * 16),))).chosen is B.FA4  # stale
    assert decide(spec, env.with_ledger((_entry(env, head_dim_qk=64, head_dim_v=64),))).chosen is B.FA4
    fwd = env.with_ledger((_entry(env, direction="fwd"),))
    assert decide(AttentionSpec(attn_mask_type="causal", training=False), fwd).chosen is B.SDPA


def test_an_upgrade_changes_the_fingerprint():
    old, new = only(B.FA4, version="4.0.0b35"), only(B.FA4, version="4.0.0b36")
    assert fingerprint(B.FA4, old, old.gpu(0)) != fingerprint(B.FA4, new, new.gpu(0))
    base = fingerprint(B.FA4, new, new.gpu(0))
    fa4 = new.backend(B.FA4)
    changed = [replace(new, driver=DriverInfo(driver_version="590.1")),
               replace(new, torch=TorchInfo(version="2.12.0", cuda="13.0")),
               replace(new, backends=tuple(replace(b, dependencies=(("nvidia-cutlass-dsl", "4.9.0"),)) if b is fa4
                                           else b for b in new.backends))]
    assert all(fingerprint(B.FA4, env, env.gpu(0)) != base for env in changed)
    assert fingerprint(B.FA4, replace(new, hostname="elsewhere"), new.gpu(0)) == base  # not what makes it valid


def test_fa4_knobs_enter_the_fingerprint_only_when_set():
    from pathlib import Path

    from fa4doctor.environment import Knob, load_environment

    # The H100 node's snapshot and the fingerprint its ledger recorded before knobs were kept.
    env = load_environment(Path(__file__).parents[1] / "fixtures" / "smoke" / "h100-fa4-b36-env.json")
    gpu = env.gpu(0)
    assert env.knobs == () and fingerprint(B.FA4, env, gpu) == "940d6b53137b7a81"
    assert fingerprint(B.SDPA, env, gpu) == "34177ad6be560639"

    def fa4_with(*knobs):
        return fingerprint(B.FA4, replace(env, knobs=knobs), gpu)

    arch, two_cta = Knob("FLASH_ATTENTION_ARCH", "sm_90"), Knob("FA_DISABLE_2CTA", "1")
    assert fa4_with(arch) != "940d6b53137b7a81"
    assert fa4_with(arch) != fa4_with(Knob("FLASH_ATTENTION_ARCH", "90"))  # another setting, another proof
    assert fa4_with(arch, two_cta) == fa4_with(two_cta, arch) != fa4_with(arch)
    assert fa4_with(Knob("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1", changes_kernels=False)) == "940d6b53137b7a81"
    assert fingerprint(B.SDPA, replace(env, knobs=(arch,)), gpu) == "34177ad6be560639"  # FA4's knobs only


def test_sdpa_smoke_failure_is_an_advisory_not_a_refusal():
    env = make_env((9, 0))
    env = env.with_ledger((_entry(env, backend=B.SDPA),))
    decision = decide(AttentionSpec(attn_mask_type="causal"), env)
    assert decision.chosen is B.SDPA
    assert R.SMOKE_FAILED in {r.code for r in dict(decision.advisories)[B.SDPA]}


def test_the_package_exports_the_functions_not_their_modules():
    # `from fa4doctor.dispatch import select` is the public API; a submodule of the same name
    # would shadow the function once imported.
    import fa4doctor.dispatch.selection  # noqa: F401 (the import that used to shadow it)
    from fa4doctor.dispatch import attention, decide, select

    assert callable(select) and callable(decide) and callable(attention)
    assert select.__module__ == "fa4doctor.dispatch.selection"
