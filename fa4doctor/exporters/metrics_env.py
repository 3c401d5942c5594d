"""Prometheus metric families from a `fa4doctor check --json` report (a plain dict).

Names follow Prometheus conventions (docs/sources.md#prometheus-naming): `fa4doctor_` prefix, base units,
gauges without `_total`, versions and model names only in `_info` families, labels bounded to
backend names, spec names, `gpu` (the NVML index, as dcgm-exporter uses it) and `UUID`.
`fa4doctor_probe_up` is not emitted here: whoever ran the probe knows whether it ran.

>>> from fa4doctor.environment import Environment
>>> from fa4doctor.dispatch.report import build_report
>>> names = [f.name for f in environment_families(build_report(Environment()))]
>>> "fa4doctor_nvml_up" in names and "fa4doctor_backend_eligible" in names
True
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric

from fa4doctor.dispatch.agreement import CUTLASS_DSL
from fa4doctor.environment import USABLE_IMPORTS, cuda_version_text

GPU_LABELS = ["gpu", "UUID"]
# NVML clock event reason bits (docs/sources.md#clock-event-reasons) as bounded label values.
CLOCK_EVENT_REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
                       0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
                       0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
                       0x100: "display_clock_setting"}
SEVERITIES = ("error", "warning", "info")


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def gpu_labels(nvml_index: int | None, uuid: str | None) -> list[str]:
    """The values of `GPU_LABELS`: NVML's index (what dashboards join on) and the UUID, "" if unknown."""
    return ["" if nvml_index is None else str(nvml_index), uuid or ""]


def _gpu_key(gpu: dict[str, Any]) -> list[str]:
    return gpu_labels(gpu.get("nvml_index"), gpu.get("uuid"))


def environment_families(check: dict) -> list[Metric]:
    """Every family the probe contributes to a scrape or a textfile."""
    env = check.get("environment", {})
    return [*_backend_families(env), *_eligibility_families(check, env), *_gpu_families(env),
            *_health_families(check, env), stack_family(env)]


STACK_LABELS = ["fa4_version", "fa3_version", "fa2_version", "cutlass_dsl", "torch", "cuda", "driver", "gpu_model"]


def stack_family(env: dict) -> Metric:
    """`fa4doctor_node_stack_info`: the parts of this node's fingerprint that make ranks run different
    kernels (dispatch/agreement.py `Stack`), as labels, one series per GPU model; "" where not
    installed or unknown. The fleet's odd node out is a `count by` away (deploy/prometheus rules).

    >>> [s.labels["gpu_model"] for s in stack_family({"gpus": [{"name": "H100"}, {"name": "H100"}]}).samples]
    ['H100']
    """
    info = InfoMetricFamily("fa4doctor_node_stack", "This node's software stack and GPU model, the parts of "
                            "the fingerprint that decide which attention kernels run (1 per GPU model).",
                            labels=[])
    versions = {b["backend"]: b.get("version") or "" for b in env.get("backends", [])
                if b.get("version") is not None and b.get("import_status") != "not_installed"}
    fa4 = next((b for b in env.get("backends", []) if b["backend"] == "fa4" and b["backend"] in versions), {})
    torch, driver = env.get("torch", {}), env.get("driver", {})
    common = {"fa4_version": versions.get("fa4", ""), "fa3_version": versions.get("fa3", ""),
              "fa2_version": versions.get("fa2", ""),
              "cutlass_dsl": dict(map(tuple, fa4.get("dependencies", []))).get(CUTLASS_DSL, ""),
              "torch": torch.get("version") or "", "cuda": torch.get("cuda") or "",
              "driver": driver.get("driver_version") or ""}
    for model in dict.fromkeys(g.get("name") or "" for g in env.get("gpus", [])) or [""]:
        info.add_metric([], {**common, "gpu_model": model})
    return info


def _backend_families(env: dict) -> Iterator[Metric]:
    available = _gauge("fa4doctor_backend_available", "1 if the backend is installed and imports "
                       "(or was not import-checked), else 0.", ["backend"])
    info = InfoMetricFamily("fa4doctor_backend", "The distribution and version that provide each "
                            "installed backend.", labels=["backend"])
    for install in env.get("backends", []):
        installed = install.get("version") is not None and install.get("import_status") != "not_installed"
        ok = installed and install.get("import_status") in USABLE_IMPORTS  # StrEnum: equal to its value
        available.add_metric([install["backend"]], 1.0 if ok else 0.0)
        if installed:
            info.add_metric([install["backend"]], {"distribution": install.get("distribution") or "",
                                                   "version": install.get("version") or ""})
    yield from (available, info)


def _eligibility_families(check: dict, env: dict) -> Iterator[Metric]:
    nvml_index = {g.get("uuid"): g.get("nvml_index") for g in env.get("gpus", [])}
    eligible = _gauge("fa4doctor_backend_eligible", "1 if the dispatcher would accept the backend for the "
                      "named spec on this GPU.", GPU_LABELS + ["spec", "backend"])
    chosen = _gauge("fa4doctor_backend_chosen", "1 for the backend the dispatcher chooses for the named "
                    "spec on this GPU, 0 for the others.", GPU_LABELS + ["spec", "backend"])
    for verdict in check.get("verdicts", []):
        index = nvml_index.get(verdict.get("gpu_uuid")) if verdict.get("gpu_uuid") else None
        key = gpu_labels(index, verdict.get("gpu_uuid")) + [verdict["spec_name"]]
        for backend in verdict["backends"]:
            eligible.add_metric(key + [backend["backend"]], 1.0 if backend["eligible"] else 0.0)
            chosen.add_metric(key + [backend["backend"]], 1.0 if verdict["chosen"] == backend["backend"] else 0.0)
    yield from (eligible, chosen)


