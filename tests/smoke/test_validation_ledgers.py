"""Ledgers of real GPU runs (kept as fixtures by `scripts/gpu-smoke.sh`): on the node that wrote
them, the dispatcher refuses every configuration class that failed, and keeps every one that
passed everywhere.

A fixture is a pair `tests/fixtures/smoke/<node>-env.json` (that node's `fa4doctor check --json`)
and `tests/fixtures/smoke/<node>-ledger.json`; with none present these tests skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import matches
from fa4doctor.environment import load_environment
from fa4doctor.probe.ledger import read_ledger

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "smoke"
NODES = sorted(p.name[: -len("-ledger.json")] for p in FIXTURES.glob("*-ledger.json"))


def _spec(entry) -> AttentionSpec:
    mask = entry.attn_mask_type
    window = (64, 0) if entry.window and "causal" in mask else (32, 32) if entry.window else (-1, -1)
    varlen = mask.startswith("padding")
    return AttentionSpec(dtype=entry.dtype, head_dim_qk=entry.head_dim_qk, head_dim_v=entry.head_dim_v,
                         attn_mask_type=mask, window_size=window, training=entry.direction == "bwd",
                         qkv_format="thd" if varlen else "bshd", same_seqlens=True if varlen else None)


@pytest.mark.skipif(not NODES, reason="no GPU validation ledger in tests/fixtures/smoke")
@pytest.mark.parametrize("node", NODES)
def test_failed_classes_are_refused_on_their_node(node):
    env = load_environment(FIXTURES / f"{node}-env.json")
    read = read_ledger(FIXTURES / f"{node}-ledger.json")
    assert read.problem is None and read.entries
    env = env.with_ledger(read.entries)
    for entry in read.entries:
        gpu = next(g for g in env.gpus if g.uuid == entry.gpu_uuid)
        spec = _spec(entry)
        decision = decide(spec, env, gpu=gpu.cuda_index)
        codes = [r.code.value for r in decision.reasons_for(entry.backend)]
        same_class_failed = any(e.failed and e.backend is entry.backend and matches(e, spec) for e in read.entries)
        assert ("smoke_failed" in codes) == same_class_failed, (entry.case, entry.direction, codes)
        if entry.failed:
            assert "smoke_failed" in codes
