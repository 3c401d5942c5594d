"""`gather_environment`: every fact of this machine in one frozen `Environment`, and nothing decided.

Packages come from metadata, imports run in child processes (cached), GPUs through the NVML seam,
the rest from files and the environment; findings are derived from those facts by `problems`.

>>> from fa4doctor.probe.nvml import FakeNvml
>>> env = gather_environment(nvml=FakeNvml({"init_error": 12}), check_imports=False, environ={})
>>> env.driver.nvml_status, env.gpus
('library_not_found', ())
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from fa4doctor.names import BackendName
from fa4doctor.environment import Environment, Finding, ImportStatus
from fa4doctor.probe import imports, native_build, problems
from fa4doctor.probe.bytecode import missing_bytecode
from fa4doctor.probe.cache import default_cache_dir
from fa4doctor.probe.gpus import GpuProbe
from fa4doctor.probe.knobs import read_knobs
from fa4doctor.probe.ledger import default_ledger_path, read_ledger
from fa4doctor.probe.nvml import NvmlSource, PynvmlSource
from fa4doctor.probe.packages import scan_packages
from fa4doctor.probe.system import find_torch_dir, map_cuda_ordinals, read_jit_cache, read_torch_info


@dataclass(frozen=True, slots=True)
class Gathered:
    env: Environment
    timings: tuple[tuple[str, float], ...]
    imports_cached: bool | None  # None when imports were not checked


def gather(*, nvml: NvmlSource | None = None, check_imports: bool = True, ledger_path: str | Path | None = None,
           environ: Mapping[str, str] | None = None, path: list[str] | None = None,
           cache_dir: Path | None = None, refresh: bool = False,
           import_modules: Mapping[BackendName, tuple[str, ...]] = imports.MODULES,
           import_timeout: float = imports.DEFAULT_TIMEOUT, gpu_probe: GpuProbe | None = None) -> Gathered:
    """`gather_environment` plus how long each part took and whether imports came from the cache.

    NVML runs in a thread beside the package scan: `gpu_probe` when the caller started it earlier
    (to hide NVML behind its own work too), else one started here on `nvml`. So `nvml_seconds`
    overlaps the other phases; `nvml_wait_seconds` is what NVML added after the package scan.
    """
    environ = os.environ if environ is None else environ
    probe = gpu_probe if gpu_probe is not None else GpuProbe(PynvmlSource() if nvml is None else nvml)
    clock, timings = time.perf_counter(), []
    # --no-imports reads metadata only and writes nothing, so it keeps no cache either
    cache = (default_cache_dir(environ) if cache_dir is None else cache_dir) if check_imports else None

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings.append((name + "_seconds", round(now - clock, 4)))
        clock = now

    facts = scan_packages(path, cache_dir=cache)
    torch = read_torch_info(path=path)
    lap("packages")
    driver, gpus = probe.result()
    gpus = map_cuda_ordinals(gpus, environ)
    lap("nvml_wait")
    timings.append(("nvml_seconds", round(probe.seconds, 4)))
    backends, cached = facts.backends, None
    if check_imports:
        todo = tuple(b.backend for b in backends if b.import_status is not ImportStatus.NOT_INSTALLED)
        key = imports.fingerprint(facts.software_key, environ, driver.driver_version)
        results, cached = imports.check_imports(todo, key, cache_dir=cache, refresh=refresh,
                                                modules=import_modules, timeout=import_timeout, environ=environ)
        backends = tuple(replace(b, import_status=results[b.backend].status, import_error=results[b.backend].error)
                         if b.backend in results else b for b in backends)
        abi = results.get(BackendName.SDPA)
        if abi is not None and abi.torch_cxx11_abi is not None:
            torch = replace(torch, cxx11_abi=abi.torch_cxx11_abi)
        if abi is not None and abi.torch_flash_registry is not None:
            # What a fresh process gets; activation is per process, so a training process reads
            # its own (runtime/local_env.py) and explain decides from what the snapshot says.
            torch = replace(torch, flash_registry=abi.torch_flash_registry, flash_impls=abi.torch_flash_impls,
                            flash_impl=abi.torch_flash_impl)
    lap("imports")
    jit, knobs = read_jit_cache(environ), read_knobs(environ)
    ledger = read_ledger(ledger_path if ledger_path is not None else default_ledger_path(environ))
    findings = _findings(facts, backends, torch, driver, gpus, environ, jit, knobs, import_modules)
    installed = [b.backend.value for b in backends if b.import_status is not ImportStatus.NOT_INSTALLED]
    findings += problems.bytecode_findings(missing_bytecode(installed, path), environ)
    findings += problems.native_findings(_native_built(environ, path))
    if ledger.problem:
        findings.append(Finding("ledger_unreadable", problems.WARNING, ledger.problem,
                                "its evidence is ignored and no writer replaces it (that would drop its "
                                "entries): make it readable to every user of the node (mode 0644, or "
                                "0640 with their group) or move it aside"))
    # os.uname() and sys.version give what socket.gethostname() and platform.python_version() would,
    # without importing either (5 ms at every check)
    env = Environment(created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      hostname=os.uname().nodename, python=sys.version.split()[0], torch=torch,
                      driver=driver, gpus=gpus, backends=backends, packages=facts.packages,
                      findings=tuple(findings), ledger=ledger.entries, speed=ledger.speed, jit_cache=jit,
                      cuda_visible_devices=environ.get("CUDA_VISIBLE_DEVICES"),
                      cuda_device_order=environ.get("CUDA_DEVICE_ORDER"), knobs=knobs)
    lap("rest")
    return Gathered(env, tuple(timings), cached)


def _findings(facts, backends, torch, driver, gpus, environ, jit, knobs, modules) -> list[Finding]:
    fa4 = next(b for b in backends if b.backend is BackendName.FA4)
    fa4_installed = fa4.import_status is not ImportStatus.NOT_INSTALLED
    found = problems.driver_findings(driver, torch)
    for gpu in gpus:
        found += problems.gpu_findings(gpu)
    found += problems.visibility_findings(gpus, environ)
    found += problems.package_findings(facts)
    found += problems.import_findings(backends, torch, modules)
    found += problems.jit_cache_findings(jit, fa4.version if fa4_installed else None)
    found += problems.knob_findings(knobs, fa4_installed)
    return found


def gather_environment(*, nvml: NvmlSource | None = None, check_imports: bool = True,
                       ledger_path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                       **options) -> Environment:
    """The facts of this machine (reads the default vetting ledger unless `ledger_path` says otherwise).

    `nvml` replaces the NVML source (tests pass `FakeNvml`); `check_imports=False` skips the child
    imports; `environ` replaces `os.environ`. Other keywords go to `gather`.
    """
    return gather(nvml=nvml, check_imports=check_imports, ledger_path=ledger_path, environ=environ,
                  **options).env


def _native_built(environ: Mapping[str, str], path: list[str] | None) -> bool | None:
    """Whether a training process here gets attention()'s compiled hit path (None: no torch, or off)."""
    if native_build.disabled(environ):
        return None
    built = native_build.artifact_path(environ, find_torch_dir(path))
    return None if built is None else built.exists()
