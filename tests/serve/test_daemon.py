"""The daemon keeps going whatever its children and NVML do."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from fa4doctor.serve.collector import Collector
from fa4doctor.serve.children import run_child
from fa4doctor.serve.daemon import Daemon, ServeConfig
from fa4doctor.probe.nvml import FakeNvml, NvmlFailure
from tests.serve.helpers import check_report, printing, script

SMOKE = {"schema": "fa4doctor.smoke", "schema_version": 1, "level": "quick", "cases": []}
GPUS = {"devices": [
    {"nvmlDeviceGetUUID": "GPU-busy", "nvmlDeviceGetComputeRunningProcesses": 2},
    {"nvmlDeviceGetUUID": "GPU-idle", "nvmlDeviceGetComputeRunningProcesses": 0},
]}


def make(tmp_path, probe=None, smoke=None, nvml=GPUS, **config) -> Daemon:
    config = ServeConfig(probe_command=probe or printing(tmp_path, "probe", check_report()),
                         smoke_command=smoke or printing(tmp_path, "smoke", SMOKE), **config)
    factory = (lambda: FakeNvml(nvml)) if isinstance(nvml, dict) else nvml
    return Daemon(config, nvml_factory=factory)


def sample(daemon, name, labels=None):
    registry = CollectorRegistry()
    registry.register(Collector(lambda: daemon.state, renderers={}))
    return registry.get_sample_value(name, labels or {})


def test_a_good_probe_makes_the_daemon_ready_and_up(tmp_path):
    daemon = make(tmp_path)
    assert daemon.probe_once().outcome == "ok"
    assert daemon.state.ready and daemon.state.check["schema"] == "fa4doctor.check"
    assert sample(daemon, "fa4doctor_probe_up") == 1
    assert sample(daemon, "fa4doctor_probe_last_success_timestamp_seconds") > 0


def test_exit_3_is_a_report_of_problems_not_a_failure(tmp_path):
    daemon = make(tmp_path, probe=printing(tmp_path, "p3", check_report(healthy=False), exit_code=3))
    assert daemon.probe_once().outcome == "ok" and daemon.state.probe_up


@pytest.mark.parametrize("body, outcome", [
    ("import os; os.abort()", "crash"),
    ("import sys; sys.exit(1)", "failed"),
    ("print('not json')", "bad_output"),
    ("import json; print(json.dumps({'schema': 'something.else'}))", "bad_output"),
])
def test_a_broken_probe_child_is_a_failure_and_the_last_report_stays(tmp_path, body, outcome, capsys):
    daemon = make(tmp_path)
    daemon.probe_once()
    good = daemon.state.check
    daemon.config = ServeConfig(probe_command=script(tmp_path, "bad", body))
    result = daemon.probe_once()
    assert result.outcome == outcome
    assert f"fa4doctor serve: check cycle {outcome}" in capsys.readouterr().err  # the log says what happened
    assert daemon.state.check is good and not daemon.state.probe_up and daemon.state.ready
    assert sample(daemon, "fa4doctor_probe_up") == 0
    assert sample(daemon, "fa4doctor_probe_failures_total", {"outcome": outcome}) == 1


def test_a_hanging_probe_is_killed_with_its_children_at_the_timeout(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    hang = script(tmp_path, "hang", f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        time.sleep(120)
    """)
    daemon = make(tmp_path, probe=hang, probe_timeout=1.5)
    begin = time.monotonic()
    assert daemon.probe_once().outcome == "timeout"
    assert time.monotonic() - begin < 10
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.05)
    assert not _alive(grandchild), "the probe's own children must die with it"
    assert sample(daemon, "fa4doctor_probe_failures_total", {"outcome": "timeout"}) == 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_missing_child_executable_is_reported(tmp_path):
    result = run_child(["/nonexistent/fa4doctor-child"], timeout=5, schema="fa4doctor.check")
    assert result.outcome == "spawn_failed"


