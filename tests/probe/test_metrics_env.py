"""Metric families from check reports, and the atomic textfile; asserted on fresh registries."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from probe_fakes import NVML_FIXTURES, fa4, fa4_deps, write_dist
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fa4doctor.exporters.metrics_env import environment_families
from fa4doctor.exporters.textfile import write_check_textfile
from fa4doctor.probe.gather import gather_environment
from fa4doctor.probe.nvml import FakeNvml
from fa4doctor.dispatch.report import build_report


class _Static:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def registry_for(report) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(environment_families(report)))
    return registry


def report_for(site, tmp_path, fixture, environ=None):
    fa4(site)
    fa4_deps(site)
    write_dist(site, "torch", "2.13.0")
    env = gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / f"{fixture}.json"), check_imports=False,
                             environ=environ or {}, path=[str(site)], ledger_path=tmp_path / "l.json")
    return build_report(env, timings={"total_seconds": 0.25})


def test_healthy_h100_metrics(site, tmp_path):
    registry = registry_for(report_for(site, tmp_path, "healthy_h100"))
    gpu = {"gpu": "0", "UUID": "GPU-5d3c0a8e-1f7b-4c1e-9a55-0e2d3b4c5d6e"}
    value = registry.get_sample_value
    assert value("fa4doctor_backend_available", {"backend": "fa4"}) == 1.0
    assert value("fa4doctor_backend_available", {"backend": "fa2"}) == 0.0
    assert value("fa4doctor_backend_info", {"backend": "fa4", "distribution": "flash-attn-4",
                                            "version": "4.0.0b36"}) == 1.0
    assert value("fa4doctor_backend_eligible", {**gpu, "spec": "bf16_d128_causal_train", "backend": "fa4"}) == 1.0
    assert value("fa4doctor_backend_chosen", {**gpu, "spec": "bf16_d128_causal_train", "backend": "sdpa"}) == 0.0
    assert value("fa4doctor_gpu_compute_capability", gpu) == 9.0
    assert value("fa4doctor_gpu_info", {**gpu, "name": "NVIDIA H100 80GB HBM3"}) == 1.0
    assert value("fa4doctor_gpu_clock_event_reason", {**gpu, "reason": "gpu_idle"}) == 1.0
    assert value("fa4doctor_gpu_pcie_downtrained", gpu) == 0.0
    assert value("fa4doctor_nvml_up") == 1.0 and value("fa4doctor_check_healthy") == 1.0
    assert value("fa4doctor_check_problems", {"severity": "error"}) == 0.0
    assert value("fa4doctor_probe_duration_seconds") == 0.25
    assert value("fa4doctor_driver_info", {"driver_version": "580.95.05", "cuda_version": "13.0"}) == 1.0
    assert value("fa4doctor_probe_up") is None  # the textfile writer or the daemon adds it


@pytest.mark.parametrize("fixture, name, labels, expected", [
    ("throttled_clocks", "fa4doctor_gpu_clock_event_reason", {"reason": "hw_thermal_slowdown"}, 1.0),
    ("throttled_clocks", "fa4doctor_gpu_clock_event_reason", {"reason": "gpu_idle"}, 0.0),
    ("pcie_downtrained", "fa4doctor_gpu_pcie_downtrained", {}, 1.0),
    ("pcie_downtrained", "fa4doctor_gpu_pcie_link_width", {}, 8.0),
    ("mig_enabled", "fa4doctor_gpu_mig_mode", {}, 1.0),
])
def test_gpu_facts_that_matter(site, tmp_path, fixture, name, labels, expected):
    report = report_for(site, tmp_path, fixture)
    gpu = report["environment"]["gpus"][0]
    value = registry_for(report).get_sample_value(name, {"gpu": "0", "UUID": gpu["uuid"], **labels})
    assert value == expected


def test_nvml_down_and_problems_counted(site, tmp_path):
    registry = registry_for(report_for(site, tmp_path, "driver_lib_mismatch"))
    assert registry.get_sample_value("fa4doctor_nvml_up") == 0.0
    assert registry.get_sample_value("fa4doctor_check_problems", {"severity": "error"}) >= 1.0
    assert registry.get_sample_value("fa4doctor_check_healthy") == 0.0


def test_names_and_labels_follow_prometheus_conventions(site, tmp_path):
    families = environment_families(report_for(site, tmp_path, "mixed_gpus"))
    for family in families:
        assert re.fullmatch(r"fa4doctor_[a-z0-9_]+", family.name), family.name
        assert not family.name.endswith("_total")
        for sample in family.samples:
            for label in sample.labels:
                # promtool's camelCase lint is [a-z][A-Z]; dcgm-exporter's UUID passes it (docs/sources.md#promtool)
                assert not re.search(r"[a-z][A-Z]", label), label
            assert "version" not in sample.labels or sample.name.endswith("_info")


def test_textfile_is_written_atomically_and_parses(site, tmp_path):
    report = report_for(site, tmp_path, "healthy_h100")
    path = tmp_path / "out" / "fa4doctor.prom"
    path.parent.mkdir()
    write_check_textfile(report, path)
    text = path.read_text()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["fa4doctor_probe_up"].samples[0].value == 1.0
    assert "fa4doctor_backend_eligible" in parsed
    assert sorted(p.name for p in path.parent.iterdir()) == ["fa4doctor.prom"]  # no temp file left


def test_textfile_needs_a_prom_name(tmp_path):
    with pytest.raises(ValueError, match=r"\.prom"):
        write_check_textfile(build_report(gather_environment(nvml=FakeNvml({"init_error": 12}),
                                                            check_imports=False, environ={}, path=[],
                                                            ledger_path=tmp_path / "l")), tmp_path / "x.txt")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize("fixture", ["mixed_gpus", "mig_enabled", "throttled_clocks", "gpu_lost"])
def test_textfile_passes_promtool_lint(site, tmp_path, fixture):
    path = tmp_path / "fa4doctor.prom"
    write_check_textfile(report_for(site, tmp_path, fixture), path)
    out = subprocess.run(["promtool", "check", "metrics"], input=path.read_text(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