def _gpu_families(env: dict) -> Iterator[Metric]:
    info = InfoMetricFamily("fa4doctor_gpu", "GPU model of each NVML device.", labels=GPU_LABELS)
    simple = {
        "compute_capability": ("Compute capability as major.minor (9.0 for an H100).",
                               lambda g: g["compute_capability"][0] + g["compute_capability"][1] / 10),
        "mig_mode": ("1 if MIG mode is on now.", lambda g: g.get("mig_mode_current")),
        "mig_mode_pending": ("1 if MIG mode is on after the next GPU reset.", lambda g: g.get("mig_mode_pending")),
        "ecc_uncorrected_errors": ("Uncorrected ECC errors since the driver loaded (volatile).",
                                   lambda g: g.get("ecc_uncorrected_volatile")),
        "remapped_rows_failed": ("1 if a memory row remap failed.", lambda g: g.get("remapped_rows_failed")),
        "remapped_rows_pending": ("1 if memory rows wait for a remap (GPU reset).",
                                  lambda g: g.get("remapped_rows_pending")),
        "pcie_link_generation": ("Current PCIe link generation.", lambda g: g.get("pcie_gen_current")),
        "pcie_link_generation_max": ("Maximum PCIe link generation.", lambda g: g.get("pcie_gen_max")),
        "pcie_link_width": ("Current PCIe link width (lanes).", lambda g: g.get("pcie_width_current")),
        "pcie_link_width_max": ("Maximum PCIe link width (lanes).", lambda g: g.get("pcie_width_max")),
        "pcie_downtrained": ("1 if the PCIe link runs with fewer lanes than it can.", _downtrained),
        "lost": ("1 if NVML reports the GPU lost (fallen off the bus).", lambda g: g.get("lost")),
    }
    families = {key: _gauge(f"fa4doctor_gpu_{key}", doc, GPU_LABELS) for key, (doc, _) in simple.items()}
    reasons = _gauge("fa4doctor_gpu_clock_event_reason", "1 if this clock event reason is active (NVML "
                     "clock event reasons).", GPU_LABELS + ["reason"])
    for gpu in env.get("gpus", []):
        key = _gpu_key(gpu)
        info.add_metric(key, {"name": gpu.get("name") or ""})
        for name, (_, read) in simple.items():
            value = read(gpu)
            if value is not None:  # unknown stays absent, never a sentinel (docs/sources.md#prometheus-naming)
                families[name].add_metric(key, float(value))
        if gpu.get("clock_event_reasons") is not None:
            for bit, reason in CLOCK_EVENT_REASONS.items():
                reasons.add_metric(key + [reason], 1.0 if gpu["clock_event_reasons"] & bit else 0.0)
    yield from (info, *families.values(), reasons)


def _downtrained(gpu: dict) -> bool | None:
    now, best = gpu.get("pcie_width_current"), gpu.get("pcie_width_max")
    return None if not now or not best else now < best


def _health_families(check: dict, env: dict) -> Iterator[Metric]:
    driver = env.get("driver", {})
    nvml_up = _gauge("fa4doctor_nvml_up", "1 if NVML initialised and answered.", [])
    nvml_up.add_metric([], 1.0 if driver.get("nvml_status") == "ok" else 0.0)
    problems = _gauge("fa4doctor_check_problems", "Problems the last check found, by severity.", ["severity"])
    for severity in SEVERITIES:
        problems.add_metric([severity], float(sum(p["severity"] == severity for p in check.get("problems", []))))
    healthy = _gauge("fa4doctor_check_healthy", "1 if the last check exited 0.", [])
    healthy.add_metric([], 1.0 if check.get("healthy") else 0.0)
    duration = _gauge("fa4doctor_probe_duration_seconds", "Wall time of the last check.", [])
    duration.add_metric([], float(check.get("timings", {}).get("total_seconds", 0.0)))
    jit = env.get("jit_cache", {})
    cache_on = _gauge("fa4doctor_jit_cache_enabled", "1 if FA4's disk compile cache is on.", [])
    cache_on.add_metric([], 1.0 if jit.get("enabled") else 0.0)
    yield from (nvml_up, problems, healthy, duration, cache_on)
    if jit.get("size_bytes") is not None:
        size = _gauge("fa4doctor_jit_cache_size_bytes", "Bytes in FA4's disk compile cache directory.", [])
        size.add_metric([], float(jit["size_bytes"]))
        yield size
    info = InfoMetricFamily("fa4doctor_driver", "NVIDIA driver and the CUDA version it supports.", labels=[])
    if driver.get("driver_version"):
        cuda = driver.get("cuda_driver_version")
        info.add_metric([], {"driver_version": driver["driver_version"],
                             "cuda_version": cuda_version_text(cuda) if cuda else ""})
    yield info
    yield _flash_impl_family(env.get("torch", {}))


def _flash_impl_family(torch: dict) -> Metric:
    """`fa4doctor_torch_flash_impl_info{impl}`: what SDPA's flash kernel runs in a fresh process,
    "FA2" (torch's own) or a registry name ("FA4"; torch/nn/attention/_registry.py); none unchecked."""
    info = InfoMetricFamily("fa4doctor_torch_flash_impl", "The implementation behind SDPA's flash kernel "
                            "(torch >= 2.12 flash registry; FA2 is torch's own).", labels=[])
    if torch.get("flash_registry") is not None:
        info.add_metric([], {"impl": torch.get("flash_impl") or "FA2"})
    return info
