"""`check` and `explain` on torch's flash registry: `check --json` carries what the torch import child
saw, and `explain` says when SDPA runs with its flash kernel excluded because it is a refused FA4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NVML = Path(__file__).parent.parent / "fixtures" / "nvml"


def fa4_active_snapshot(tmp_path: Path) -> str:
    """examples/h100-fa4-b36.json (FA4 4.0.0b36 on an H100) with FA4 activated in torch's registry."""
    data = json.loads((EXAMPLES / "h100-fa4-b36.json").read_text())
    env = data.get("environment", data)
    env["torch"].update(flash_registry=True, flash_impls=["FA3", "FA4"], flash_impl="FA4")
    path = tmp_path / "h100-fa4-active.json"
    path.write_text(json.dumps(data))
    return str(path)


def explain(*args: str):
    result = CliRunner().invoke(cli, ["explain", *args], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_explain_json_names_the_excluded_flash_kernel(tmp_path):
    # head dim 72 trains into FA4's known SM90 dq bug at b36: FA4 refused, so SDPA's flash (FA4) too
    result = explain("--env", fa4_active_snapshot(tmp_path), "--head-dim", "72", "--json")
    data = json.loads(result.stdout)
    assert data["chosen"] == "sdpa" and result.exit_code == 3
    (excluded,) = data["sdpa_excluded"]
    assert excluded["kernel"] == "flash" and excluded["reasons"][0]["code"] == "known_bug"
    assert excluded["reasons"][0]["detail"].startswith("it is FA4 here and FA4 is refused: ")
    flash = next(k for k in data["sdpa_kernels"] if k["kernel"] == "flash")
    assert not flash["usable"]
    assert "SDPA flash kernel: FA4" in data["environment"]


def test_explain_text_says_so(tmp_path):
    result = explain("--env", fa4_active_snapshot(tmp_path), "--head-dim", "72")
    assert "flash kernel excluded: it is FA4 here and FA4 is refused" in result.stdout
    assert "chosen: sdpa (flash kernel excluded: known_bug)" in result.stdout


def test_explain_with_fa4_eligible_excludes_nothing(tmp_path):
    data = json.loads(explain("--env", fa4_active_snapshot(tmp_path), "--head-dim", "128", "--json").stdout)
    assert data["chosen"] == "fa4" and data["sdpa_excluded"] == []
    assert next(k for k in data["sdpa_kernels"] if k["kernel"] == "flash")["usable"]


@pytest.mark.slow
def test_check_json_carries_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FA4DOCTOR_LEDGER", str(tmp_path / "ledger.json"))
    result = CliRunner().invoke(cli, ["check", "--json", "--nvml-replay", str(NVML / "healthy_h100.json")])
    torch = json.loads(result.output)["environment"]["torch"]
    # torch 2.13 here: the registry exists; the import child activated nothing
    assert torch["flash_registry"] is True and "FA4" in torch["flash_impls"] and torch["flash_impl"] is None
