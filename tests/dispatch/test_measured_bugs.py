"""Rules written from what fa4doctor's own smoke runs found on real GPUs (docs/validation/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.smoke.cases import plan_cases

from .dispatch_envs import codes, make_env

FA4 = BackendName.FA4
THOROUGH = Path(__file__).parents[2] / "docs" / "validation" / "h100-smoke" / "thorough-fa4.json"


def _failed_backward_head_dims() -> set[int]:
    report = json.loads(THOROUGH.read_text())
    return {c["spec"]["head_dim_qk"] for c in report["cases"]
            if c["direction"] == "bwd" and c["outcome"] != "pass"}


@pytest.mark.parametrize("head_dim", range(8, 257, 8))
def test_sm90_dq_rule_matches_the_h100_thorough_run(head_dim):
    # The rule must refuse exactly the head dims whose backward failed on the H100 (b36), no more.
    spec = AttentionSpec(head_dim_qk=head_dim, num_heads_q=2, seqlen_q=128, attn_mask_type="causal")
    refused = ReasonCode.KNOWN_BUG in codes(FA4, spec, make_env((9, 0), fa4="4.0.0b36"))
    assert refused is (head_dim in _failed_backward_head_dims())


@pytest.mark.parametrize("version, cc, training, refused", [
    ("4.0.0b36", (9, 0), True, True), ("4.0.0b11", (9, 0), True, True),
    ("4.0.0b37", (9, 0), True, True), ("4.0.0b40", (9, 0), True, True), ("4.0.0b99", (9, 0), True, True),
    ("4.0.0b36", (9, 0), False, False),
    ("4.0.0b36", (10, 0), True, False)])
def test_sm90_dq_rule_boundaries(version, cc, training, refused):
    spec = AttentionSpec(head_dim_qk=80, training=training)
    assert (ReasonCode.KNOWN_BUG in codes(FA4, spec, make_env(cc, fa4=version))) is refused


def test_thorough_smoke_keeps_testing_known_bugs():
    env = make_env((9, 0), fa4="4.0.0b36")
    cases = plan_cases(env, "thorough", gpu=env.gpus[0], backends=["fa4"])
    trained = {c.spec.head_dim_qk for c in cases if c.spec.training}
    assert {8, 80, 112} <= trained and len(cases) == 64


def test_the_h100_report_is_what_the_rule_was_written_from():
    assert _failed_backward_head_dims() == {8, 16, 40, 48, 72, 80, 104, 112}
