"""`fa4doctor smoke`: exit codes, JSON, the ledger it writes, and usage errors (exit 2, no traceback)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli
from fa4doctor.probe.ledger import read_ledger

from .conftest import H100, fa4_env, fake


@pytest.fixture
def snapshot(tmp_path):
    path = tmp_path / "env.json"
    path.write_text(fa4_env().to_json())
    return path


def _smoke(*args, env=None):
    return CliRunner().invoke(cli, ["smoke", *args], env=env)


def test_json_report_and_exit_0_when_everything_passes(snapshot, tmp_path):
    ledger = tmp_path / "ledger.json"
    result = _smoke("--env", str(snapshot), "--device", "cpu", "--backend", "FA4", "--json", "--ledger",
                    str(ledger), env={"FA4DOCTOR_SMOKE_FAKE": fake("correct")})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "fa4doctor.smoke" and report["level"] == "quick"
    assert [(c["backend"], c["direction"], c["outcome"]) for c in report["cases"]] == [
        ("fa4", "fwd", "pass"), ("fa4", "bwd", "pass")]
    assert report["ledger"] == str(ledger) and len(read_ledger(ledger).entries) == 2
    assert report["bytecode_cache"] is None  # this installation has its bytecode


def test_a_failure_exits_3_is_recorded_and_the_dispatcher_then_refuses_it(snapshot, tmp_path):
    ledger = tmp_path / "ledger.json"
    result = _smoke("--env", str(snapshot), "--device", "cpu", "--backend", "fa4", "--ledger", str(ledger),
                    env={"FA4DOCTOR_SMOKE_FAKE": fake("wrong_dq")})
    assert result.exit_code == 3, result.output
    assert "wrong_result" in result.stdout and "dq max error" in result.stdout
    explained = CliRunner().invoke(cli, ["explain", "--env", str(snapshot), "--ledger", str(ledger),
                                         "--head-dim", "128", "--mask", "causal", "--json"])
    assert explained.exit_code == 3 and json.loads(explained.stdout)["chosen"] == "sdpa"
    assert "smoke_failed" in explained.stdout


def test_no_record_leaves_the_ledger_alone(snapshot, tmp_path):
    ledger = tmp_path / "ledger.json"
    result = _smoke("--env", str(snapshot), "--device", "cpu", "--backend", "fa4", "--ledger", str(ledger),
                    "--no-record", "--json", env={"FA4DOCTOR_SMOKE_FAKE": fake("correct")})
    assert result.exit_code == 0 and json.loads(result.stdout)["ledger"] is None and not ledger.exists()


def test_nothing_to_run_exits_3(tmp_path):
    empty = tmp_path / "env.json"
    from fa4doctor.environment import Environment
    empty.write_text(Environment().to_json())
    result = _smoke("--env", str(empty), "--no-record")
    assert result.exit_code == 3 and "no smoke case ran" in result.output


@pytest.mark.parametrize("args,message", [
    (["--level", "deep"], "'deep' is not one of 'quick', 'standard', 'thorough'"),
    (["--backend", "fa5"], "'fa5' is not one of 'fa4', 'fa3', 'fa2', 'sdpa'"),
    (["--head-dims", "64,big"], "head_dims: 'big' is not a head dim"),
    (["--gpu", "GPU-nope"], f"gpu: no visible GPU 'GPU-nope' (valid: 0 ({H100.uuid}))"),
    (["--timeout", "0"], "--timeout"),
    (["--jobs", "0"], "--jobs"),
    (["--spec", "/nonexistent.json"], "does not exist"),
])
def test_usage_errors_exit_2_with_the_valid_choices(snapshot, args, message):
    result = _smoke("--env", str(snapshot), "--no-record", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and isinstance(result.exception, SystemExit)


def test_a_bad_spec_file_is_a_usage_error(snapshot, tmp_path):
    spec = tmp_path / "specs.json"
    spec.write_text(json.dumps({"specs": [{"name": "m", "head_dim_qk": 128, "attn_mask_type": "diagonal"}]}))
    result = _smoke("--env", str(snapshot), "--no-record", "--spec", str(spec))
    assert result.exit_code == 2 and "attn_mask_type: unknown value 'diagonal'" in result.output
