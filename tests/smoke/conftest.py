"""Fixtures of the smoke tests: an H100 node with FA4 installed, and the fake backends' seam."""

from __future__ import annotations

from pathlib import Path

import pytest

from fa4doctor.names import BackendName
from fa4doctor.environment import (BackendInstall, DriverInfo, Environment, GpuFacts, ImportStatus,
                                   TorchInfo)

FAKES = Path(__file__).with_name("fakes.py")
H100 = GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0, nvml_index=0,
                uuid="GPU-00000000-1111-2222-3333-444444444444")


def fa4_env(version: str = "4.0.0b36", gpu: GpuFacts = H100) -> Environment:
    """The lent H100 of docs/validation/README.md, as the probe records it."""
    return Environment(
        gpus=(gpu,), torch=TorchInfo(version="2.11.0+cu130", cuda="13.0"),
        driver=DriverInfo(nvml_status="ok", driver_version="580.159.04", cuda_driver_version=13000),
        backends=(BackendInstall(BackendName.FA4, "flash-attn-4", version, ImportStatus.OK,
                                 dependencies=(("nvidia-cutlass-dsl", "4.8.1"),)),))


def fake(name: str) -> str:
    """The seam value that makes the smoke children call `fakes.<name>` instead of call_backend."""
    return f"{FAKES}:{name}"


@pytest.fixture
def h100_env() -> Environment:
    return fa4_env()
