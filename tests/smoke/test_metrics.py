"""Smoke metrics: per backend and GPU, outcomes as a closed label set, Prometheus naming."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fa4doctor.exporters.metrics_smoke import smoke_families

UUID = "GPU-00000000-1111-2222-3333-444444444444"


def _case(backend, outcome, gpu=0, compile_s=2.0, run_s=0.001):
    return {"backend": backend, "gpu": gpu, "gpu_uuid": UUID, "case": f"{backend}:x", "direction": "fwd",
            "outcome": outcome, "compile_seconds": compile_s, "run_seconds": run_s}


SMOKE = {"schema": "fa4doctor.smoke", "level": "quick", "finished_at": 1_790_000_000.0,
         "phases": {"import_seconds": 9.0, "compile_seconds": 12.0, "run_seconds": 3.0, "total_seconds": 21.0},
         "gpus": [{"gpu": 0, "nvml_index": 3, "uuid": UUID, "name": "NVIDIA H100 80GB HBM3"}],
         "cases": [_case("fa4", "pass"), _case("fa4", "wrong_result"), _case("fa4", "skipped", compile_s=None),
                   _case("sdpa", "pass"), _case("sdpa", "pass")]}


class _Fixed:
    def __init__(self, smoke):
        self.smoke = smoke

    def collect(self):
        return smoke_families(self.smoke)


def _registry(smoke):
    registry = CollectorRegistry()
    registry.register(_Fixed(smoke))
    return registry


def test_counts_success_and_seconds_per_backend_and_gpu():
    registry = _registry(SMOKE)
    labels = {"backend": "fa4", "gpu": "3", "UUID": UUID}  # NVML index 3, not the CUDA index 0
    value = lambda name, **extra: registry.get_sample_value(name, {**labels, **extra})  # noqa: E731
    assert value("fa4doctor_smoke_cases", outcome="pass") == 1
    assert value("fa4doctor_smoke_cases", outcome="wrong_result") == 1
    assert value("fa4doctor_smoke_cases", outcome="timeout") == 0  # every outcome, zeros included
    assert value("fa4doctor_smoke_success") == 0
    assert registry.get_sample_value("fa4doctor_smoke_success", {**labels, "backend": "sdpa"}) == 1
    assert value("fa4doctor_smoke_case_seconds", phase="compile") == 4.0
    assert value("fa4doctor_smoke_last_run_timestamp_seconds") == 1_790_000_000.0
    assert registry.get_sample_value("fa4doctor_smoke_phase_seconds", {"phase": "compile"}) == 12.0


def test_exposition_parses_and_labels_are_bounded():
    text = generate_latest(_registry(SMOKE)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"fa4doctor_smoke_cases", "fa4doctor_smoke_success", "fa4doctor_smoke_case_seconds",
                             "fa4doctor_smoke_last_run_timestamp_seconds", "fa4doctor_smoke_phase_seconds"}
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"backend", "gpu", "UUID", "outcome", "phase"}


def test_an_empty_or_missing_report_gives_families_without_samples():
    for smoke in ({}, None, {"cases": []}):
        assert all(not family.samples for family in smoke_families(smoke))
