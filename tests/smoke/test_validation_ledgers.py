"""Ledgers of real GPU runs (kept as fixtures by `scripts/gpu-smoke.sh`): on the node that wrote
them, the dispatcher refuses every configuration class that failed, and keeps every one that
passed everywhere.

A fixture is a pair `tests/fixtures/smoke/<node>-env.json` (that node's `fa4doctor check --json`)
and `tests/fixtures/smoke/<node>-ledger.json`; with none present these tests skip. The last test
takes what failed from the kept thorough report instead of the ledger, and says what a class is
in its own words, so it does not lean on `vetting.matches`, which the dispatcher uses.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import load_environment
from fa4doctor.probe.ledger import read_ledger

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "smoke"
THOROUGH = Path(__file__).resolve().parents[2] / "docs" / "validation" / "h100-smoke" / "thorough-fa4.json"
NODES = sorted(p.name[: -len("-ledger.json")] for p in FIXTURES.glob("*-ledger.json"))


def _spec(entry) -> AttentionSpec:
    klass = entry.case_class
    mask = klass.attn_mask_type
    window = (64, 0) if klass.window and "causal" in mask else (32, 32) if klass.window else (-1, -1)
    varlen = mask.startswith("padding")
    return AttentionSpec(dtype=klass.dtype, head_dim_qk=klass.head_dim_qk, head_dim_v=klass.head_dim_v,
                         attn_mask_type=mask, window_size=window, training=entry.direction == "bwd",
                         qkv_format="thd" if varlen else "bshd", same_seqlens=True if varlen else None)


@pytest.mark.skipif(not NODES, reason="no GPU validation ledger in tests/fixtures/smoke")
@pytest.mark.parametrize("node", NODES)
def test_failed_entries_are_refused_on_their_node(node):
    env = load_environment(FIXTURES / f"{node}-env.json")
    read = read_ledger(FIXTURES / f"{node}-ledger.json")
    assert read.problem is None and read.entries
    env = env.with_ledger(read.entries)
    for entry in read.entries:
        gpu = next(g for g in env.gpus if g.uuid == entry.gpu_uuid)
        spec = _spec(entry)
        decision = decide(spec, env, gpu=gpu.cuda_index)
        codes = [r.code.value for r in decision.reasons_for(entry.backend)]
        if entry.failed:  # that nothing else is refused: the last test, from the kept report
            assert "smoke_failed" in codes, (entry.case, entry.direction, codes)


def _class(spec: dict) -> tuple:
    """What one smoke result speaks for (docs/smoke.md): dtype, both head dims, the mask, and whether
    a window narrows it beyond the mask (a causal mask's own right side of 0 is no window)."""
    left, right = spec["window_size"]
    window = left >= 0 or (right >= 0 and "causal" not in spec["attn_mask_type"])
    return spec["dtype"], spec["head_dim_qk"], spec["head_dim_v"], spec["attn_mask_type"], window


@pytest.mark.skipif(not (FIXTURES / "h100-fa4-b36-ledger.json").exists() or not THOROUGH.exists(),
                    reason="the H100 FA4 b36 ledger or its thorough report is not kept")
def test_what_the_kept_thorough_run_failed_is_refused_and_nothing_else():
    report = json.loads(THOROUGH.read_text())
    failed = {(c["direction"], _class(c["spec"])) for c in report["cases"] if c["outcome"] not in ("pass", "skipped")}
    assert len(failed) == 16  # the 16 SM90 backward failures of b36 (docs/validation/h100-smoke)
    env = load_environment(FIXTURES / "h100-fa4-b36-env.json")
    env = env.with_ledger(read_ledger(FIXTURES / "h100-fa4-b36-ledger.json").entries)
    gpu = env.gpus[0].cuda_index
    for case in report["cases"]:
        for training in (False, True):
            spec = replace(AttentionSpec.from_dict(case["spec"]), training=training)
            refused = "smoke_failed" in [r.code.value for r in decide(spec, env, gpu=gpu).reasons_for("fa4")]
            cls = _class(case["spec"])
            want = ("fwd", cls) in failed or (training and ("bwd", cls) in failed)
            assert refused == want, (case["case"], training)
