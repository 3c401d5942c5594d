"""Prometheus families from a smoke report (`fa4doctor smoke --json`), per backend and GPU.

Labels are bounded: `backend`, `gpu` (NVML index, as dcgm-exporter uses it), `UUID`, `outcome`
(the closed set of `report.OUTCOMES`) and `phase`. Case names, details and versions never become
labels. Every outcome is exported, zeros included, so an alert can say `== 0` without absent().

>>> from prometheus_client.core import Metric
>>> smoke = {"level": "quick", "finished_at": 1.0, "phases": {"total_seconds": 3.0},
...          "cases": [{"backend": "sdpa", "gpu": None, "gpu_uuid": None, "outcome": "pass",
...                     "compile_seconds": 0.1, "run_seconds": 0.01}]}
>>> [f.name for f in smoke_families(smoke)][:2]
['fa4doctor_smoke_cases', 'fa4doctor_smoke_success']
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from fa4doctor.exporters.metrics_env import GPU_LABELS, gpu_labels
from fa4doctor.smoke.report import OUTCOMES, failed

PHASES = ("import", "compile", "run", "total")
LABELS = ["backend", *GPU_LABELS]


def _nvml_index(smoke: dict) -> dict:
    # The report's `gpu` is the CUDA index; dashboards join on NVML's, which `gpus` lists.
    return {g.get("uuid"): g.get("nvml_index") for g in smoke.get("gpus") or () if g.get("uuid")}


def _groups(smoke: dict) -> dict[tuple[str, str, str], list[dict]]:
    nvml = _nvml_index(smoke)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for case in smoke.get("cases") or ():
        uuid = case.get("gpu_uuid")
        index = nvml.get(uuid, case.get("gpu"))
        key = (str(case.get("backend")), *gpu_labels(index, uuid))
        groups.setdefault(key, []).append(case)
    return groups


def smoke_families(smoke: dict) -> list[Metric]:
    """The smoke report as gauges; an empty or missing report gives families without samples."""
    smoke = smoke or {}
    cases = GaugeMetricFamily("fa4doctor_smoke_cases", "Smoke cases (one per direction) of the latest "
                              "run, by outcome.", labels=LABELS + ["outcome"])
    success = GaugeMetricFamily("fa4doctor_smoke_success", "1 if every smoke case of the backend passed "
                                "on this GPU in the latest run, else 0.", labels=LABELS)
    seconds = GaugeMetricFamily("fa4doctor_smoke_case_seconds", "Seconds the smoke cases spent compiling "
                                "(first call) and running (steady call), summed.", labels=LABELS + ["phase"])
    stamp = GaugeMetricFamily("fa4doctor_smoke_last_run_timestamp_seconds", "When the latest smoke run "
                              "finished (Unix time).", labels=LABELS)
    for labels, group in sorted(_groups(smoke).items()):
        labels = list(labels)
        counts = {o: 0 for o in OUTCOMES}
        for case in group:
            counts[case.get("outcome") if case.get("outcome") in counts else "crash"] += 1
        for outcome, count in counts.items():
            cases.add_metric(labels + [outcome], count)
        ran = [c for c in group if c.get("outcome") != "skipped"]
        success.add_metric(labels, float(bool(ran) and not any(failed(c.get("outcome")) for c in ran)))
        for phase in ("compile", "run"):
            seconds.add_metric(labels + [phase], sum(c.get(f"{phase}_seconds") or 0.0 for c in group))
        if smoke.get("finished_at") is not None:
            stamp.add_metric(labels, float(smoke["finished_at"]))
    phases = GaugeMetricFamily("fa4doctor_smoke_phase_seconds", "Wall time of each phase of the latest "
                               "smoke run (children import while FA4 compiles, so import overlaps compile).",
                               labels=["phase"])
    for phase in PHASES:
        value = (smoke.get("phases") or {}).get(f"{phase}_seconds")
        if value is not None:
            phases.add_metric([phase], float(value))
    return [cases, success, seconds, stamp, phases]
