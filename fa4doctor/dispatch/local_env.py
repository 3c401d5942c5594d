"""The `Environment` of this process, as the runtime dispatcher sees it.

The probe (`fa4doctor check`) imports GPU libraries in child processes; a training process cannot
afford that, so the runtime reads only what is cheap and safe: the backends' distributions and
FA4's dependencies from their metadata, torch's version from `torch/version.py` (both exactly as
the probe reads them, never `__version__`: flash-attn-4 reports "0.0.0", backend-rules.md §2.1),
and, once tensors are on a GPU, compute capabilities from `torch.cuda` and the driver version from
NVML; and the vetting ledger. Those are what a ledger entry's fingerprint hashes
(`vetting.fingerprint`), so they must be read the same way here, or no smoke result would ever
apply. Imports stay `NOT_CHECKED` until an adapter tries one; a failed import is recorded here, so
the next decision excludes that backend instead of crashing the step.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Callable

from fa4doctor.dispatch.reasons import BackendName
from fa4doctor.environment import BackendInstall, DriverInfo, Environment, GpuFacts, ImportStatus

_lock = threading.Lock()
_current: Environment | None = None
_import_failures: dict[BackendName, str] = {}


def backend_installs() -> tuple[BackendInstall, ...]:
    """The probe's view of the installed backends, imports not checked (unless one failed here)."""
    from fa4doctor.probe.packages import backend_installs as scan

    installs = []
    for install in scan():
        if install.installed:
            failed = install.backend in _import_failures
            install = replace(install, import_status=ImportStatus.ERROR if failed else ImportStatus.NOT_CHECKED,
                              import_error=_import_failures.get(install.backend))
        installs.append(install)
    return tuple(installs)


def _pynvml() -> Any:
    from fa4doctor.probe.nvml import PynvmlSource

    return PynvmlSource()


def read_driver(nvml_factory: Callable[[], Any] | None = None) -> DriverInfo:
    """The driver facts through NVML, as the probe reads them (`nvml_factory`: tests' fake)."""
    from fa4doctor.probe.gpus import read_driver as read

    return read((nvml_factory or _pynvml)())


def cuda_gpus() -> tuple[GpuFacts, ...]:
    import torch

    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        gpus.append(GpuFacts(name=props.name, compute_capability=(props.major, props.minor), cuda_index=index,
                             uuid=f"GPU-{uuid}" if uuid is not None else None))
    return tuple(gpus)


def _ledger():
    from fa4doctor.probe.ledger import read_ledger

    return read_ledger().entries  # never raises: a bad file reads as no entries


def environment(need_gpus: bool = False) -> Environment:
    """This process's environment; GPUs (and the driver) are read the first time a call needs them."""
    global _current
    current = _current
    if current is not None and (current.gpus or not need_gpus):
        return current
    with _lock:
        if _current is None:
            from fa4doctor.probe.system import read_torch_info

            _current = Environment(torch=read_torch_info(), backends=backend_installs(), ledger=_ledger())
        if need_gpus and not _current.gpus:
            _current = replace(_current, gpus=cuda_gpus(), driver=read_driver())
        return _current


def record_import_failure(backend: BackendName, message: str) -> Environment:
    """Remember that `backend` failed to import here; returns the environment that says so."""
    global _current
    with _lock:
        _import_failures[backend] = message
        if _current is not None:
            _current = replace(_current, backends=tuple(
                replace(b, import_status=ImportStatus.ERROR, import_error=message) if b.backend is backend else b
                for b in _current.backends))
        return _current if _current is not None else Environment()


def reset() -> None:
    """Forget everything (tests, or after installing a backend in a running process)."""
    global _current
    with _lock:
        _current = None
        _import_failures.clear()
