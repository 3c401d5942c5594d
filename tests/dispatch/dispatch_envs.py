"""Fake environments for the rule tests: one GPU and the backends asked for, nothing else."""

from __future__ import annotations

from packaging.version import Version

from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import BackendInstall, Environment, GpuFacts, ImportStatus, TorchInfo

CC_NAMES = {(7, 5): "Tesla T4", (8, 0): "NVIDIA A100-SXM4-80GB", (8, 6): "NVIDIA RTX A6000",
            (8, 9): "NVIDIA L40S", (9, 0): "NVIDIA H100 80GB HBM3", (10, 0): "NVIDIA B200",
            (10, 3): "NVIDIA B300", (11, 0): "NVIDIA Thor", (12, 0): "NVIDIA RTX PRO 6000",
            (12, 1): "NVIDIA GB10"}
ALL_CCS = tuple(CC_NAMES)
DISTRIBUTION = {BackendName.FA4: "flash-attn-4", BackendName.FA3: "flash_attn_3", BackendName.FA2: "flash-attn"}
NEWEST = {BackendName.FA4: "4.0.0b36", BackendName.FA3: "3.0.0b1", BackendName.FA2: "2.8.3"}


def make_env(cc: tuple[int, int] | None = (9, 0), *, fa4: str | None = None, fa3: str | None = None,
             fa2: str | None = None, deps: tuple[tuple[str, str], ...] = (), ledger=(),
             import_status: ImportStatus = ImportStatus.OK, import_error: str | None = None) -> Environment:
    gpus = () if cc is None else (GpuFacts(name=CC_NAMES.get(cc, "NVIDIA GPU"), compute_capability=cc,
                                           cuda_index=0, nvml_index=0, uuid="GPU-0"),)
    backends = []
    for name, version in ((BackendName.FA4, fa4), (BackendName.FA3, fa3), (BackendName.FA2, fa2)):
        if version is not None:
            backends.append(BackendInstall(name, DISTRIBUTION[name], version, import_status, import_error,
                                           deps if name is BackendName.FA4 else ()))
    backends.append(BackendInstall(BackendName.SDPA, "torch", "2.11.0+cu130", ImportStatus.OK))
    return Environment(torch=TorchInfo("2.11.0+cu130", "13.0"), gpus=gpus, backends=tuple(backends),
                       ledger=tuple(ledger))


def only(backend: BackendName, cc: tuple[int, int] | None = (9, 0), version: str | None = None,
         **kwargs) -> Environment:
    """An environment with just `backend` installed (at its newest version unless told)."""
    if backend is BackendName.SDPA:
        return make_env(cc, **kwargs)
    return make_env(cc, **{backend.value: version or NEWEST[backend]}, **kwargs)


def codes(backend: BackendName, spec: AttentionSpec, env: Environment, gpu: int = 0) -> set[ReasonCode]:
    return {r.code for r in decide(spec, env, gpu=gpu).reasons_for(backend)}


def previous(version: str) -> str:
    """A version just below `version`: b9 -> b8, 2.4.1 -> 2.4.0, 2.3 -> 2.2.99."""
    v = Version(version)
    if v.pre:
        return f"{v.base_version}{v.pre[0]}{v.pre[1] - 1}"
    release = list(v.release)
    while release[-1] == 0:
        release.pop()
    release[-1] -= 1
    if len(release) < 3:
        release.append(99)
    return ".".join(map(str, release))
