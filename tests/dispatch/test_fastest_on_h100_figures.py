"""`FA4DOCTOR_POLICY=fastest` over the figures the lent H100 measured with FA4 4.0.0b40
(docs/validation/h100-b40/fastest/: its check snapshot, ledger and bench report), through the real
rules: every zoo row's pick stays within 3% of the best figure of that run (issue 15), a backend the
node did not vet is never picked for speed, and the fixed order is what `priority` runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "docs" / "validation" / "h100-b40" / "fastest"
sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
import fastest_table  # noqa: E402  scripts/gpu/fastest_table.py: the table the GPU run printed


@pytest.fixture(scope="module")
def rows():
    return list(fastest_table.rows(EVIDENCE))


def test_every_zoo_row_runs_within_3_percent_of_the_best(rows):
    zoo = [r for r in rows if r[2] == "zoo"]
    assert len(zoo) == 55
    for name, direction, _, best, _, fast, _, figures in zoo:
        assert figures[fast] <= 1.03 * figures[best], (name, direction, fast, best)


def test_head_dim_256_training_runs_sdpa_and_the_fixed_order_runs_fa4(rows):
    picks = {(r[0], r[1]): (r[5], r[6]) for r in rows}
    for length in (1024, 2048, 4096, 8192, 16384):
        fast, fixed = picks[(f"gemma-d256 s{length}", "fwd_bwd")]
        assert fast.startswith("sdpa") and fixed == "fa4"


def test_a_faster_backend_without_smoke_evidence_is_not_picked(rows):
    unvetted = [r for r in rows if not r[4] and not r[3].startswith(r[5].split()[0])]
    assert unvetted, "the kept run has a row whose best backend was never smoke-tested"
    for name, direction, _, best, _, fast, fixed, _ in unvetted:
        assert fast == fixed, (name, direction)
