"""`promtool check metrics` on a real scrape of the daemon, and `promtool test rules` on the alerts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from fa4doctor.serve.collector import Collector
from fa4doctor.serve.gpu_load import GpuLoad
from fa4doctor.serve.state import DaemonState
from fa4doctor.serve.revet import Vetting
from fa4doctor.serve.server import make_server
from tests.serve.helpers import write_counters

ROOT = Path(__file__).resolve().parents[2]
SMOKE = {"schema": "fa4doctor.smoke", "schema_version": 1, "level": "quick", "ledger": None,
         "phases": {"import_seconds": 1.0, "compile_seconds": 2.0, "run_seconds": 0.5, "total_seconds": 3.5},
         "cases": [
             {"backend": "fa4", "gpu": 0, "gpu_uuid": "GPU-1", "case": "causal_bf16_d128", "spec": {},
              "direction": "fwd", "outcome": "wrong_result", "detail": "max error 0.5",
              "errors": {"out": 0.5, "dq": None, "dk": None, "dv": None}, "tolerances": {},
              "compile_seconds": 2.0, "run_seconds": 0.1},
             {"backend": "sdpa", "gpu": 0, "gpu_uuid": "GPU-1", "case": "causal_bf16_d128", "spec": {},
              "direction": "bwd", "outcome": "pass", "detail": "",
              "errors": {"out": 0.001, "dq": 0.002, "dk": 0.002, "dv": 0.001}, "tolerances": {},
              "compile_seconds": 0.0, "run_seconds": 0.1}]}


@pytest.fixture(scope="module")
def check_report() -> dict:
    """A real `fa4doctor check --json` of this machine (exit 0 or 3 are both reports)."""
    out = subprocess.run([sys.executable, "-m", "fa4doctor", "check", "--json"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def scrape(tmp_path, state: DaemonState) -> str:
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 5, "fa4": 2},
                   {("fa4", "sdpa", "not_installed"): 5})
    (tmp_path / "counter_2-corrupt0.db").write_bytes(b"\x01" * 100)
    server = make_server("127.0.0.1", 0, state=lambda: state,
                         collector=Collector(lambda: state, metrics_dir=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_a_full_scrape_passes_promtool_check_metrics(tmp_path, promtool, check_report):
    state = DaemonState(ready=True, check=check_report, smoke=SMOKE, probe_up=True,
                        probe_last_success=1.7e9, probe_last_seconds=3.2, probe_cycles=4,
                        probe_failures=(("timeout", 1),), smoke_runs=1, smoke_skips=(("gpus_busy", 2),),
                        nvml_up=True, gpus=(GpuLoad(0, "GPU-1", 0),), smoke_last_success=1.7e9,
                        vetting=(Vetting("fa4", 0, "GPU-1", False), Vetting("sdpa", 0, "GPU-1", True)),
                        revet_pending=True, revet_runs=1, revet_failures=(("timeout", 1),))
    text = scrape(tmp_path, state)
    for name in ("fa4doctor_backend_available", "fa4doctor_probe_up", "fa4doctor_dispatch_calls_total",
                 "fa4doctor_smoke_cases", "fa4doctor_metrics_dir_files", "fa4doctor_vetting_current",
                 "fa4doctor_unvetted_calls_total", "fa4doctor_serve_revet_failures_total"):
        assert name in text
    (tmp_path / "scrape.txt").write_text(text)
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "" and out.stderr.strip() == ""


def test_promtool_would_catch_a_bad_metric(promtool):
    """The check above can fail: promtool flags a counter without `_total` (exit 3 is lint)."""
    bad = "# HELP fa4doctor_bad_count x\n# TYPE fa4doctor_bad_count counter\nfa4doctor_bad_count 1\n"
    out = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True)
    assert out.returncode != 0


@pytest.mark.parametrize("tests", sorted((ROOT / "deploy" / "prometheus").glob("*.test.yaml")),
                         ids=lambda p: p.name)
def test_alerting_rules_unit_tests(promtool, tests):
    out = subprocess.run([promtool, "test", "rules", tests.name], cwd=tests.parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_files_check(promtool):
    files = sorted((ROOT / "deploy" / "prometheus").glob("*-rules.yaml"))
    assert files, "no rule files found"
    for rules in files:
        out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
