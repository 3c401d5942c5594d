"""One verdict for a job: the pure rules, FA4DOCTOR_UNIFORM's choice, and real 4-rank gloo runs.

The multi-rank tests start 4 processes on this machine (tests/cluster/launch.py: torchrun's
variables, a free port, gloo), each judging its own snapshot: examples/h100-fa3-fa4.json (FA4
4.0.0b36 and FA3), tests/fixtures/cluster/h100-fa4-b40.json (the same node image with FA4 4.0.0b40,
on host h100-node-2: "an older beta in one image"), examples/a100-fa2-2.8.3.json and
examples/h100-fa4-b36.json. Each is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.dispatch.agreement import (RankReport, build_verdict, common_backend, rank_report, stack_of,
                                          uniform_class, uniform_decision)
from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
from fa4doctor.dispatch.reasons import BackendName as B, Decision, PolicyError
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Knob, LedgerEntry, load_environment
from fa4doctor.records import from_plain, to_plain
from tests.ledger_helpers import flat_entry

ROOT = Path(__file__).resolve().parents[2]
H100 = ROOT / "examples" / "h100-fa3-fa4.json"
B40 = ROOT / "tests" / "fixtures" / "cluster" / "h100-fa4-b40.json"
A100 = ROOT / "examples" / "a100-fa2-2.8.3.json"
B36 = ROOT / "examples" / "h100-fa4-b36.json"


def reports(*paths: Path) -> list[RankReport]:
    return [rank_report(rank, load_environment(p), DEFAULT_SPECS, local_rank=rank, source="snapshot")
            for rank, p in enumerate(paths)]


# --- the rules, pure -------------------------------------------------------------------------------


def test_identical_ranks_running_fa4_are_healthy():
    verdict = build_verdict(reports(H100, H100, H100, H100), world_size=4)
    assert verdict.exit_code == 0 and verdict.odd_ranks == () and len(verdict.groups) == 1
    assert verdict.nodes == 1 and verdict.gpus == 8 and verdict.differences == ()
    assert {s.backend for s in verdict.specs} == {B.FA4} and all(s.uniform is B.FA4 for s in verdict.specs)


def test_the_verdict_names_exactly_the_odd_ranks_and_why():
    verdict = build_verdict(reports(H100, B40, H100, A100), world_size=4)
    assert verdict.odd_ranks == (1, 3) and verdict.exit_code == 3
    assert [g.ranks for g in verdict.groups] == [(0, 2), (1,), (3,)]
    parts = {d.part: dict(d.values) for d in verdict.differences}
    assert parts["fa4"] == {"4.0.0b36": (0, 2), "4.0.0b40": (1,), "not installed": (3,)}
    assert set(parts) >= {"fa3", "fa2", "torch", "cuda", "gpu_model"} and "driver" not in parts
    for spec in verdict.specs:  # rank 1 runs FA4 too: it differs only in its stack
        assert spec.backend is B.FA4 and spec.ranks == (0, 1, 2) and spec.uniform is B.SDPA
        [other] = spec.others
        assert (other.rank, other.chosen) == (3, B.FA2) and other.why.startswith("not_installed")


def test_smoke_failures_and_knobs_are_differences_that_matter():
    h100 = load_environment(H100)
    gpu = h100.gpu(0)
    from fa4doctor.dispatch.vetting import fingerprint

    failed = flat_entry(backend=B.FA4, fingerprint=fingerprint(B.FA4, h100, gpu), case="d128_causal",
                        direction="bwd", outcome="wrong_result", dtype="bf16", head_dim_qk=128,
                        attn_mask_type="causal", window=False)
    assert isinstance(failed, LedgerEntry)
    odd = h100.with_ledger((failed,))
    knobbed = replace(h100, knobs=(Knob("FLASH_ATTENTION_NUM_SMS", "66"),))
    found = [rank_report(r, env, DEFAULT_SPECS) for r, env in enumerate((h100, odd, knobbed))]
    verdict = build_verdict(found, world_size=3)
    parts = {d.part: dict(d.values) for d in verdict.differences}
    assert parts["smoke_failures"][stack_of(odd, gpu).text("smoke_failures")] == (1,)
    assert parts["fa4_knobs"]["FLASH_ATTENTION_NUM_SMS=66"] == (2,)
    causal = next(s for s in verdict.specs if s.spec == "bf16_d128_causal_train")
    assert [o.rank for o in causal.others] == [1] and "smoke_failed" in causal.others[0].why
    assert verdict.odd_ranks == (1, 2)


def test_missing_and_failed_ranks_are_named():
    found = reports(H100, H100) + [RankReport(rank=2, node="n3", error="probe failed: boom")]
    verdict = build_verdict(found, world_size=4, timeout_s=5)
    assert verdict.missing == (3,) and verdict.failed == ((2, "probe failed: boom"),)
    assert verdict.odd_ranks == (2, 3) and verdict.exit_code == 3


def test_reports_and_verdicts_travel_as_json():
    [report] = reports(B40)
    assert from_plain(RankReport, json.loads(json.dumps(to_plain(report)))) == report
    plain = json.loads(json.dumps(build_verdict(reports(H100, A100), world_size=2).to_plain()))
    assert plain["schema"] == "fa4doctor.cluster" and plain["exit_code"] == 3 and plain["odd_ranks"] == [1]


def test_the_uniform_choice_is_the_best_backend_every_rank_can_run():
    assert common_backend([(B.FA4, B.FA3, B.SDPA), (B.FA3, B.FA2, B.SDPA)]) is B.FA3
    assert common_backend([(B.FA4,), (B.FA2,)]) is None
    local = Decision(preferred=B.FA4, chosen=B.FA4, reasons=((B.FA4, ()), (B.FA3, ()), (B.SDPA, ())))
    agreed = uniform_decision(local, [(B.FA4, B.FA3, B.SDPA), (B.FA3, B.SDPA), (B.SDPA,), (B.FA3, B.SDPA)], 0)
    assert agreed.chosen is B.SDPA and agreed.fallback_code.value == "not_on_every_rank"
    assert "rank(s) 1,2,3" in agreed.reasons_for(B.FA4)[0].detail
    assert "rank(s) 2" in agreed.reasons_for(B.FA3)[0].detail
    nothing = uniform_decision(local, [(B.FA4,), (B.FA2,)], 0)
    assert nothing.chosen is None and type(nothing.error).__name__ == "NoBackendAvailable"


def test_a_class_ignores_sequence_lengths_but_not_how_they_compare():
    spec = AttentionSpec(seqlen_q=512, attn_mask_type="causal")
    assert uniform_class(spec) == uniform_class(replace(spec, seqlen_q=2048, seqlen_kv=2048))
    assert uniform_class(spec) != uniform_class(replace(spec, seqlen_q=1, seqlen_kv=2048, same_seqlens=None))
    assert uniform_class(spec) != uniform_class(replace(spec, seqlen_kv=1024, same_seqlens=None))
    assert uniform_class(replace(spec, device="cuda:1")) == uniform_class(spec)


# --- the runtime without a process group: as today -------------------------------------------------


def test_uniform_without_a_process_group_decides_as_today(monkeypatch):
    import torch

    from fa4doctor.dispatch import attention
    from fa4doctor.runtime import dispatcher, uniform

    monkeypatch.setenv("FA4DOCTOR_UNIFORM", "1")
    dispatcher.reset()
    calls = []
    monkeypatch.setattr(uniform, "active", lambda *a: calls.append(1) or False)
    q = torch.randn(1, 8, 2, 16)
    for _ in range(3):
        attention(q, q, q, attn_mask_type="causal")
    assert calls == [1] and uniform.exchanges == 0  # asked once, at plan time; the hit path never asks
    dispatcher.reset()


def test_a_bad_uniform_value_names_the_variable():
    from fa4doctor.runtime import uniform

    with pytest.raises(PolicyError, match="FA4DOCTOR_UNIFORM: expected 1 or 0"):
        uniform.requested({"FA4DOCTOR_UNIFORM": "maybe"})


def test_cluster_outside_a_launcher_is_a_usage_error(monkeypatch):
    from fa4doctor.cli import cli

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, ["cluster"])
    assert result.exit_code == 2 and "RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set" in result.output


def test_the_stack_info_metric_carries_the_fingerprint_parts():
    from fa4doctor.dispatch.report import build_report
    from fa4doctor.exporters.metrics_env import STACK_LABELS, environment_families

    report = build_report(load_environment(B40))
    [family] = [f for f in environment_families(report) if f.name == "fa4doctor_node_stack"]
    [sample] = family.samples
    assert sample.name == "fa4doctor_node_stack_info" and sorted(sample.labels) == sorted(STACK_LABELS)
    assert sample.labels["fa4_version"] == "4.0.0b40" and sample.labels["cutlass_dsl"] == "4.8.1"
    assert sample.labels["gpu_model"] == "NVIDIA H100 80GB HBM3" and sample.labels["fa2_version"] == ""


# --- 4 real processes, torch.distributed over gloo ---------------------------------------------------


def launch(tmp_path: Path, mode: str, *args: str, rank_env=(), hang=(), wait=60.0) -> dict:
    command = [sys.executable, str(ROOT / "tests" / "cluster" / "launch.py"), "--world", "4", "--out",
               str(tmp_path), "--wait", str(wait)]
    command += [f"--rank-env={item}" for item in rank_env] + [f"--hang={rank}" for rank in hang]
    subprocess.run(command + [mode, "--", *args], check=True, timeout=wait + 30, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads((tmp_path / "codes.json").read_text())


def snapshots(tmp_path: Path, *paths: Path) -> str:
    for rank, path in enumerate(paths):
        (tmp_path / f"rank{rank}.json").symlink_to(path)
    return str(tmp_path / "rank{rank}.json")


def test_four_ranks_over_gloo_name_exactly_the_odd_ranks(tmp_path):
    env = snapshots(tmp_path, H100, B40, H100, A100)
    codes = launch(tmp_path, "cli", "cluster", "--env", env, "--timeout", "30", "--json")
    assert {rank: c["code"] for rank, c in codes.items()} == {"0": 3, "1": 3, "2": 3, "3": 3}
    verdict = json.loads((tmp_path / "rank0.out").read_text())
    assert verdict["odd_ranks"] == [1, 3] and verdict["missing"] == [] and verdict["exit_code"] == 3
    assert [g["ranks"] for g in verdict["groups"]] == [[0, 2], [1], [3]]
    assert verdict["collective_ok"] is True and "4 of 4 ranks" in verdict["collective"]
    assert all((tmp_path / f"rank{r}.out").read_text() == "" for r in (1, 2, 3))  # rank 0 alone prints


def test_a_rank_that_hangs_is_named_after_the_timeout_and_the_others_exit(tmp_path):
    codes = launch(tmp_path, "cli", "cluster", "--env", str(H100), "--timeout", "3", hang=[3])
    assert codes["3"] == "killed"  # it never answered; the launcher ended it once the others had exited
    assert all(codes[r]["code"] == 3 and codes[r]["seconds"] < 30 for r in ("0", "1", "2"))
    out = (tmp_path / "rank0.out").read_text()
    assert "3 of 4 answered" in out and "no answer within 3 s: rank 3" in out and "odd ranks: 3\n" in out


def test_uniform_makes_every_rank_pick_one_backend_and_match_float64(tmp_path):
    env = [f"{r}:FA4DOCTOR_TEST_SNAPSHOT={p}" for r, p in enumerate((H100, B40, H100, B36))]
    codes = launch(tmp_path, "uniform", rank_env=env)
    assert all(c["code"] == 0 for c in codes.values()), codes
    seen = [json.loads((tmp_path / f"uniform{r}.json").read_text()) for r in range(4)]
    for result in seen:
        verdict = result["verdict"]
        assert verdict["odd_ranks"] == [1, 3]  # b40's stack; b36 lacks FA3 on another host
        # FA3 is not on rank 3, so the best backend every rank can run is FA4 for every default spec
        assert {s["uniform"] for s in verdict["specs"]} == {"fa4"} and result["seeded"] == len(DEFAULT_SPECS)
        assert result["chosen"] == ["sdpa"] and max(result["errors"]) < 1e-5  # CPU: SDPA, against float64
        assert result["exchanges"] == 2  # two classes (the causal one at two lengths), one exchange each
        assert result["refused"].startswith("NoBackendAvailable")  # rank 3 disabled SDPA: all refuse together
    assert len({json.dumps(r["verdict"], sort_keys=True) for r in seen}) == 1
