"""`fa4doctor explain`: the table, the JSON, exit codes, the policy variables, and bad input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli
from fa4doctor.environment import LedgerEntry, load_environment
from ledger_helpers import flat_entry

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
H100 = str(EXAMPLES / "h100-fa4-b36.json")
H100_FA3 = str(EXAMPLES / "h100-fa3-fa4.json")
T4 = str(EXAMPLES / "t4-fa2.json")


def run(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, ["explain", *args], env={"COLUMNS": "200", **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    return result


def as_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = run(*args, "--json", env=env)
    return result.exit_code, json.loads(result.stdout)


def test_table_shows_every_backend_and_the_choice():
    result = run("--env", H100, "--heads", "32/8", "--mask", "causal")
    assert result.exit_code == 0, result.output
    for text in ("fa4", "fa3", "fa2", "sdpa", "chosen: fa4", "not_installed", "sdpa kernels", "policy: default"):
        assert text in result.stdout


def test_json_has_chosen_and_every_backend_with_reasons():
    code, data = as_json("--env", T4)
    assert code == 3 and data["exit_code"] == 3
    assert data["chosen"] == "sdpa" and data["schema"] == "fa4doctor.explain"
    backends = {b["backend"]: b for b in data["backends"]}
    assert list(backends) == ["fa4", "fa3", "fa2", "sdpa"]
    assert backends["sdpa"]["eligible"] and not backends["fa2"]["eligible"]
    assert any(r["code"] == "arch_unsupported" for r in backends["fa2"]["reasons"])
    assert all(set(r) == {"code", "detail"} for b in data["backends"] for r in b["reasons"])
    assert [k["kernel"] for k in data["sdpa_kernels"]][-1] == "math"


def test_flags_reach_the_spec():
    code, data = as_json("--env", H100, "--dtype", "fp16", "--head-dim-qk", "192", "--head-dim-v", "128",
                         "--heads", "16/4", "--seqlen-q", "512", "--seqlen-kv", "2048", "--mask",
                         "causal_bottom_right", "--window", "256,0", "--softcap", "30", "--deterministic",
                         "--inference", "--format", "thd")
    spec = data["spec"]
    assert (spec["dtype"], spec["head_dim_qk"], spec["head_dim_v"], spec["num_heads_q"], spec["num_heads_kv"]) \
        == ("fp16", 192, 128, 16, 4)
    assert (spec["seqlen_q"], spec["seqlen_kv"], spec["window_size"], spec["softcap"]) == (512, 2048, [256, 0], 30.0)
    assert spec["deterministic"] and not spec["training"] and spec["qkv_format"] == "thd" and spec["varlen"]
    assert code == 0 and data["chosen"] == "fa4"


@pytest.mark.parametrize("args, chosen, code", [
    (("--dropout", "0.1"), "sdpa", 3),
    (("--alibi",), "sdpa", 3),
    (("--mask", "causal", "--seqlen-q", "128", "--seqlen-kv", "512", "--alibi"), "sdpa", 3),
    (("--mask", "causal", "--seqlen-q", "128", "--seqlen-kv", "512"), "fa4", 0),  # a negative window (b30+)
    (("--mask", "causal", "--seqlen-q", "512", "--seqlen-kv", "128"), "fa4", 0),  # translated to a window
    (("--head-dim", "64", "--heads", "8"), "fa4", 0),
])
def test_exit_code_follows_the_fallback(args, chosen, code):
    result_code, data = as_json("--env", H100, *args)
    assert (result_code, data["chosen"]) == (code, chosen)


def test_policy_variables():
    code, data = as_json("--env", H100_FA3, env={"FA4DOCTOR_DISABLE": "fa4"})
    assert (code, data["chosen"], data["preferred"]) == (0, "fa3", "fa3")
    assert data["policy"]["disabled"] == ["fa4"]
    code, data = as_json("--env", H100_FA3, env={"FA4DOCTOR_BACKEND": "fa2"})
    assert code == 3 and data["chosen"] is None and "FA4DOCTOR_BACKEND=fa2" in data["message"]
    result = run("--env", H100_FA3, env={"FA4DOCTOR_BACKEND": "fa2"})
    assert result.exit_code == 3 and "fa2" in result.stdout and "cannot run this call" in result.stderr
    code, data = as_json("--env", H100, "--dropout", "0.1", env={"FA4DOCTOR_STRICT": "1"})
    assert code == 3 and "FA4DOCTOR_STRICT=1" in data["message"]


def test_several_specs_exit_with_the_worst(tmp_path):
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps({"specs": [{"name": "llama", "head_dim_qk": 128, "attn_mask_type": "causal"},
                                           {"name": "dropout", "dropout_p": 0.1}]}))
    code, data = as_json("--env", H100, "--spec", str(specs))
    assert code == 3
    assert [(e["name"], e["chosen"], e["exit_code"]) for e in data["explanations"]] == [
        ("llama", "fa4", 0), ("dropout", "sdpa", 3)]
    result = run("--env", H100, "--spec", str(specs))
    assert "llama" in result.stdout and "dropout" in result.stdout


def test_ledger_entries_replace_the_environments(tmp_path):
    from fa4doctor.names import BackendName
    from fa4doctor.dispatch.vetting import fingerprint
    from fa4doctor.probe.ledger import record

    env = load_environment(H100)
    entry = flat_entry(backend=BackendName.FA4, fingerprint=fingerprint(BackendName.FA4, env, env.gpu(0)),
                        case="bf16-d128", dtype="bf16", head_dim_qk=128, head_dim_v=128, attn_mask_type="no_mask",
                        window=False, direction="fwd", outcome="wrong_result", detail="out rel err 0.9")
    ledger = record([entry], tmp_path / "ledger.json")
    code, data = as_json("--env", H100, "--ledger", str(ledger))
    assert code == 3 and data["fallback_reason"] == "smoke_failed"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = run("--env", H100, "--ledger", str(broken))  # the user named it: exit 2, not a warning (issue 13)
    assert result.exit_code == 2 and "ignoring ledger" in result.stderr and str(broken) in result.stderr


def test_without_env_it_probes_this_machine(monkeypatch):
    calls = []

    def gather_environment(**kwargs):
        calls.append(kwargs)
        return load_environment(T4)

    monkeypatch.setitem(sys.modules, "fa4doctor.probe.gather",
                        types.SimpleNamespace(gather_environment=gather_environment))
    result = run()
    assert calls and result.exit_code == 3 and "this machine" in result.stdout


def test_a_failing_probe_is_exit_1(monkeypatch):
    def gather_environment(**kwargs):
        raise RuntimeError("NVML exploded")

    monkeypatch.setitem(sys.modules, "fa4doctor.probe.gather",
                        types.SimpleNamespace(gather_environment=gather_environment))
    result = run()
    assert result.exit_code == 1 and "internal error" in result.stderr and "NVML exploded" in result.stderr


@pytest.mark.parametrize("args, env, needle", [
    (("--dtype", "fp4"), {}, "'fp4' is not one of"),
    (("--mask", "causal_top_left"), {}, "--mask"),
    (("--heads", "6/4"), {}, "--heads"),
    (("--heads", "a/b"), {}, "expected N or Q/KV"),
    (("--window", "12"), {}, "--window"),
    (("--window", "-3,0"), {}, "--window"),
    (("--mask", "arbitrary", "--window", "8,8"), {}, "valid: no_mask"),
    (("--head-dim", "0"), {}, "--head-dim"),
    (("--dropout", "1.5"), {}, "--dropout"),
    (("--head-dim", "64", "--head-dim-qk", "64"), {}, "cannot be combined"),
    (("--gpu", "9"), {}, "no CUDA device 9"),
    (("--env", "/nonexistent/env.json"), {}, "cannot read"),
    (("--env", str(EXAMPLES / "make_examples.py")), {}, "not valid JSON"),
    ((), {"FA4DOCTOR_BACKEND": "fa5"}, "valid: fa4, fa3, fa2, sdpa"),
    ((), {"FA4DOCTOR_DISABLE": "fa4,xformers"}, "FA4DOCTOR_DISABLE"),
])
def test_bad_input_is_exit_2_with_a_clear_message(args, env, needle):
    result = run("--env", H100, *args, env=env) if "--env" not in args else run(*args, env=env)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_bad_spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps([{"head_dim_qk": 128, "attn_mask": "causal"}]))
    result = run("--env", H100, "--spec", str(path))
    assert result.exit_code == 2 and "attn_mask" in result.output and "attn_mask_type" in result.output
    path.write_text(json.dumps({"head_dim_qk": 64}))
    result = run("--env", H100, "--spec", str(path), "--head-dim", "128")
    assert result.exit_code == 2 and "--spec cannot be combined with --head-dim" in result.output


def test_help_has_examples():
    result = CliRunner().invoke(cli, ["explain", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "FA4DOCTOR_BACKEND" in result.output


def test_explain_from_a_snapshot_imports_neither_torch_nor_the_probe():
    import subprocess

    code = ("import sys; from click.testing import CliRunner; from fa4doctor.cli import cli; "
            f"r = CliRunner().invoke(cli, ['explain', '--env', {H100!r}, '--json']); "
            "print(r.exit_code, sorted(m for m in ('torch', 'pynvml', 'fa4doctor.probe.gather') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "[]"]
