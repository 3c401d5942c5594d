"""`fa4doctor report`'s page from the H100's real evidence (FA4 4.0.0b40, docs/validation/h100-b40/,
kept as tests/fixtures/report/): the cells the ledger proves, the refusals the rules give, the
speed winners and `fastest`'s picks, and a page that loads nothing and escapes what it shows."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import pytest

from fa4doctor.environment import Environment, Finding, load_environment
from fa4doctor.exporters.report_html import render_html
from fa4doctor.names import BackendName
from fa4doctor.probe.ledger import read_ledger
from fa4doctor.smoke.bench import speed_entries
from fa4doctor.smoke.matrix import correctness
from fa4doctor.smoke.page import build
from fa4doctor.smoke.speed_matrix import BenchFile, speed_from_bench, speed_from_ledger
from report_helpers import FIXTURES, NOW, h100_bench, parse  # tests/ is on sys.path (tests/conftest.py)


@pytest.fixture(scope="module")
def h100() -> Environment:
    env = load_environment(FIXTURES / "h100-fa4-b40-check.json")
    read = read_ledger(FIXTURES / "h100-fa4-b40-ledger.json")
    return env.with_ledger(read.entries, read.speed)


def _row(matrix, **fields):
    return next(r for r in matrix.rows if all(getattr(r.case_class, k) == v for k, v in fields.items()))


def _cell(matrix, row, backend: str, way: str):
    return row.cells[matrix.columns.index((BackendName(backend), way))]


D72_CAUSAL = dict(head_dim_qk=72, attn_mask_type="causal", dtype="bf16", window=False, gqa=False, decode=False)


def test_the_ledger_decides_the_cells_it_proves(h100):
    [matrix] = correctness(h100)
    assert matrix.backends == (BackendName.FA4, BackendName.SDPA)  # FA3 and FA2 are not installed there
    assert matrix.hidden == (BackendName.FA3, BackendName.FA2) and matrix.stale == 0
    outcomes = Counter(cell.outcome for row in matrix.rows for cell in row.cells)
    # the ledger: 195 FA4 and 35 SDPA passes, less the classes run twice; 62 wrong, 2 refused by FA4 itself
    assert (outcomes["pass"], outcomes["wrong_result"], outcomes["refused"]) == (202, 54, 2)
    row = _row(matrix, **D72_CAUSAL)
    assert _cell(matrix, row, "fa4", "fwd").outcome == "pass"
    wrong = _cell(matrix, row, "fa4", "bwd")
    assert wrong.outcome == "wrong_result" and wrong.detail.startswith("dq max error 1.83 > tolerance")
    assert (row.train.label, row.train.fell_back, row.infer.label) == ("sdpa", True, "fa4")
    tiled = _cell(matrix, _row(matrix, head_dim_qk=104, attn_mask_type="no_mask", window=False), "fa4", "bwd")
    assert tiled.outcome == "refused" and "cannot tile" in tiled.detail and tiled.case
    d128 = _row(matrix, head_dim_qk=128, attn_mask_type="causal", dtype="bf16", window=False, gqa=False)
    assert {c.outcome for c in d128.cells} == {"pass"} and d128.train.label == "fa4"


def test_without_evidence_the_rules_refuse_or_leave_it_not_run(h100):
    """The d72 causal backward failed; the no_mask class ran forward only: its backward is refused by
    the known-bug table and reached by the failure at the same head dims."""
    kept = tuple(e for e in h100.ledger if e.backend is BackendName.FA4 and e.case_class.head_dim_qk == 72
                 and e.case_class.dtype == "bf16" and not e.case_class.window and not e.case_class.gqa
                 and (e.case_class.attn_mask_type == "causal" or e.direction == "fwd"))
    [matrix] = correctness(h100.with_ledger(kept))
    row = _row(matrix, **{**D72_CAUSAL, "attn_mask_type": "no_mask"})
    refused = _cell(matrix, row, "fa4", "bwd")
    assert (refused.outcome, refused.code, refused.case) == ("refused", "known_bug", "")
    assert "smoke_failed: smoke case fa4:bf16-d72-h2-s128-causal (bwd) failed" in refused.detail
    assert _cell(matrix, row, "sdpa", "bwd").outcome == "not_run"


def test_an_upgrade_leaves_the_old_evidence_out(h100):
    newer = tuple(replace(b, version="4.0.0b41") if b.backend is BackendName.FA4 else b for b in h100.backends)
    [matrix] = correctness(replace(h100, backends=newer))
    assert matrix.stale == sum(e.backend is BackendName.FA4 for e in h100.ledger) == 259
    assert not any(c.outcome == "wrong_result" for row in matrix.rows for c in row.cells)


def test_speed_from_a_bench_report_marks_each_rows_winner(h100):
    report = h100_bench(h100)
    matrix = speed_from_bench(BenchFile("bench.json", report.shapes, report.results), h100)
    assert matrix.columns == ("fa4", "sdpa cudnn", "sdpa flash", "sdpa efficient")
    winners = {(r.shape, r.direction): r.winner.label for r in matrix.rows}
    assert winners[("d64 s4096", "fwd")] == "fa4" and winners[("d64 s4096", "fwd_bwd")] == "sdpa cudnn"
    assert winners[("d128 gqa s8192", "fwd_bwd")] == "fa4" and winners[("d256 gqa s4096", "fwd")] == "sdpa cudnn"
    row = next(r for r in matrix.rows if r.shape == "d128 gqa s2048" and r.direction == "fwd")
    efficient = row.figures[matrix.columns.index("sdpa efficient")]
    assert efficient.outcome == "refused" and row.relative(efficient) is None
    assert row.relative(row.winner) == 1.0 and round(row.relative(row.figures[0]), 3) == round(367 / 468, 3)
    assert all(r.fastest is None for r in matrix.rows)  # the ledger has no speed records to choose by
    assert any("no" in note and "fixed order" in note for note in matrix.notes)


def test_fastest_picks_by_the_ledgers_speed_records(h100):
    """Within 2% the fixed order wins; an unvetted class (d256 GQA: no smoke evidence) falls to it."""
    env = h100.with_ledger(h100.ledger, speed_entries(h100, h100_bench(h100)))
    picks = {(r.shape, r.direction): (r.fastest.label, r.fastest.measured) for r in speed_from_ledger(env).rows}
    assert picks[("d64 s4096", "fwd")] == ("fa4", True)  # 322 against cuDNN's 317
    assert picks[("d64 s4096", "fwd_bwd")] == ("sdpa cudnn", True)  # 330 against 293
    assert picks[("d128 gqa s2048", "fwd")] == ("sdpa cudnn", True)
    assert picks[("d128 gqa s2048", "fwd_bwd")] == ("fa4", True)  # 355 against 361: a tie
    assert picks[("d256 gqa s4096", "fwd")] == ("fa4", False)


def test_the_page_shows_the_matrices_and_loads_nothing(h100):
    report = h100_bench(h100)
    page = render_html(build(h100, "snapshot", bench=BenchFile("b.json", report.shapes, report.results), now=NOW))
    assert not re.search(r"(?:src|href|action)\s*=|url\(|@import|<link|<script|<iframe|<img", page, re.I)
    assert not re.search(r"https?://", page)
    found = parse(page)
    cells = [a for tag, a, _ in found if tag == "td" and "c" in a.get("class", "").split()]
    assert len(cells) == 4 * len([1 for tag, a, _ in found if tag == "tr" and "data-key" in a])
    assert Counter(a["data-outcome"] for a in cells)["wrong_result"] == 54
    d72 = next(i for i, (tag, a, _) in enumerate(found) if a.get("data-key") == "d72 causal bf16")
    bwd = next(item for item in found[d72:] if item[1].get("data-backend") == "fa4" and item[1].get("data-dir") == "bwd")
    assert bwd[1]["class"] == "c wrong" and bwd[2] == "dq 21\u00d7" and "dq max error 1.83" in bwd[1]["title"]
    wins = [(a["data-col"], text) for tag, a, text in found if "win" in a.get("class", "").split()]
    assert len(wins) == 8 and wins[1] == ("sdpa cudnn", "\u2605 330")
    for fact in ("NVIDIA H100 80GB HBM3", "580.159.04 (CUDA 13.0)", "flash-attn-4 4.0.0b40", "2.11.0+cu130", NOW):
        assert fact in page
    assert "64 smoke case(s) of fa4 failed" in page  # check's problems, on the page


def test_every_string_is_escaped(h100):
    hostile = '"><i id="x">&amp;<script>alert(1)</script>'
    wrong = replace(next(e for e in h100.ledger if e.outcome == "wrong_result"), detail=hostile, case=hostile)
    env = replace(h100, hostname=hostile, ledger=(wrong, *h100.ledger),
                  findings=h100.findings + (Finding("x", "error", hostile, hostile),))
    page = render_html(build(env, f"snapshot {hostile}", now=NOW))
    assert "<i id=" not in page and "<script" not in page and "&amp;amp;" in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5


def test_a_node_without_a_gpu_is_judged_by_the_rules_alone():
    [matrix] = correctness(Environment())
    assert matrix.gpu is None and {c.outcome for r in matrix.rows for c in r.cells[:2]} == {"refused"}
    page = render_html(build(Environment(), "a CPU", now=NOW))
    assert "No GPU is visible" in page and "Nothing measured" in page
