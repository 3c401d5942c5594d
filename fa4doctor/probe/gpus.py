"""GPU and driver facts from NVML: one record per GPU, with every failed query kept as data.

A missing library, a driver/library mismatch or a lost GPU is a fact in the report, never an
exception (docs/sources.md#nvml-failures-are-facts). CUDA ordinals are filled in later by
`system.map_cuda_ordinals`, because NVML indices are not CUDA ordinals
(docs/sources.md#nvml-index-and-cuda-ordinal).

>>> from fa4doctor.probe.nvml import FakeNvml
>>> driver, gpus = probe_gpus(FakeNvml({"init_error": 12, "init_message": "NVML Shared Library Not Found"}))
>>> driver.nvml_status, gpus
('library_not_found', ())
>>> GpuProbe(FakeNvml({"init_error": 12})).result()[0].nvml_status
'library_not_found'
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

from fa4doctor.environment import DriverInfo, GpuFacts, MigDevice
from fa4doctor.probe.nvml import GPU_IS_LOST, INIT_STATUS, NvmlFailure, NvmlSource

# nvmlGpuFabricState_t (pynvml.py L7193-7196)
FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}
# nvmlComputeMode_t
COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}

# GpuFacts field <- (NVML call, extra arguments, how to turn the value into the field)
_SIMPLE: tuple[tuple[str, str, tuple[Any, ...], Any], ...] = (
    ("uuid", "nvmlDeviceGetUUID", (), str),
    ("persistence_mode", "nvmlDeviceGetPersistenceMode", (), bool),
    ("compute_mode", "nvmlDeviceGetComputeMode", (), lambda v: COMPUTE_MODES.get(v, str(v))),
    ("clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons", (), int),
    ("pcie_gen_current", "nvmlDeviceGetCurrPcieLinkGeneration", (), int),
    ("pcie_gen_max", "nvmlDeviceGetMaxPcieLinkGeneration", (), int),
    ("pcie_width_current", "nvmlDeviceGetCurrPcieLinkWidth", (), int),
    ("pcie_width_max", "nvmlDeviceGetMaxPcieLinkWidth", (), int),
    # NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1; NVML_VOLATILE_ECC = 0, NVML_AGGREGATE_ECC = 1
    ("ecc_uncorrected_volatile", "nvmlDeviceGetTotalEccErrors", (1, 0), int),
    ("ecc_uncorrected_aggregate", "nvmlDeviceGetTotalEccErrors", (1, 1), int),
    ("compute_processes", "nvmlDeviceGetComputeRunningProcesses", (), int),
)


def probe_gpus(nvml: NvmlSource) -> tuple[DriverInfo, tuple[GpuFacts, ...]]:
    """Driver facts and one `GpuFacts` per NVML device; NVML failures become data."""
    failed = _init(nvml)
    if failed is not None:
        return failed, ()
    try:
        return _read(nvml)
    finally:
        nvml.shutdown()


def read_driver(nvml: NvmlSource) -> DriverInfo:
    """The driver facts alone (the runtime's fingerprint needs its version); failures become data."""
    failed = _init(nvml)
    if failed is not None:
        return failed
    try:
        return _driver(nvml)
    finally:
        nvml.shutdown()


def _init(nvml: NvmlSource) -> DriverInfo | None:
    """None once NVML is up, else the failure as driver facts."""
    try:
        nvml.init()
    except NvmlFailure as exc:
        return DriverInfo(nvml_status=INIT_STATUS.get(exc.code, "error"), nvml_error=str(exc))
    return None


def _read(nvml: NvmlSource) -> tuple[DriverInfo, tuple[GpuFacts, ...]]:
    """Everything, from an initialised NVML."""
    driver = _driver(nvml)
    try:
        count = int(nvml.call("nvmlDeviceGetCount"))
    except NvmlFailure as exc:
        return replace(driver, nvml_status="error", nvml_error=str(exc)), ()
    return driver, tuple(_gpu(nvml, index) for index in range(count))


class GpuProbe:
    """`probe_gpus(nvml)` in a background thread from the moment it is made; `result()` waits.

    NVML spends its time in the driver (loading libnvidia-ml, `nvmlInit`, ioctls, loading libcuda
    for the CUDA driver version) with the GIL released, so the probe runs beside Python work such
    as imports and the metadata scan instead of after it. The result is handed over before
    `nvmlShutdown`, which then runs while the caller goes on. `seconds` is the time to the result.
    """

    def __init__(self, nvml: NvmlSource):
        self.seconds = 0.0
        self._value: tuple[DriverInfo, tuple[GpuFacts, ...]] | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        # a daemon thread: a driver that hangs in nvmlInit must not also hang the interpreter's exit
        threading.Thread(target=self._run, args=(nvml,), name="fa4doctor-nvml", daemon=True).start()

    def _run(self, nvml: NvmlSource) -> None:
        started, opened = time.perf_counter(), False
        try:
            failed = _init(nvml)
            opened = failed is None
            self._value = _read(nvml) if opened else (failed, ())
        except BaseException as exc:  # noqa: BLE001  handed to the caller by result()
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - started
            self._ready.set()
        if opened:
            try:
                nvml.shutdown()
            except Exception:  # noqa: BLE001  the facts are delivered; a failed shutdown changes none
                pass

    def result(self) -> tuple[DriverInfo, tuple[GpuFacts, ...]]:
        """What `probe_gpus` returned (or raised), once the thread has it."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _driver(nvml: NvmlSource) -> DriverInfo:
    values, errors = {}, []
    for field, name in (("driver_version", "nvmlSystemGetDriverVersion"),
                        ("cuda_driver_version", "nvmlSystemGetCudaDriverVersion"),
                        ("nvml_version", "nvmlSystemGetNVMLVersion")):
        try:
            values[field] = nvml.call(name)
        except NvmlFailure as exc:
            errors.append(f"{name}: {exc}")
    return DriverInfo(nvml_status="ok", nvml_error="; ".join(errors) or None, **values)


class _Query:
    """Runs device calls, collecting `(call, error)` for each one that fails."""

    def __init__(self, nvml: NvmlSource, handle: Any):
        self.nvml, self.handle, self.errors, self.lost = nvml, handle, [], False

    def __call__(self, name: str, *args: Any) -> Any:
        try:
            return self.nvml.call(name, self.handle, *args)
        except NvmlFailure as exc:
            self.errors.append((name, str(exc)))
            self.lost = self.lost or exc.code == GPU_IS_LOST
            return None


def _gpu(nvml: NvmlSource, index: int) -> GpuFacts:
    try:
        handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
    except NvmlFailure as exc:
        lost = exc.code == GPU_IS_LOST
        return GpuFacts(name="unknown", compute_capability=(0, 0), nvml_index=index, lost=lost,
                        nvml_errors=(("nvmlDeviceGetHandleByIndex", str(exc)),))
    query = _Query(nvml, handle)
    name = query("nvmlDeviceGetName")
    cc = query("nvmlDeviceGetCudaComputeCapability")
    facts: dict[str, Any] = {"name": name or "unknown", "nvml_index": index,
                             "compute_capability": (int(cc[0]), int(cc[1])) if cc else (0, 0)}
    for field, call, args, convert in _SIMPLE:
        value = query(call, *args)
        facts[field] = convert(value) if value is not None else None
    facts.update(_memory(query) | _mig(query) | _ecc(query) | _remap(query) | _fabric(query))
    return GpuFacts(nvml_errors=tuple(query.errors), lost=query.lost, **facts)


def _memory(query: _Query) -> dict[str, Any]:
    info = query("nvmlDeviceGetMemoryInfo")
    return {"memory_total_bytes": info["total"], "memory_used_bytes": info["used"]} if info else {}


def _pair(value: Any) -> tuple[bool | None, bool | None]:
    return (bool(value[0]), bool(value[1])) if value else (None, None)


def _mig(query: _Query) -> dict[str, Any]:
    current, pending = _pair(query("nvmlDeviceGetMigMode"))
    devices: tuple[MigDevice, ...] = ()
    if current:
        devices = tuple(MigDevice(**d) for d in query("fa4doctorMigDevices") or ())
    return {"mig_mode_current": current, "mig_mode_pending": pending, "mig_devices": devices}


def _ecc(query: _Query) -> dict[str, Any]:
    current, pending = _pair(query("nvmlDeviceGetEccMode"))
    return {"ecc_mode_current": current, "ecc_mode_pending": pending}


def _remap(query: _Query) -> dict[str, Any]:
    rows = query("nvmlDeviceGetRemappedRows")  # (correctable, uncorrectable, pending, failure)
    return {"remapped_rows_pending": bool(rows[2]), "remapped_rows_failed": bool(rows[3])} if rows else {}


def _fabric(query: _Query) -> dict[str, Any]:
    info = query("nvmlDeviceGetGpuFabricInfo")
    if not info:
        return {}
    return {"fabric_state": FABRIC_STATES.get(info["state"], str(info["state"])), "fabric_status": info["status"]}
