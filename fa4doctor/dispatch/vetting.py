"""Smoke results as dispatch rules: a configuration class that failed on this node is not used.

A ledger entry counts only while its fingerprint matches what the environment says is installed
now (backend distribution and version, its dependencies, torch, driver, GPU model and compute
capability), so an upgrade of any of them makes old results fall silent until re-vetted.

>>> from fa4doctor.environment import Environment, GpuFacts
>>> gpu = GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0)
>>> len(fingerprint(BackendName.SDPA, Environment(gpus=(gpu,)), gpu))
16
"""

from __future__ import annotations

from fa4doctor.dispatch.reasons import BackendName, Reason, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Environment, GpuFacts, LedgerEntry
from fa4doctor.records import digest


def fingerprint(backend: BackendName, env: Environment, gpu: GpuFacts) -> str:
    """What makes a smoke result valid, hashed: change any part and old results no longer apply."""
    install = env.backend(backend)
    facts = {
        "backend": backend.value,
        "distribution": install.distribution if install else None,
        "version": install.version if install else None,
        "dependencies": sorted(install.dependencies) if install else [],
        "torch": env.torch.version,
        "torch_cuda": env.torch.cuda,
        "driver": env.driver.driver_version,
        "gpu": gpu.name,
        "compute_capability": list(gpu.compute_capability),
    }
    return digest(facts, length=16)  # 16: the length every ledger written so far uses


def matches(entry: LedgerEntry, spec: AttentionSpec) -> bool:
    """Same configuration class: dtype, head dims, mask, window kind, and a direction the call needs."""
    return (entry.dtype == spec.dtype.value
            and entry.head_dim_qk == spec.head_dim_qk
            and entry.head_dim_v == spec.head_dim_v
            and entry.attn_mask_type == spec.attn_mask_type.value
            and entry.window == spec.has_window
            and (entry.direction == "fwd" or spec.training))


def ledger_failures(backend: BackendName, spec: AttentionSpec, env: Environment,
                    gpu: GpuFacts) -> list[Reason]:
    if not env.ledger:
        return []
    current = fingerprint(backend, env, gpu)
    for entry in env.ledger:
        if entry.backend is backend and entry.failed and entry.fingerprint == current and matches(entry, spec):
            return [Reason(ReasonCode.SMOKE_FAILED, f"smoke case {entry.case} ({entry.direction}) "
                           f"failed on this node: {entry.outcome}" + (f", {entry.detail}" if entry.detail else ""))]
    return []
