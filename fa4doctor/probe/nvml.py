"""NVML behind one thin seam: every query is `nvml.call(name, *args)`, and every failure is data.

`PynvmlSource` is the production source over NVIDIA's `nvidia-ml-py` bindings (imported as
`pynvml`); `FakeNvml` replays a JSON fixture recorded from a node, so every rule runs on a CPU.
A call either returns plain JSON values or raises `NvmlFailure(code, message)`, with NVML's own
return codes (nvidia-ml-py 13.615.71 `pynvml.py` L224-241; docs/sources.md#nvml-failures-are-facts).

>>> fake = FakeNvml({"system": {"nvmlSystemGetDriverVersion": "580.95.05"},
...                  "devices": [{"nvmlDeviceGetName": "NVIDIA H100 80GB HBM3"}]})
>>> fake.init(); fake.call("nvmlDeviceGetCount"), fake.call("nvmlDeviceGetName", 0)
(1, 'NVIDIA H100 80GB HBM3')
"""

from __future__ import annotations

import ctypes

import json
from pathlib import Path
from typing import Any, Protocol

# NVML return codes that change what the report says (pynvml.py L224-241).
NOT_SUPPORTED, NO_PERMISSION, DRIVER_NOT_LOADED = 3, 4, 9
LIBRARY_NOT_FOUND, FUNCTION_NOT_FOUND, GPU_IS_LOST, LIB_RM_VERSION_MISMATCH = 12, 13, 15, 18

INIT_STATUS = {
    NO_PERMISSION: "no_permission",
    DRIVER_NOT_LOADED: "driver_not_loaded",
    LIBRARY_NOT_FOUND: "library_not_found",
    GPU_IS_LOST: "gpu_is_lost",
    LIB_RM_VERSION_MISMATCH: "lib_rm_mismatch",
}
_MISSING = {"error": NOT_SUPPORTED, "message": "Not Supported"}  # what FakeNvml answers for an absent call


class NvmlFailure(Exception):
    """One NVML call that failed; `code` is NVML's return code (-1 when there is none)."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{message} (NVML error {code})")


class NvmlSource(Protocol):
    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def call(self, name: str, *args: Any) -> Any: ...


class FakeNvml:
    """Replays a fixture: `{"init_error": code|null, "system": {fn: value}, "devices": [{fn: value}]}`.

    A value `{"error": code, "message": text}` raises that failure; a missing function raises
    NOT_SUPPORTED, as an older GPU would. Device handles are NVML indices; MIG devices are listed
    under `"fa4doctorMigDevices"` as plain objects.
    """

    def __init__(self, data: dict[str, Any]):
        self.data = data

    @classmethod
    def from_file(cls, path: str | Path) -> FakeNvml:
        return cls(json.loads(Path(path).read_text()))

    def init(self) -> None:
        error = self.data.get("init_error")
        if error is not None:
            raise NvmlFailure(int(error), self.data.get("init_message", "NVML init failed"))

    def shutdown(self) -> None:
        pass

    def call(self, name: str, *args: Any) -> Any:
        devices = self.data.get("devices", [])
        if name == "nvmlDeviceGetCount":
            return len(devices)
        if name == "nvmlDeviceGetHandleByIndex":
            return _replay(devices[args[0]].get(name, args[0]), name)
        if name.startswith("nvmlSystem"):
            return _replay(self.data.get("system", {}).get(name, _MISSING), name)
        return _replay(devices[args[0]].get(name, _MISSING), name)


def _replay(value: Any, name: str) -> Any:
    if isinstance(value, dict) and "error" in value:
        raise NvmlFailure(int(value["error"]), str(value.get("message", name)))
    return value


class PynvmlSource:
    """The production source. Struct-valued NVML calls are flattened to plain values here, so
    what the probe sees is exactly what a fixture can hold."""

    def __init__(self) -> None:
        self._nvml: Any = None

    def init(self) -> None:
        try:
            import pynvml  # nvidia-ml-py; importing it loads no library; nvmlInit() does
        except ImportError as exc:
            raise NvmlFailure(LIBRARY_NOT_FOUND, f"the nvidia-ml-py bindings are not installed: {exc}") from None
        self._nvml = pynvml
        self._guard(pynvml.nvmlInit)

    def shutdown(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass

    def call(self, name: str, *args: Any) -> Any:
        special = getattr(self, "_" + name, None)
        function = special or getattr(self._nvml, name, None)
        if function is None:
            raise NvmlFailure(FUNCTION_NOT_FOUND, f"{name} is not in these NVML bindings")
        return _plain(self._guard(function, *args))

    def _guard(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except self._nvml.NVMLError as exc:
            raise NvmlFailure(int(getattr(exc, "value", -1)), str(exc)) from None

    def _nvmlDeviceGetMemoryInfo(self, handle: Any) -> dict[str, int]:
        info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        return {"total": int(info.total), "used": int(info.used)}

    def _nvmlDeviceGetGpuFabricInfo(self, handle: Any) -> dict[str, int]:
        # pynvml hands the struct argument to C as given, so it must be a pointer (byref): passed by
        # value, as fa4doctor did before, `check` crashed on an H200 and on an H100 (driver
        # 580.159.04, nvidia-ml-py 13.615.71). The versioned call, since pynvml.py marks the other
        # "DEPRECATED: Use nvmlDeviceGetGpuFabricInfoV".
        nvml = self._nvml
        if not hasattr(nvml, "nvmlDeviceGetGpuFabricInfoV") or not hasattr(nvml, "c_nvmlGpuFabricInfo_v2_t"):
            raise NvmlFailure(NOT_SUPPORTED, "this nvidia-ml-py has no versioned fabric query")
        info = nvml.c_nvmlGpuFabricInfo_v2_t()
        nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
        return {"state": int(info.state), "status": int(info.status)}

    def _nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> int:
        return len(self._nvml.nvmlDeviceGetComputeRunningProcesses(handle))

    def _fa4doctorMigDevices(self, handle: Any) -> list[dict[str, Any]]:
        nvml, found = self._nvml, []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError:
                continue  # an empty slot
            found.append({"uuid": _plain(nvml.nvmlDeviceGetUUID(mig)),
                          "gpu_instance_id": nvml.nvmlDeviceGetGpuInstanceId(mig),
                          "compute_instance_id": nvml.nvmlDeviceGetComputeInstanceId(mig),
                          "memory_total_bytes": int(nvml.nvmlDeviceGetMemoryInfo(mig).total)})
        return found


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):  # old bindings return bytes for strings
        return value.decode(errors="replace")
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value
