"""`fa4doctor bench`: help, usage errors (exit 2 naming the valid choices), the refusal without
CUDA (exit 3), the JSON report's schema, and `explain` under `FA4DOCTOR_POLICY=fastest` reading it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fa4doctor.cli import cli
from fa4doctor.cli.bench import ZOO_NAMES
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import Environment, LedgerEntry
from fa4doctor.names import BackendName
from fa4doctor.probe.ledger import record
from fa4doctor.smoke import zoo

ROOT = Path(__file__).resolve().parents[2]
BENCH_FAKES = ROOT / "tests" / "smoke" / "bench_fakes.py"
TINY = {"name": "tiny", "dtype": "bf16", "head_dim_qk": 64, "num_heads_q": 2, "seqlen_q": 128,
        "attn_mask_type": "causal"}


def _smoke_passes(snapshot: Path) -> list[LedgerEntry]:
    env = Environment.from_json(snapshot.read_text())
    spec = AttentionSpec.from_dict({k: v for k, v in TINY.items() if k != "name"})
    return [LedgerEntry(backend=b, fingerprint=fingerprint(b, env, env.gpus[0]), case="x", case_class=case_class(spec),
                        direction=d, outcome="pass", gpu_uuid=env.gpus[0].uuid)
            for b in (BackendName.FA4, BackendName.SDPA) for d in ("fwd", "bwd")]


def _run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture
def files(tmp_path):
    from smoke.conftest import fa4_env  # tests/ is on sys.path (tests/conftest.py)

    (tmp_path / "env.json").write_text(fa4_env("4.0.0b40").to_json())
    (tmp_path / "cpu.json").write_text(Environment().to_json())
    (tmp_path / "spec.json").write_text(json.dumps([TINY]))
    return tmp_path


def test_help_names_the_zoo_and_the_command_is_listed():
    assert ZOO_NAMES == zoo.ZOO_NAMES  # repeated in the CLI so --help imports nothing heavy
    result = _run("bench", "--help")
    assert result.exit_code == 0 and "llama-3-8b-decode" in result.output and "--seqlens" in result.output
    assert "bench" in _run("--help").output


@pytest.mark.parametrize("args,message", [
    (["--zoo", "llama-4"], "zoo: unknown zoo model 'llama-4' (valid: all, none, llama-3-8b, gpt-2"),
    (["--seqlens", "1k"], "seqlens: '1k' is not a sequence length from 1 to 1048576"),
    (["--seqlens", ","], "seqlens: no sequence length"),
    (["--rounds", "0"], "--rounds"),
    (["--warmup", "0"], "--warmup"),
    (["--backend", "fa5"], "'fa5' is not one of 'fa4', 'fa3', 'fa2', 'sdpa'"),
    (["--zoo", "none", "--no-default-specs"], "nothing to time"),
    (["--model", "no-such-folder"], "no-such-folder"),
    (["--gpu", "7"], "gpu: no visible GPU '7'"),
])
def test_bad_arguments_exit_2_naming_the_valid_choices(files, args, message):
    result = _run("bench", "--env", str(files / "env.json"), "--no-record", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_without_cuda_it_refuses_with_exit_3_and_says_why(files):
    result = _run("bench", "--env", str(files / "cpu.json"), "--no-record")
    assert result.exit_code == 3
    assert "no CUDA GPU is visible here" in result.stderr and "run it on a GPU node" in result.stderr


def test_json_report_schema_and_the_fastest_policy_reading_it(files):
    ledger = files / "ledger.json"
    seam = {"FA4DOCTOR_SMOKE_FAKE": f"{BENCH_FAKES}:paced"}
    result = _run("bench", "--env", str(files / "env.json"), "--zoo", "none", "--no-default-specs", "--spec",
                  str(files / "spec.json"), "--warmup", "1", "--rounds", "3", "--json", "--ledger", str(ledger),
                  env=seam)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["schema"], report["schema_version"], report["healthy"]) == ("fa4doctor.bench", 1, True)
    assert set(report) >= {"flops", "settings", "ledger", "gpus", "shapes", "results", "winners", "not_timed"}
    assert report["settings"]["rounds"] == 3 and report["settings"]["interleaved"] is True
    shape = report["shapes"][0]
    assert shape["batch"] == 128 and set(shape["flops"]) == {"fwd", "fwd_bwd"}
    assert shape["shape_class"]["seqlen_q"] == 128 and shape["shape_class"]["case_class"]["head_dim_qk"] == 64
    result_keys = {"shape", "backend", "kernel", "direction", "outcome", "median_ms", "min_ms", "max_ms",
                   "samples_ms", "rounds", "inner", "tflops", "gpu", "gpu_uuid"}
    assert all(set(r) >= result_keys for r in report["results"]) and len(report["results"]) == 10
    assert {(w["backend"], w["kernel"]) for w in report["winners"]} == {("sdpa", "cudnn")}
    assert "bench 10/10: tiny " in result.stderr  # progress on stderr, a line per figure
    record(_smoke_passes(files / "env.json"), ledger)  # what `fa4doctor smoke --spec` records for TINY's class
    explained = _run("explain", "--env", str(files / "env.json"), "--ledger", str(ledger), "--head-dim", "64",
                     "--heads", "2", "--seqlen-q", "150", "--mask", "causal", "--json",
                     env={"FA4DOCTOR_POLICY": "fastest"})
    plain = json.loads(explained.stdout)
    assert explained.exit_code == 0
    assert (plain["chosen"], plain["sdpa_kernel"], plain["outcome"]) == ("sdpa", "cudnn", "outpaced")
    assert plain["policy"]["order"] == "fastest" and plain["speed_class"] == "bf16 d64 causal s128 fwd_bwd"
    assert [m["backend"] for m in plain["measured"]] == ["fa4", "sdpa", "sdpa", "sdpa", "sdpa"]
    text = _run("explain", "--env", str(files / "env.json"), "--ledger", str(ledger), "--head-dim", "64",
                "--heads", "2", "--seqlen-q", "150", "--mask", "causal", env={"FA4DOCTOR_POLICY": "fastest"}).output
    assert "measured here: bf16 d64 causal s128 fwd_bwd" in text and "kept to its cudnn kernel" in text


@pytest.mark.parametrize("command", [["explain", "--device", "cpu"], ["check", "--json", "--no-imports"]])
def test_a_bad_policy_value_is_a_usage_error(files, command):
    args = [*command, "--env", str(files / "cpu.json")] if command[0] == "explain" else command
    result = _run(*args, env={"FA4DOCTOR_POLICY": "speed"})
    assert result.exit_code == 2, result.output
    assert "FA4DOCTOR_POLICY: unknown policy 'speed' (valid: priority, fastest)" in result.output


def test_model_calls_are_timed_at_their_own_lengths(files):
    """`--model`: every distinct call the model makes (training, prefill, decode) is a bench shape."""
    seam = {"FA4DOCTOR_SMOKE_FAKE": f"{BENCH_FAKES}:paced"}
    result = _run("bench", "--env", str(files / "env.json"), "--zoo", "none", "--no-default-specs", "--model",
                  str(ROOT / "examples" / "models" / "gemma-2-9b"), "--warmup", "1", "--rounds", "1", "--json",
                  "--no-record", env=seam)
    assert result.exit_code == 0, result.output
    names = [shape["name"] for shape in json.loads(result.stdout)["shapes"]]
    assert names == [f"gemma2_{kind}_{phase}" for phase in ("train", "prefill", "decode") for kind in ("sliding", "full")]
