"""The known-bug table decides, this node's ledger outranks it both ways, and a failure reaches every
call with its head dims: snapshots of an H100 with 4.0.0b36, 4.0.0b40 and a made-up 4.0.0b99."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fa4doctor.dispatch.known_bugs import KNOWN_BUGS, by_id, head_dims_touched, known_bugs
from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.report import build_report
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, evidence, fingerprint
from ledger_helpers import flat_entry

from .dispatch_envs import make_env

B, R = BackendName, ReasonCode
VERSIONS = ("4.0.0b36", "4.0.0b40", "4.0.0b99")
HD72 = AttentionSpec(head_dim_qk=72, num_heads_q=16, seqlen_q=1024, attn_mask_type="causal")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "dispatch.md"


def _entry(env, spec: AttentionSpec, direction: str, outcome: str, case: str = "fa4:case"):
    klass = case_class(spec)
    return flat_entry(backend=B.FA4, fingerprint=fingerprint(B.FA4, env, env.gpu(0)), case=case,
                      dtype=klass.dtype, head_dim_qk=klass.head_dim_qk, head_dim_v=klass.head_dim_v,
                      attn_mask_type=klass.attn_mask_type, window=klass.window, gqa=klass.gqa,
                      direction=direction, outcome=outcome, recorded_at="2026-12-06T12:00:00+00:00")


@pytest.mark.parametrize("version", VERSIONS)
def test_the_table_refuses_the_sm90_dq_bug_in_every_newer_beta(version):
    decision = decide(HD72, make_env((9, 0), fa4=version))
    assert decision.chosen is B.SDPA
    assert [r.code for r in decision.reasons_for(B.FA4)] == [R.KNOWN_BUG]
    assert "fa4-sm90-dq-head-dim" in decision.reasons_for(B.FA4)[0].detail


@pytest.mark.parametrize("version", VERSIONS)
def test_a_passing_smoke_case_of_the_exact_class_lifts_it_as_an_advisory(version):
    env = make_env((9, 0), fa4=version)
    env = env.with_ledger((_entry(env, HD72, "fwd", "pass"), _entry(env, HD72, "bwd", "pass", "fa4:proof")))
    decision = decide(HD72, env)
    assert decision.chosen is B.FA4
    lifted = [r for r in dict(decision.advisories)[B.FA4] if r.code is R.KNOWN_BUG_LIFTED]
    assert len(lifted) == 1 and "fa4:proof" in lifted[0].detail and "2026-12-06" in lifted[0].detail


def test_a_pass_lifts_only_its_own_class():
    env = make_env((9, 0), fa4="4.0.0b40")
    env = env.with_ledger((_entry(env, HD72, "bwd", "pass"),))
    other = replace(HD72, dtype="fp16")
    assert decide(other, env).chosen is B.SDPA


@pytest.mark.parametrize("version", VERSIONS)
def test_a_failing_smoke_case_refuses_even_where_the_table_is_silent(version):
    spec = replace(HD72, head_dim_qk=64, head_dim_v=64)
    env = make_env((9, 0), fa4=version)
    assert decide(spec, env).chosen is B.FA4
    env = env.with_ledger((_entry(env, spec, "bwd", "wrong_result"),))
    decision = decide(spec, env)
    assert decision.chosen is B.SDPA and decision.fallback_code is R.SMOKE_FAILED


def test_a_failure_reaches_every_call_with_its_head_dims_and_direction():
    env = make_env((9, 0), fa4="4.0.0b99")
    failed = AttentionSpec(head_dim_qk=64, num_heads_q=2, seqlen_q=128, attn_mask_type="causal")
    env = env.with_ledger((_entry(env, failed, "bwd", "wrong_result", "fa4:bf16-d64"),))
    reached = [replace(HD72, head_dim_qk=64, head_dim_v=64, **change) for change in (
        {"attn_mask_type": "causal_bottom_right"}, {"window_size": (256, 0)}, {"dtype": "fp16"},
        {"num_heads_kv": 4}, {"attn_mask_type": "no_mask"})]
    for spec in reached:
        decision = decide(spec, env)
        assert decision.chosen is B.SDPA, spec
        assert "reaches this call" in decision.reasons_for(B.FA4)[0].detail
    # A backward failure says nothing about inference, nor about other head dims.
    assert decide(replace(reached[0], training=False), env).chosen is B.FA4
    assert decide(replace(reached[0], head_dim_qk=128, head_dim_v=128), env).chosen is B.FA4


def test_a_class_with_its_own_pass_is_not_refused_by_a_neighbours_failure():
    env = make_env((9, 0), fa4="4.0.0b99")
    failed = AttentionSpec(head_dim_qk=64, attn_mask_type="causal")
    passed = replace(failed, attn_mask_type="no_mask")
    env = env.with_ledger((_entry(env, failed, "bwd", "wrong_result"), _entry(env, passed, "bwd", "pass")))
    assert decide(passed, env).chosen is B.FA4
    assert decide(failed, env).chosen is B.SDPA
    both = env.with_ledger(env.ledger + (_entry(env, failed, "bwd", "pass"),))
    assert decide(failed, both).chosen is B.SDPA  # a failure of the exact class outranks its pass


def test_evidence_under_another_fingerprint_says_nothing():
    env = make_env((9, 0), fa4="4.0.0b36")
    stale = _entry(env, HD72, "bwd", "pass")
    upgraded = make_env((9, 0), fa4="4.0.0b40").with_ledger((stale,))
    assert decide(HD72, upgraded).chosen is B.SDPA
    assert not any(e.proven for e in evidence(B.FA4, HD72, upgraded, upgraded.gpu(0)))


def test_a_bug_fixed_in_a_version_stops_there():
    varlen = AttentionSpec(head_dim_qk=128, qkv_format="thd", attn_mask_type="padding_causal", same_seqlens=False)
    bug = by_id("fa4-sm90-bwd-varlen-past-seqlen-k")
    assert known_bugs(B.FA4, varlen, 9, "4.0.0b36") == [bug]
    assert known_bugs(B.FA4, varlen, 9, "4.0.0b39") == known_bugs(B.FA4, varlen, 9, "4.0.0b40") == []
    assert known_bugs(B.FA4, varlen, 10, "4.0.0b36") == []  # SM90 only
    assert known_bugs(B.FA4, replace(varlen, training=False), 9, "4.0.0b36") == []  # backward only


def test_the_hd256_sm100_backward_features_stay_refused_after_their_asserts_went():
    spec = AttentionSpec(head_dim_qk=256, softcap=30.0, attn_mask_type="causal")
    for version in VERSIONS:
        codes = {r.code for r in decide(spec, make_env((10, 0), fa4=version)).reasons_for(B.FA4)}
        assert R.SOFTCAP_UNSUPPORTED in codes, version


def test_an_unreadable_version_is_not_proven_fixed():
    assert all(bug.affects_version(None) for bug in KNOWN_BUGS)


def test_ids_are_unique_and_every_bug_names_its_source():
    assert len({b.id for b in KNOWN_BUGS}) == len(KNOWN_BUGS)
    assert all(b.source and b.first_bad and b.direction in ("fwd", "bwd") for b in KNOWN_BUGS)


def test_head_dims_touched_are_the_ones_the_h100_runs_failed():
    assert head_dims_touched() == (8, 16, 40, 48, 72, 80, 104, 112)


def _doc_row(bug) -> str:
    gpus = ", ".join(f"SM{m}x" for m in sorted(bug.arch_majors))
    return (f"| `{bug.id}` | {gpus} | {bug.direction} | {bug.where} | {bug.effect} | {bug.first_bad} | "
            f"{bug.fixed_in or 'none'} | {bug.source} |")


def test_docs_list_every_known_bug_exactly_as_the_table_says():
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `fa")]
    assert rows == [_doc_row(bug) for bug in KNOWN_BUGS]


def test_check_reports_recorded_failures_as_an_error():
    env = make_env((9, 0), fa4="4.0.0b40")
    clean = build_report(env)
    failing = build_report(env.with_ledger((_entry(env, HD72, "bwd", "wrong_result"),)))
    assert not [p for p in clean["problems"] if p["code"] == "smoke_failures_recorded"]
    found = [p for p in failing["problems"] if p["code"] == "smoke_failures_recorded"]
    assert len(found) == 1 and found[0]["severity"] == "error" and "head dims 72" in found[0]["message"]
    assert failing["exit_code"] == 3


def test_check_names_the_known_bugs_of_the_installed_beta_as_warnings():
    on_h100 = build_report(make_env((9, 0), fa4="4.0.0b40"))
    ids = {p["message"].split(" ")[0] for p in on_h100["problems"] if p["code"] == "known_bug"}
    assert ids == {"fa4-sm90-dq-head-dim"}  # b40 has the bounded varlen loads; softcap/GQA fixes are older
    assert all(p["severity"] == "warning" for p in on_h100["problems"] if p["code"] == "known_bug")
    old = build_report(make_env((9, 0), fa4="4.0.0b11"))
    assert {p["message"].split(" ")[0] for p in old["problems"] if p["code"] == "known_bug"} == {
        "fa4-sm90-dq-head-dim", "fa4-sm90-bwd-varlen-past-seqlen-k", "fa4-sm90-deterministic-gqa"}
    assert not [p for p in build_report(make_env((8, 0), fa4="4.0.0b40"))["problems"] if p["code"] == "known_bug"]