def test_smoke_runs_only_on_idle_gpus_by_uuid(tmp_path):
    seen = tmp_path / "seen.txt"
    smoke = script(tmp_path, "smoke", f"""
        import json, os, sys
        open({str(seen)!r}, "w").write(os.environ["CUDA_VISIBLE_DEVICES"] + " " + " ".join(sys.argv[1:]))
        print(json.dumps({{"schema": "fa4doctor.smoke", "cases": []}}))
    """)
    daemon = make(tmp_path, smoke=smoke)
    assert daemon.smoke_once().outcome == "ok"
    assert seen.read_text() == "GPU-idle --level quick"
    assert daemon.state.smoke["schema"] == "fa4doctor.smoke"
    assert sample(daemon, "fa4doctor_gpu_compute_processes", {"gpu": "0", "UUID": "GPU-busy"}) == 2


def test_smoke_is_skipped_when_every_gpu_is_busy_or_off(tmp_path):
    busy = {"devices": [{"nvmlDeviceGetUUID": "GPU-a", "nvmlDeviceGetComputeRunningProcesses": 1}]}
    daemon = make(tmp_path, smoke=script(tmp_path, "boom", "raise SystemExit('must not run')"), nvml=busy)
    assert daemon.smoke_once() is None
    assert sample(daemon, "fa4doctor_serve_smoke_skips_total", {"reason": "gpus_busy"}) == 1
    off = make(tmp_path, smoke_level="off")
    assert off.smoke_once() is None and off.state.smoke_runs == 0


def _raise_missing():
    raise NvmlFailure(12, "NVML Shared Library Not Found")


class BrokenNvml(FakeNvml):
    def call(self, name, *args):
        if name == "nvmlDeviceGetCount":
            raise NvmlFailure(15, "GPU is lost")
        return super().call(name, *args)


@pytest.mark.parametrize("nvml", [
    lambda: None,
    lambda: FakeNvml({"init_error": 12}),
    lambda: BrokenNvml({"devices": []}),
    _raise_missing,
], ids=["absent", "init-fails", "call-fails", "factory-raises"])
def test_missing_or_broken_nvml_never_stops_probe_or_serving(tmp_path, nvml):
    daemon = make(tmp_path, nvml=nvml, interval=1, smoke_interval=1)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and daemon.state.probe_cycles < 2:
            time.sleep(0.05)
    finally:
        daemon.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert daemon.state.probe_up and daemon.state.probe_cycles >= 2
    assert not daemon.state.nvml_up and daemon.state.smoke_runs == 0
    assert sample(daemon, "fa4doctor_nvml_poll_up") == 0
    assert sample(daemon, "fa4doctor_serve_smoke_skips_total", {"reason": "nvml_unavailable"}) >= 1


def test_stop_kills_a_running_child_promptly(tmp_path):
    daemon = make(tmp_path, probe=script(tmp_path, "slow", "import time; time.sleep(60)"),
                  probe_timeout=60)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    time.sleep(0.5)
    begin = time.monotonic()
    daemon.stop()
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - begin < 5


def test_children_get_the_ledger_but_never_the_metrics_directory(tmp_path):
    daemon = Daemon(ServeConfig(ledger="/x/ledger.json", metrics_dir=str(tmp_path)),
                    environ={"FA4DOCTOR_METRICS_DIR": "/m", "PROMETHEUS_MULTIPROC_DIR": "/m", "A": "1"})
    env = daemon.child_env()
    assert env["FA4DOCTOR_LEDGER"] == "/x/ledger.json" and env["A"] == "1"
    assert "FA4DOCTOR_METRICS_DIR" not in env and "PROMETHEUS_MULTIPROC_DIR" not in env


def test_bad_configuration_names_the_setting():
    with pytest.raises(ValueError, match="smoke_level.*valid: off, quick, standard, thorough"):
        ServeConfig(smoke_level="long")
    with pytest.raises(ValueError, match="interval"):
        ServeConfig(interval=0)


def test_the_daemon_modules_never_import_torch():
    code = ("import sys, fa4doctor.cli.serve, fa4doctor.serve.collector, fa4doctor.serve.server,"
            " fa4doctor.exporters.metrics_smoke, fa4doctor.exporters.metrics_env;"
            "bad = [m for m in ('torch', 'flash_attn', 'pynvml') if m in sys.modules]; print(bad)")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_smoke_levels_are_the_smoke_commands_own():
    from fa4doctor.serve.daemon import SMOKE_LEVELS
    from fa4doctor.smoke.cases import LEVELS

    assert SMOKE_LEVELS == ("off", *LEVELS)
