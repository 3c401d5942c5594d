"""`fa4doctor check` end to end: JSON contract, exit statuses, usage errors, textfile, no torch import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from probe_fakes import fa4, fa4_deps

from fa4doctor.cli import cli
from fa4doctor.environment import Environment, LedgerEntry, load_environment
from ledger_helpers import flat_entry

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvml"
REPO = Path(__file__).parent.parent.parent


@pytest.fixture
def fa4_site(tmp_path) -> Path:
    """An FA4 b36 install in a --target style directory, found through PYTHONPATH as on the GPU node."""
    site = tmp_path / "target"
    fa4(site)
    fa4_deps(site)
    return site


def run_check(tmp_path, *args, site: Path | None = None, extra_env=None):
    """`python -m fa4doctor check` in a fresh process, with its own caches and ledger."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "FA4DOCTOR_LEDGER": str(tmp_path / "ledger.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site) if site else "", str(REPO)])), **(extra_env or {})}
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "FA4DOCTOR_BACKEND", "FA4DOCTOR_DISABLE"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "fa4doctor", "check", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def invoke(tmp_path, monkeypatch, *args):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FA4DOCTOR_LEDGER", str(tmp_path / "ledger.json"))
    return CliRunner().invoke(cli, ["check", *args])


def test_json_follows_the_contract_and_loads_back(tmp_path, monkeypatch):
    result = invoke(tmp_path, monkeypatch, "--json", "--no-imports", "--nvml-replay", str(FIXTURES / "mixed_gpus.json"))
    assert result.exit_code == 3, result.output
    report = json.loads(result.output)
    assert (report["schema"], report["schema_version"]) == ("fa4doctor.check", 1)
    assert set(report) >= {"environment", "verdicts", "problems", "healthy", "exit_code", "timings", "smoke"}
    verdict = report["verdicts"][0]
    assert set(verdict) >= {"gpu", "gpu_uuid", "gpu_name", "spec_name", "spec", "preferred", "chosen", "backends"}
    assert report["timings"]["total_seconds"] > 0 and report["smoke"] is None
    assert {"setup_seconds", "packages_seconds", "nvml_seconds", "nvml_wait_seconds"} <= set(report["timings"])
    assert all(set(p) == {"code", "severity", "message", "fix"} for p in report["problems"])
    env = Environment.from_plain(report)
    assert [g.name for g in env.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla T4"]
    (tmp_path / "check.json").write_text(result.output)
    assert load_environment(tmp_path / "check.json") == env
    explained = CliRunner().invoke(cli, ["explain", "--env", str(tmp_path / "check.json")])
    assert explained.exit_code in (0, 3) and "chosen: " in explained.output, explained.output


def test_healthy_h100_with_fa4_exits_0(tmp_path, fa4_site):
    result = run_check(tmp_path, "--json", "--no-imports", "--nvml-replay", str(FIXTURES / "healthy_h100.json"),
                       site=fa4_site)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["problems"]
    assert {v["chosen"] for v in report["verdicts"]} == {"fa4"} and report["healthy"] is True
    fa4 = Environment.from_plain(report).backends[0]
    assert (fa4.distribution, fa4.version) == ("flash-attn-4", "4.0.0b36")  # metadata found on PYTHONPATH


def test_expect_names_the_backend_that_must_win(tmp_path, fa4_site):
    result = run_check(tmp_path, "--json", "--no-imports", "--expect", "SDPA", "--nvml-replay",
                       str(FIXTURES / "healthy_h100.json"), site=fa4_site)
    assert result.returncode == 3
    assert json.loads(result.stdout)["problems"][-1]["code"] == "sdpa_not_eligible"


@pytest.mark.slow
def test_check_without_smoke_never_imports_torch_or_attention_libraries(tmp_path, fa4_site):
    code = ("import sys\nfrom fa4doctor.cli import cli\n"
            "try:\n    cli(['check', '--json', '--nvml-replay', sys.argv[1]], standalone_mode=False)\n"
            "except SystemExit:\n    pass\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'flash_attn', 'flash_attn_interface', "
            "'cutlass', 'rich')]\n"
            "print('IMPORTED', bad, file=sys.stderr)\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "FA4DOCTOR_LEDGER": str(tmp_path / "l.json"),
           "PYTHONPATH": os.pathsep.join([str(fa4_site), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "healthy_h100.json")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "IMPORTED []" in result.stderr, result.stderr[-2000:]
    report = json.loads(result.stdout)
    # the imports did run, in child processes: FA4's fake tree has no real cutlass behind it
    assert report["environment"]["backends"][0]["import_status"] != "not_checked"


def test_spec_file_adds_verdicts(tmp_path, monkeypatch):
    spec = tmp_path / "specs.json"
    spec.write_text(json.dumps({"specs": [{"name": "my_window", "head_dim_qk": 96, "window_size": [128, 0]}]}))
    result = invoke(tmp_path, monkeypatch, "--json", "--no-imports", "--spec", str(spec),
                    "--nvml-replay", str(FIXTURES / "healthy_h100.json"))
    names = [v["spec_name"] for v in json.loads(result.output)["verdicts"]]
    assert names[-1] == "my_window" and len(names) == 7


@pytest.mark.parametrize("args, words", [
    (["--expect", "fa5"], ["--expect", "fa4", "sdpa"]),
    (["--spec", "/nonexistent/specs.json"], ["cannot read"]),
    (["--textfile", "/tmp/metrics.txt"], [".prom"]),
    (["--textfile", "/nonexistent-dir/x.prom"], ["does not exist"]),
    (["--smoke", "forever"], ["--smoke", "quick", "thorough"]),
    (["--gpu", "-1"], ["--gpu"]),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, monkeypatch, args, words):
    result = invoke(tmp_path, monkeypatch, "--no-imports", "--nvml-replay", str(FIXTURES / "healthy_h100.json"), *args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and all(w in result.output for w in words)


def test_bad_spec_field_names_the_field(tmp_path, monkeypatch):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps([{"name": "x", "attn_mask_type": "diagonal"}]))
    result = invoke(tmp_path, monkeypatch, "--no-imports", "--spec", str(spec))
    assert result.exit_code == 2 and "attn_mask_type" in result.output and "causal_bottom_right" in result.output


def test_textfile_and_terminal_report(tmp_path, monkeypatch):
    prom = tmp_path / "fa4doctor.prom"
    result = invoke(tmp_path, monkeypatch, "--no-imports", "--textfile", str(prom),
                    "--nvml-replay", str(FIXTURES / "pcie_downtrained.json"))
    assert result.exit_code == 3
    for section in ("Software", "GPUs", "Backends", "Eligibility", "Problems", "pcie_downtrained",
                    "reseat the card", "exit status 3"):
        assert section in result.output
    text = prom.read_text()
    assert "fa4doctor_probe_up 1.0" in text and 'fa4doctor_gpu_pcie_downtrained{' in text


def test_gpu_filter(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    result = invoke(tmp_path, monkeypatch, "--json", "--no-imports", "--gpu", "2",
                    "--nvml-replay", str(FIXTURES / "mixed_gpus.json"))
    assert {v["gpu_name"] for v in json.loads(result.output)["verdicts"]} == {"Tesla T4"}


def test_smoke_results_feed_the_verdicts(tmp_path, monkeypatch):
    from fa4doctor.names import BackendName
    from fa4doctor.smoke.cases import LEVELS

    from fa4doctor.cli.check import BACKENDS, SMOKE_LEVELS

    assert SMOKE_LEVELS == tuple(LEVELS) and BACKENDS == tuple(b.value for b in BackendName)
    calls = {}

    class FakeReport:
        ledger_entries = (flat_entry(backend=BackendName.SDPA, fingerprint="x", case="c", dtype="bf16",
                                      head_dim_qk=128, head_dim_v=128, attn_mask_type="causal", window=False,
                                      direction="fwd", outcome="pass"),)

        def to_plain(self):
            return {"schema": "fa4doctor.smoke", "schema_version": 1, "level": "quick", "cases": []}

    def fake_run_smoke(env, *, level, progress=None, ledger_path=None, **_):
        calls.update(level=level, gpus=len(env.gpus))
        return FakeReport()

    monkeypatch.setattr("fa4doctor.smoke.run_smoke", fake_run_smoke)
    result = invoke(tmp_path, monkeypatch, "--json", "--no-imports", "--smoke", "quick",
                    "--nvml-replay", str(FIXTURES / "healthy_h100.json"))
    report = json.loads(result.output)
    assert calls == {"level": "quick", "gpus": 1}
    assert report["smoke"]["schema"] == "fa4doctor.smoke"
    assert len(report["environment"]["ledger"]) == 1


def test_a_set_fa4_knob_is_a_problem_in_json_and_text(tmp_path, monkeypatch, fa4_site):
    from fa4doctor.probe.knobs import KNOBS

    for knob in KNOBS:
        monkeypatch.delenv(knob.name, raising=False)
    monkeypatch.setenv("FA_DISABLE_2CTA", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.syspath_prepend(str(fa4_site))  # FA4 installed: the knobs are read by something
    replay = ("--no-imports", "--nvml-replay", str(FIXTURES / "healthy_h100.json"))
    report = json.loads(invoke(tmp_path, monkeypatch, "--json", *replay).output)
    (problem,) = [p for p in report["problems"] if p["code"] == "fa4_knob_set"]
    assert problem["severity"] == "warning"
    assert problem["message"].startswith("FA_DISABLE_2CTA='1' is set: 1 turns off the 2-CTA kernels")
    assert problem["fix"].startswith("unset FA_DISABLE_2CTA unless intended")
    assert report["environment"]["knobs"] == [{"name": "FA_DISABLE_2CTA", "value": "1", "changes_kernels": True}]
    text = invoke(tmp_path, monkeypatch, *replay).output
    assert "fa4_knob_set: FA_DISABLE_2CTA='1' is set" in text and "unset FA_DISABLE_2CTA unless intended" in text


def _nvml_works() -> bool:
    from fa4doctor.probe.nvml import NvmlFailure, PynvmlSource

    source = PynvmlSource()
    try:
        source.init()
    except NvmlFailure:
        return False
    source.shutdown()
    return True


@pytest.mark.gpu
@pytest.mark.slow
def test_real_gpu_node(tmp_path):
    """On a GPU node (with FA4 on PYTHONPATH, as scripts install it): the real probe, end to end."""
    if not _nvml_works():
        pytest.skip("no NVIDIA driver here (NVML does not initialise)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "FA4DOCTOR_LEDGER": str(tmp_path / "l.json")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", ""), str(REPO)]))
    result = subprocess.run([sys.executable, "-m", "fa4doctor", "check", "--json"], env=env, capture_output=True,
                            text=True, timeout=300)
    report = json.loads(result.stdout)
    assert result.returncode == report["exit_code"] in (0, 3)
    environment = Environment.from_plain(report)
    assert environment.driver.nvml_status == "ok" and environment.gpus
    assert all(g.uuid and g.compute_capability != (0, 0) for g in environment.gpus)
    sdpa = environment.backends[-1]
    assert sdpa.import_status.value == "ok" and environment.torch.cxx11_abi is not None
    fa4 = environment.backends[0]
    if fa4.version is not None and environment.gpus[0].compute_capability[0] in (9, 10):
        assert fa4.import_status.value == "ok", fa4.import_error
        chosen = {v["spec_name"]: v["chosen"] for v in report["verdicts"] if v["gpu"] == 0}
        assert chosen["bf16_d128_causal_train"] == "fa4"
    again = subprocess.run([sys.executable, "-m", "fa4doctor", "check", "--json"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert json.loads(again.stdout)["timings"]["imports_seconds"] < 0.5  # served from the import cache
