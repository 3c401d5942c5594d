"""`--model` on explain, check and smoke: the derived calls printed and judged; bad configs exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli
from fa4doctor.models import layers_text, load_model, model_calls

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = sorted(p for p in (EXAMPLES / "models").iterdir() if (p / "config.json").is_file())
H100 = str(EXAMPLES / "h100-fa4-b36.json")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"


def run(*args: str):
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_explain_prints_every_derived_call_then_judges_it(model):
    result = run("explain", "--model", str(model), "--env", H100)
    assert result.exit_code == 0, result.output
    calls = model_calls(load_model(model))
    table, judged = result.stdout.split("environment:", 1)
    assert f"model: {model / 'config.json'}" in table
    for call in calls:
        row = next(line for line in table.splitlines() if line.startswith(call.name + " "))
        assert layers_text(call.layers) in row and f"{call.spec.seqlen_q}/{call.spec.seqlen_kv}" in row
        assert f"{call.name}: {call.spec.short()}" in judged
    assert judged.count("chosen: fa4") == len(calls)


def test_explain_json_holds_the_model_and_one_explanation_per_call():
    result = run("explain", "--model", str(EXAMPLES / "models" / "gemma-2-9b"), "--env", H100, "--json",
                 "--seqlen-q", "2048", "--dtype", "fp16")
    data = json.loads(result.stdout)
    calls = data["model"]["calls"]
    assert [c["name"] for c in calls] == [e["name"] for e in data["explanations"]]
    assert data["model"]["model_type"] == "gemma2" and len(calls) == 6
    sliding = next(c for c in calls if c["name"] == "gemma2_sliding_decode")
    assert sliding["layers"] == list(range(0, 42, 2)) and sliding["softmax_scale"] == 256 ** -0.5
    assert sliding["spec"]["window_size"] == [4095, 0] and sliding["spec"]["seqlen_kv"] == 2048
    assert {c["spec"]["dtype"] for c in calls} == {"fp16"} and {c["spec"]["softcap"] for c in calls} == {50.0}


def test_an_unknown_model_type_exits_2_naming_the_fields_it_lacks(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "made_up_lm", "hidden_size": 512,
                                                      "num_hidden_layers": 8}))
    for command in (["explain", "--env", H100], ["smoke", "--device", "cpu", "--no-record"],
                    ["check", "--no-imports", "--nvml-replay", str(FIXTURES / "healthy_h100.json")]):
        result = run(*command, "--model", str(tmp_path))
        assert result.exit_code == 2, (command, result.output)
        for word in ("'made_up_lm'", "not understood", "num_attention_heads, num_key_value_heads", "llama"):
            assert word in result.stderr, (command, result.stderr)


@pytest.mark.parametrize("args, needle", [
    (("--heads", "32/8"), "--model cannot be combined with --heads"),
    (("--spec", str(EXAMPLES / "h100-fa4-b36.json")), "--model cannot be combined with --spec"),
])
def test_model_and_shape_flags_do_not_mix(args, needle):
    result = run("explain", "--model", str(EXAMPLES / "models" / "llama-3-8b"), "--env", H100, *args)
    assert result.exit_code == 2 and needle in result.stderr


def test_a_missing_config_exits_2(tmp_path):
    result = run("explain", "--model", str(tmp_path), "--env", H100)
    assert result.exit_code == 2 and "config.json" in result.stderr


def test_check_judges_the_model_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FA4DOCTOR_LEDGER", str(tmp_path / "ledger.json"))
    result = run("check", "--json", "--no-imports", "--model", str(EXAMPLES / "models" / "gpt-oss-20b"),
                 "--nvml-replay", str(FIXTURES / "healthy_h100.json"))
    names = {v["spec_name"] for v in json.loads(result.stdout)["verdicts"]}
    assert {f"gpt_oss_{kind}_{phase}" for kind in ("sliding", "full")
            for phase in ("train", "prefill", "decode")} <= names
