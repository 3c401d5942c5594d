"""Writes the example environment snapshots next to this file, so they stay consistent.

    python examples/make_examples.py          # rewrite examples/*.json
    fa4doctor explain --env examples/h100-fa4-b36.json --mask causal

Each snapshot is what `fa4doctor check --json` would record on such a node. The facts are typical
of each machine (names and memory as NVML reports them, driver 580.x), not taken from one node.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from fa4doctor.names import BackendName
from fa4doctor.environment import (BackendInstall, DriverInfo, Environment, GpuFacts, ImportStatus, JitCache,
                                   Package, TorchInfo)

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
DRIVER = DriverInfo(nvml_status="ok", driver_version="580.159.04", cuda_driver_version=13000,
                    nvml_version="13.580.159.04")
TORCH_CU130 = TorchInfo(version="2.11.0+cu130", cuda="13.0", cxx11_abi=True)
TORCH_CU128 = TorchInfo(version="2.8.0+cu128", cuda="12.8", cxx11_abi=True)
FA4_DEPS = (("nvidia-cutlass-dsl", "4.8.1"), ("quack-kernels", "0.6.5"), ("apache-tvm-ffi", "0.1.15.post2"))


def gpus(name: str, cc: tuple[int, int], memory_mib: int, count: int) -> tuple[GpuFacts, ...]:
    return tuple(GpuFacts(name=name, compute_capability=cc, cuda_index=i, nvml_index=i,
                          uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}-{i}.fa4doctor.example')}",
                          memory_total_bytes=memory_mib * MIB, memory_used_bytes=0, mig_mode_current=False,
                          mig_mode_pending=False, ecc_mode_current=True, ecc_mode_pending=True,
                          ecc_uncorrected_volatile=0, ecc_uncorrected_aggregate=0, remapped_rows_pending=False,
                          remapped_rows_failed=False, clock_event_reasons=1, persistence_mode=True,
                          compute_mode="Default", compute_processes=0)
                 for i in range(count))


def backends(torch: TorchInfo, **installed: tuple[str, str]) -> tuple[BackendInstall, ...]:
    """One record per backend: `fa4=("flash-attn-4", "4.0.0b36")`; the rest are not installed."""
    records = []
    for backend in BackendName:
        if backend is BackendName.SDPA:
            records.append(BackendInstall(backend, "torch", torch.version, ImportStatus.OK))
        elif backend.value in installed:
            distribution, version = installed[backend.value]
            deps = FA4_DEPS if backend is BackendName.FA4 else ()
            records.append(BackendInstall(backend, distribution, version, ImportStatus.OK, dependencies=deps))
        else:
            records.append(BackendInstall(backend, import_status=ImportStatus.NOT_INSTALLED))
    return tuple(records)


def packages(torch: TorchInfo, **installed: tuple[str, str]) -> tuple[Package, ...]:
    found = [Package("torch", torch.version or "")] + [Package(*dist) for dist in installed.values()]
    if "fa4" in installed:
        found += [Package(*dep) for dep in FA4_DEPS]
    return tuple(sorted(found, key=lambda p: p.name))


def node(host: str, gpu_facts: tuple[GpuFacts, ...], torch: TorchInfo = TORCH_CU130,
         driver: DriverInfo = DRIVER, **installed: tuple[str, str]) -> Environment:
    return Environment(created_at="2026-11-24T00:00:00+00:00", hostname=host, python="3.12.3", torch=torch,
                       driver=driver, gpus=gpu_facts, backends=backends(torch, **installed),
                       packages=packages(torch, **installed),
                       jit_cache=JitCache(enabled=False, directory="/tmp/root/flash_attention_cute_dsl_cache"))


FA4_B36 = ("flash-attn-4", "4.0.0b36")
H100 = ("NVIDIA H100 80GB HBM3", (9, 0), 81559)

# h100-fa4-b36.json is not generated: it is `fa4doctor check --json` taken on a real H100 with
# FA4 4.0.0b36 (docs/validation/h100-check.txt); REAL lists such snapshots.
REAL = ("h100-fa4-b36.json",)
EXAMPLES = {
    "h100-fa3-fa4.json": node("h100-node", gpus(*H100, 8), fa4=FA4_B36, fa3=("flash_attn_3", "3.0.0b1")),
    "a100-fa2-2.8.3.json": node("a100-node", gpus("NVIDIA A100-SXM4-80GB", (8, 0), 81920, 8), TORCH_CU128,
                                fa2=("flash-attn", "2.8.3")),
    "b200-fa4.json": node("b200-node", gpus("NVIDIA B200", (10, 0), 183359, 8), fa4=FA4_B36),
    "t4-fa2.json": node("t4-node", gpus("Tesla T4", (7, 5), 15360, 1), TORCH_CU128, fa2=("flash-attn", "2.8.3")),
    "cpu-only.json": node("laptop", (), TorchInfo(version="2.11.0+cpu", cuda=None, cxx11_abi=True),
                          DriverInfo(nvml_status="library_not_found",
                                     nvml_error="NVML Shared Library Not Found")),
}


def main(directory: Path = HERE) -> list[Path]:
    written = []
    for name, env in EXAMPLES.items():
        path = directory / name
        path.write_text(env.to_json() + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
