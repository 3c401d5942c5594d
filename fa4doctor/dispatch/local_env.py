"""The `Environment` of this process, as the runtime dispatcher sees it.

The probe (`fa4doctor check`) imports GPU libraries in child processes; a training process cannot
afford that, so the runtime reads only what is cheap and safe: distribution metadata
(`importlib.metadata`, never `__version__`: flash-attn-4 reports "0.0.0", backend-rules.md §2.1),
the torch already imported, compute capabilities from `torch.cuda` (only once tensors are on a
GPU), and the vetting ledger. Imports stay `NOT_CHECKED` until an adapter tries one; a failed
import is recorded here, so the next decision excludes that backend instead of crashing the step.
"""

from __future__ import annotations

import importlib.metadata as metadata
import threading
from dataclasses import replace

from fa4doctor.dispatch.backends import PRIORITY
from fa4doctor.dispatch.reasons import BackendName
from fa4doctor.environment import BackendInstall, Environment, GpuFacts, ImportStatus, TorchInfo

_lock = threading.Lock()
_current: Environment | None = None
_import_failures: dict[BackendName, str] = {}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def backend_installs() -> tuple[BackendInstall, ...]:
    installs = []
    for backend in PRIORITY:
        found = next(((d, v) for d in backend.DISTRIBUTIONS if (v := _version(d)) is not None), None)
        distribution, text = found if found else (None, None)
        status, error = ImportStatus.NOT_CHECKED, None
        if backend.NAME in _import_failures:
            status, error = ImportStatus.ERROR, _import_failures[backend.NAME]
        installs.append(BackendInstall(backend.NAME, distribution, text, status, error))
    return tuple(installs)


def cuda_gpus() -> tuple[GpuFacts, ...]:
    import torch

    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        gpus.append(GpuFacts(name=props.name, compute_capability=(props.major, props.minor), cuda_index=index,
                             uuid=f"GPU-{uuid}" if uuid is not None else None))
    return tuple(gpus)


def _torch_info() -> TorchInfo:
    import torch

    return TorchInfo(version=_version("torch") or torch.__version__, cuda=torch.version.cuda)


def _ledger():
    from fa4doctor.probe.ledger import read_ledger

    return read_ledger().entries  # never raises: a bad file reads as no entries


def environment(need_gpus: bool = False) -> Environment:
    """This process's environment; GPUs are queried the first time a call needs them."""
    global _current
    current = _current
    if current is not None and (current.gpus or not need_gpus):
        return current
    with _lock:
        if _current is None or (need_gpus and not _current.gpus):
            gpus = cuda_gpus() if need_gpus else ()
            _current = Environment(torch=_torch_info(), gpus=gpus, backends=backend_installs(),
                                   ledger=_ledger())
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
