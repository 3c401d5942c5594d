"""Re-vetting after a fingerprint change: scheduled by the probe, run first on an idle GPU, once per
change; `fa4doctor_vetting_current` says when the ledger covers the plan."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from fa4doctor.dispatch.spec import SpecError
from fa4doctor.dispatch.vetting import case_class, directions
from fa4doctor.environment import DriverInfo, Environment, GpuFacts, LedgerEntry, TorchInfo
from fa4doctor.probe import ledger
from fa4doctor.probe.nvml import FakeNvml
from fa4doctor.serve import revet
from fa4doctor.serve.collector import Collector
from fa4doctor.serve.daemon import Daemon, ServeConfig
from tests.serve.helpers import check_report, printing, script

H100 = "NVIDIA H100 80GB HBM3"
NODE = Environment(torch=TorchInfo(version="2.9.0", cuda="12.8"),
                   driver=DriverInfo(nvml_status="ok", driver_version="580.65.06"),
                   gpus=tuple(GpuFacts(name=H100, compute_capability=(9, 0), cuda_index=i, nvml_index=i, uuid=u)
                              for i, u in enumerate(("GPU-busy", "GPU-idle"))))


def loads(*processes: int) -> dict:
    return {"devices": [{"nvmlDeviceGetUUID": uuid, "nvmlDeviceGetComputeRunningProcesses": n}
                        for uuid, n in zip(("GPU-busy", "GPU-idle"), processes)]}


class Node:
    """A daemon whose probe child reports `env` (rewritten by `upgrade`) and whose smoke child logs
    each run's level, GPUs and spec names, then copies `covered` (if any) into the ledger."""

    def __init__(self, tmp_path, env=NODE, nvml=None, smoke_exit=0, **config):
        self.tmp, self.env = tmp_path, env
        self.nvml = nvml or loads(2, 0)
        self.ledger, self.log, self.covered = tmp_path / "ledger.json", tmp_path / "runs.jsonl", tmp_path / "covered.json"
        probe = printing(tmp_path, "probe", self.report(env))
        smoke = script(tmp_path, "smoke", f"""
            import json, os, shutil, sys
            args = sys.argv[1:]
            specs = json.load(open(args[args.index("--spec") + 1]))["specs"] if "--spec" in args else []
            with open({str(self.log)!r}, "a") as log:
                log.write(json.dumps({{"level": args[args.index("--level") + 1],
                                       "gpus": os.environ["CUDA_VISIBLE_DEVICES"],
                                       "specs": [s["name"] for s in specs]}}) + "\\n")
            if os.path.exists({str(self.covered)!r}):
                shutil.copy({str(self.covered)!r}, os.environ["FA4DOCTOR_LEDGER"])
            print(json.dumps({{"schema": "fa4doctor.smoke", "cases": []}}))
            sys.exit({smoke_exit})
        """)
        self.daemon = Daemon(ServeConfig(probe_command=probe, smoke_command=smoke, ledger=str(self.ledger), **config),
                             nvml_factory=lambda: FakeNvml(self.nvml))

    @staticmethod
    def report(env: Environment) -> dict:
        return check_report(environment=env.to_plain())

    def upgrade(self, **torch) -> None:
        """The next probe sees a new torch: every fingerprint changes."""
        self.env = replace(self.env, torch=replace(self.env.torch, **torch))
        (self.tmp / "probe.json").write_text(json.dumps(self.report(self.env)))

    def cover(self) -> None:
        """What a real smoke run of the plan records: an entry per case and direction."""
        entries = [LedgerEntry(backend=t.backend, fingerprint=t.fingerprint, case=c.name, case_class=case_class(c.spec),
                               direction=d, outcome="pass", gpu_uuid=t.gpu.uuid)
                   for t in revet.targets(self.env, self.daemon._plan) for c in t.cases for d in directions(c.spec)]
        ledger.record(entries, self.covered)

    def runs(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def sample(self, name, labels=None):
        registry = CollectorRegistry()
        registry.register(Collector(lambda: self.daemon.state, renderers={}))
        return registry.get_sample_value(name, labels or {})


def current(node: Node, nvml_index: int, backend: str = "sdpa"):
    uuid = ("GPU-busy", "GPU-idle")[nvml_index]
    return node.sample("fa4doctor_vetting_current", {"gpu": str(nvml_index), "UUID": uuid, "backend": backend})


def test_a_fingerprint_change_schedules_one_revet_on_the_idle_gpu(tmp_path):
    node = Node(tmp_path)
    node.daemon.probe_once()
    assert node.daemon.state.revet_pending and current(node, 0) == current(node, 1) == 0
    assert node.daemon.revet_once().outcome == "ok"
    [run] = node.runs()
    assert run["level"] == "standard" and run["gpus"] == "GPU-idle"
    assert "bf16_d128_causal_train" in run["specs"] and "bf16_d72_causal_train_known_bug" in run["specs"]
    # one run vets both GPUs: the same model has one fingerprint, busy or not
    assert not node.daemon.state.revet_pending and node.sample("fa4doctor_serve_revet_runs_total") == 1
    assert node.sample("fa4doctor_serve_revet_pending") == 0
    node.daemon.probe_once()  # nothing changed: nothing to run
    assert node.daemon.revet_once() is None and len(node.runs()) == 1
    node.upgrade(version="2.9.1")
    node.daemon.probe_once()
    assert node.daemon.state.revet_pending and node.daemon.revet_once().outcome == "ok"
    assert len(node.runs()) == 2


def test_no_revet_while_every_gpu_is_busy(tmp_path):
    node = Node(tmp_path, nvml=loads(1, 3))
    node.daemon.probe_once()
    assert node.daemon.revet_once() is None and node.runs() == []
    assert node.sample("fa4doctor_serve_revet_pending") == 1
    node.nvml["devices"][1]["nvmlDeviceGetComputeRunningProcesses"] = 0  # the job on GPU-idle ended
    assert node.daemon.revet_once().outcome == "ok" and node.runs()[0]["gpus"] == "GPU-idle"


def test_vetting_current_turns_1_once_the_ledger_covers_the_plan(tmp_path):
    node = Node(tmp_path)
    node.daemon.probe_once()
    assert current(node, 0) == current(node, 1) == 0
    node.cover()  # the smoke child records the plan's cases
    node.daemon.revet_once()
    assert current(node, 0) == current(node, 1) == 1
    assert {v.backend for v in node.daemon.state.vetting} == {"sdpa"}  # only backends with cases here
    node.upgrade(version="2.9.1")
    node.daemon.probe_once()  # the old entries no longer count
    assert current(node, 0) == 0 and node.daemon.state.revet_pending


def test_at_start_a_ledger_that_covers_the_plan_needs_no_run(tmp_path):
    node = Node(tmp_path)
    node.cover()
    ledger.record(ledger.read_ledger(node.covered).entries, node.ledger)
    node.daemon.probe_once()
    assert current(node, 1) == 1 and not node.daemon.state.revet_pending
    assert node.daemon.revet_once() is None and node.runs() == []


def test_a_failed_revet_is_counted_and_retried_only_after_the_smoke_interval(tmp_path, capsys):
    node = Node(tmp_path, smoke_exit=1)
    node.daemon.probe_once()
    assert node.daemon.revet_once().outcome == "failed"
    assert node.sample("fa4doctor_serve_revet_failures_total", {"outcome": "failed"}) == 1
    assert node.daemon.state.revet_pending and not node.daemon.revet_due()
    assert node.daemon.revet_once() is None and len(node.runs()) == 1


def test_an_unplannable_report_is_counted_not_raised(tmp_path):
    node = Node(tmp_path)
    (tmp_path / "probe.json").write_text(json.dumps(check_report()))  # no environment in it
    assert node.daemon.probe_once().outcome == "ok" and node.daemon.state.probe_up
    assert node.sample("fa4doctor_serve_revet_failures_total", {"outcome": "plan_failed"}) == 1
    assert not node.daemon.state.revet_pending


def test_the_loop_runs_the_revet_before_the_smoke_cycle_and_only_once(tmp_path):
    node = Node(tmp_path, interval=1, smoke_interval=3600, smoke_level="thorough")
    thread = threading.Thread(target=node.daemon.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and node.daemon.state.probe_cycles < 3:
            time.sleep(0.05)
    finally:
        node.daemon.stop()
        thread.join(timeout=10)
    assert node.daemon.state.probe_cycles >= 3
    assert [r["level"] for r in node.runs()] == ["standard", "thorough"]


def test_a_revet_at_the_smoke_level_stands_in_for_the_smoke_cycle(tmp_path):
    node = Node(tmp_path, interval=1, smoke_interval=3600)
    thread = threading.Thread(target=node.daemon.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and node.daemon.state.probe_cycles < 2:
            time.sleep(0.05)
    finally:
        node.daemon.stop()
        thread.join(timeout=10)
    assert [r["level"] for r in node.runs()] == ["standard"]  # standard holds quick's case


def test_the_operators_spec_file_replaces_the_default_shapes(tmp_path):
    specs = tmp_path / "model.json"
    specs.write_text(json.dumps([{"name": "my_d96", "head_dim_qk": 96, "num_heads_q": 8, "seqlen_q": 2048}]))
    node = Node(tmp_path, smoke_spec=str(specs), revet_level="quick")
    node.daemon.probe_once()
    node.daemon.revet_once()
    assert node.runs() == [{"level": "quick", "gpus": "GPU-idle", "specs": ["my_d96"]}]
    assert all({c.spec.head_dim_qk for c in t.cases} == {128, 96}  # quick's case and the operator's
               for t in node.daemon._targets)


def test_revet_off_or_smoke_off_never_runs(tmp_path):
    for config in ({"revet_level": "off"}, {"smoke_level": "off"}):
        node = Node(tmp_path, **config)
        node.daemon.probe_once()
        assert not node.daemon.state.revet_pending and node.daemon.revet_once() is None
    assert node.daemon.state.vetting  # smoke off: the gauge still says what is unvetted


def test_bad_revet_settings_fail_at_start(tmp_path):
    with pytest.raises(ValueError, match="revet_level.*valid: off, quick, standard, thorough"):
        ServeConfig(revet_level="long")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SpecError, match="not valid JSON"):
        Daemon(ServeConfig(smoke_spec=str(bad)), nvml_factory=lambda: None)
