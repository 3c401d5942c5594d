"""This node's evidence as dispatch rules: what the vetting ledger proves or refuses for a call.

A ledger entry counts only while its fingerprint matches what the environment says is installed
now (backend distribution and version, its dependencies, torch, driver, GPU model and compute
capability, and for FA4 the environment variables that choose its kernels), so an upgrade of any
of them makes old results fall silent until re-vetted.

How far a result reaches. A smoke case runs one `CaseClass` (dtype, head dims, mask, window,
GQA, decode), but FA's kernels are chosen by head dim first: on an H100 with 4.0.0b40 a dq bug
found with bf16 and two masks also broke calls that differed only in mask alignment, window or
dtype (docs/validation/h100-b40/). So a failure refuses every call with the same backend,
fingerprint, direction and head dims, unless the call's own class has passing evidence of its
own (and no failure). A pass reaches only its exact class.

>>> from fa4doctor.environment import Environment, GpuFacts
>>> gpu = GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0)
>>> len(fingerprint(BackendName.SDPA, Environment(gpus=(gpu,)), gpu))
16
>>> case_class(AttentionSpec(head_dim_qk=72, attn_mask_type="causal")).head_dims
(72, 72)
"""

from __future__ import annotations

from dataclasses import dataclass

from fa4doctor.dispatch.reasons import Reason, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import CaseClass, Environment, GpuFacts, LedgerEntry
from fa4doctor.names import BackendName
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
    # FA4's environment variables that pick or build its kernels (fa4doctor/probe/knobs.py cites each):
    # a result proven under one setting says nothing about another. Hashed only when one is set, so
    # every fingerprint written before they were recorded stays the same.
    knobs = sorted(f"{k.name}={k.value}" for k in env.knobs if k.changes_kernels)
    if backend is BackendName.FA4 and knobs:
        facts["fa4_knobs"] = knobs
    return digest(facts, length=16)  # 16: the length every ledger written so far uses


def case_class(spec: AttentionSpec) -> CaseClass:
    """The class of calls that one smoke result of `spec` is evidence about."""
    return CaseClass(dtype=spec.dtype.value, head_dim_qk=spec.head_dim_qk, head_dim_v=spec.head_dim_v,
                     attn_mask_type=spec.attn_mask_type.value, window=spec.has_window, gqa=spec.gqa,
                     decode=spec.seqlen_q == 1)


def directions(spec: AttentionSpec) -> tuple[str, ...]:
    """The kernels a call runs: the forward always, the backward when it trains."""
    return ("fwd", "bwd") if spec.training else ("fwd",)


@dataclass(frozen=True, slots=True)
class Evidence:
    """The ledger's word on one backend, call and direction under the current fingerprint."""

    direction: str
    passed: LedgerEntry | None = None  # a pass of the call's exact class
    failed: LedgerEntry | None = None  # a failure of the exact class
    reached: LedgerEntry | None = None  # a failure of another class at the same head dims

    @property
    def refusal(self) -> LedgerEntry | None:
        """The entry that refuses the call in this direction, if any."""
        if self.failed is not None:
            return self.failed
        return self.reached if self.passed is None else None

    @property
    def proven(self) -> bool:
        return self.passed is not None and self.refusal is None


def evidence(backend: BackendName, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> tuple[Evidence, ...]:
    """One `Evidence` per direction the call needs."""
    if not env.ledger:
        return tuple(Evidence(d) for d in directions(spec))
    current, mine = fingerprint(backend, env, gpu), case_class(spec)
    ours = [e for e in env.ledger if e.backend is backend and e.fingerprint == current]
    found = []
    for direction in directions(spec):
        here = [e for e in ours if e.direction == direction]
        exact = [e for e in here if e.case_class == mine]
        found.append(Evidence(
            direction,
            passed=next((e for e in exact if not e.failed), None),
            failed=next((e for e in exact if e.failed), None),
            reached=next((e for e in here if e.failed and e.case_class.head_dims == mine.head_dims), None)))
    return tuple(found)


def ledger_failures(backend: BackendName, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
    """A `smoke_failed` reason for the first direction this node's evidence refuses."""
    for found in evidence(backend, spec, env, gpu):
        entry = found.refusal
        if entry is None:
            continue
        reach = "" if entry is found.failed else (
            f"; it reaches this call (same head dims {entry.case_class.head_dims[0]},"
            f"{entry.case_class.head_dims[1]}), whose own class has no passing evidence")
        return [Reason(ReasonCode.SMOKE_FAILED, f"smoke case {entry.case} ({entry.direction}) failed on this "
                       f"node: {entry.outcome}" + (f", {entry.detail}" if entry.detail else "") + reach)]
    return []
