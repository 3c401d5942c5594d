"""The `Environment` of this process, as the runtime dispatcher sees it.

The probe (`fa4doctor check`) imports GPU libraries in child processes; a training process cannot
afford that, so the runtime reads only what is cheap and safe: the backends' distributions and
FA4's dependencies from their metadata, torch's version from `torch/version.py` (both exactly as
the probe reads them, never `__version__`: flash-attn-4 reports "0.0.0", docs/sources.md#fa4-version),
and, once tensors are on a GPU, compute capabilities from `torch.cuda` and (where there is a
ledger) the driver version from NVML; FA4's knobs from `os.environ` (`probe.knobs.read_knobs`, dict
look-ups); and the vetting ledger. Those are what a ledger entry's fingerprint hashes
(`vetting.fingerprint`), so they must be read the same way here, or no smoke result would ever
apply. Imports stay `NOT_CHECKED` until an adapter tries one; a failed import is recorded here, so
the next decision excludes that backend instead of crashing the step. Which impl runs SDPA's flash
kernel (torch >= 2.12's registry) is read live from this process's torch, since activation is
per process: where it is FA4, a call FA4 refuses keeps SDPA off its flash kernel too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import replace
from typing import Any

from fa4doctor.names import BackendName
from fa4doctor.environment import DriverInfo, Environment, GpuFacts, ImportStatus, TorchInfo

_lock = threading.Lock()
_current: Environment | None = None
_ledger_warned = False  # an unreadable ledger is logged once per process, not at every reset()
log = logging.getLogger("fa4doctor.dispatch")


def _pynvml() -> Any:
    from fa4doctor.probe.nvml import PynvmlSource

    return PynvmlSource()


def read_driver() -> DriverInfo:
    """The driver facts through NVML, as the probe reads them."""
    from fa4doctor.probe.gpus import read_driver as read

    return read(_pynvml())


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
    """The ledger as read (its entries and speed records); a bad file reads as no entries (never
    raises), and is logged once: without its evidence, recorded failures stop refusing anything (issue 13)."""
    global _ledger_warned
    from fa4doctor.probe.ledger import read_ledger

    read = read_ledger()
    if read.problem and not _ledger_warned:
        _ledger_warned = True
        log.warning("fa4doctor: %s; this process decides without smoke evidence (fix the file, see "
                    "`fa4doctor check`)", read.problem)
    return read


def _fresh() -> Environment:
    from fa4doctor.probe.packages import backend_installs  # imports stay NOT_CHECKED (probe's default)
    from fa4doctor.probe.knobs import read_knobs
    from fa4doctor.probe.system import read_torch_info

    ledger = _ledger()
    return Environment(torch=read_flash_registry(read_torch_info()), backends=backend_installs(),
                       ledger=ledger.entries, speed=ledger.speed, knobs=read_knobs(os.environ))


def live_flash_impl() -> str | None:
    """The flash impl this process activated (torch >= 2.12), None for torch's own FA2. Nothing is
    active before torch.nn.attention is imported, so this never imports it (~0.1 us)."""
    current = getattr(sys.modules.get("torch.nn.attention"), "current_flash_attention_impl", None)
    return None if current is None else current()


def read_flash_registry(info: TorchInfo) -> TorchInfo:
    """`info` with torch's flash registry as this process has it: activation is per process
    (torch/nn/attention/_registry.py, 2.13: the module global `_FLASH_ATTENTION_ACTIVE`), so the
    probe's import child cannot say what a training process activated."""
    attention = sys.modules.get("torch.nn.attention")
    if attention is None:
        return info
    if not hasattr(attention, "current_flash_attention_impl"):  # torch < 2.12: flash is torch's own
        return replace(info, flash_registry=False, flash_impls=(), flash_impl=None)
    return replace(info, flash_registry=True, flash_impls=tuple(attention.list_flash_attention_impls()),
                   flash_impl=attention.current_flash_attention_impl())


def environment(need_gpus: bool = False) -> Environment:
    """This process's environment; GPUs (and the driver) are read the first time a call needs them,
    the active flash impl at every call (a new plan decides on the impl active now)."""
    global _current
    current = _current
    if current is not None and (current.gpus or not need_gpus) and current.torch.flash_impl == live_flash_impl():
        return current
    with _lock:
        if _current is None:
            _current = _fresh()
        if need_gpus and not _current.gpus:
            # The driver only enters ledger fingerprints (vetting.fingerprint): with no ledger,
            # no NVML session in the training process.
            driver = read_driver() if _current.ledger else DriverInfo()
            _current = replace(_current, gpus=cuda_gpus(), driver=driver)
        if _current.torch.flash_impl != live_flash_impl():  # activated or restored since it was read
            _current = replace(_current, torch=read_flash_registry(_current.torch))
        return _current


def record_import_failure(backend: BackendName, message: str) -> Environment:
    """Remember that `backend` failed to import here; returns the environment that says so."""
    global _current
    with _lock:
        current = _current or _fresh()
        _current = replace(current, backends=tuple(
            replace(b, import_status=ImportStatus.ERROR, import_error=message) if b.backend is backend else b
            for b in current.backends))
        return _current


def reset() -> None:
    """Forget everything (tests, or after installing a backend in a running process)."""
    global _current
    with _lock:
        _current = None
