"""How busy each GPU is, polled in the daemon's own process through the probe's NVML seam.

NVML only reads the driver's state: the daemon polls it in-process and never creates a CUDA
context. A GPU is idle when NVML lists no compute process on it; a GPU whose processes cannot be
read counts as busy, so smoke kernels never land on a GPU a job may be using.

>>> idle_uuids((GpuLoad(0, "GPU-a", 0), GpuLoad(1, "GPU-b", 2), GpuLoad(2, "GPU-c", None)))
['GPU-a']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuLoad:
    nvml_index: int
    uuid: str | None
    compute_processes: int | None


def poll_gpus(nvml: Any) -> tuple[GpuLoad, ...]:
    """Compute processes per GPU through the probe's NVML seam (`fa4doctor.probe.nvml`)."""
    loads = []
    for index in range(nvml.call("nvmlDeviceGetCount")):
        handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
        uuid = nvml.call("nvmlDeviceGetUUID", handle)
        try:
            processes = int(nvml.call("nvmlDeviceGetComputeRunningProcesses", handle))
        except Exception:  # noqa: BLE001  unknown load: treated as busy by the smoke scheduler
            processes = None
        loads.append(GpuLoad(index, uuid, processes))
    return tuple(loads)


def idle_uuids(gpus: tuple[GpuLoad, ...] | None) -> list[str]:
    """UUIDs of the GPUs with no compute process (unknown load counts as busy)."""
    return [g.uuid for g in gpus or () if g.compute_processes == 0 and g.uuid]


def default_nvml() -> Any:
    from fa4doctor.probe.nvml import PynvmlSource  # imports pynvml only: no CUDA context

    return PynvmlSource()
