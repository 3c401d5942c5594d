"""Facts -> findings: each problem the probe can see, with its severity and the command that fixes it.

Thresholds are data at the top; every rule cites the failure mode it detects (an upstream issue or
docs/sources.md). Findings never decide eligibility: `select()` does.

>>> from fa4doctor.environment import DriverInfo
>>> [f.code for f in driver_findings(DriverInfo(nvml_status="lib_rm_mismatch"), TorchInfo())]
['nvml_lib_rm_mismatch']
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from fa4doctor.environment import (BackendInstall, DriverInfo, Finding, GpuFacts, ImportStatus, JitCache, Knob,
                                   TorchInfo, cuda_version_text)
from fa4doctor.probe import bytecode
from fa4doctor.probe.knobs import BY_NAME as KNOB_TABLE
from fa4doctor.probe.packages import OBSOLETE_FA4_NAMES, PackageFacts
from fa4doctor.probe.system import order_is_ambiguous, visible_entries

ERROR, WARNING, INFO = "error", "warning", "info"

# Clock event reasons (NVML bitmask, pynvml.py L2190-2199). 0x1 GpuIdle is normal (NVSentinel
# #890); these slow a job down and point at cooling or power trouble
# (docs/sources.md#clock-event-reasons).
SLOWDOWN_REASONS = {0x8: "hardware slowdown", 0x20: "software thermal slowdown",
                    0x40: "hardware thermal slowdown", 0x80: "hardware power brake"}
# Lowest driver for each CUDA major under minor-version compatibility
# (https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html).
MIN_DRIVER_FOR_CUDA = {11: (450, 80), 12: (525, 60), 13: (580, 0)}

NVML_FIXES = {
    "library_not_found": (WARNING, "no NVIDIA driver library (libnvidia-ml.so.1) here: no GPU is visible",
                          "on a GPU node, install the NVIDIA driver or run the container with --gpus all"),
    "lib_rm_mismatch": (ERROR, "NVIDIA driver/library version mismatch: the driver was upgraded while the "
                               "old kernel module is still loaded; new jobs cannot see GPUs",
                        "drain the node and reboot it (or reload the nvidia kernel modules)"),
    "driver_not_loaded": (ERROR, "the NVIDIA kernel driver is not loaded",
                          "load it (modprobe nvidia) or reinstall the driver; check dmesg"),
    "no_permission": (ERROR, "no permission to talk to the NVIDIA driver",
                      "check /dev/nvidia* permissions and the container's device list"),
    "gpu_is_lost": (ERROR, "a GPU has fallen off the bus", "drain the node and reset or reboot it"),
}


def driver_findings(driver: DriverInfo, torch: TorchInfo) -> list[Finding]:
    found = []
    if driver.nvml_status not in ("ok", "not_checked"):
        severity, message, fix = NVML_FIXES.get(driver.nvml_status, (ERROR, "NVML failed", "run nvidia-smi"))
        found.append(Finding(f"nvml_{driver.nvml_status}", severity, f"{message} ({driver.nvml_error})"
                             if driver.nvml_error else message, fix))
    if torch.cuda and driver.cuda_driver_version:
        major = int(torch.cuda.split(".")[0])
        have = driver.cuda_driver_version // 1000
        if have < major:
            need = ".".join(map(str, MIN_DRIVER_FOR_CUDA.get(major, (0, 0))))
            found.append(Finding("driver_too_old", ERROR,
                                 f"torch {torch.version} is built for CUDA {torch.cuda}, but driver "
                                 f"{driver.driver_version} supports CUDA {cuda_version_text(driver.cuda_driver_version)}: "
                                 "torch.cuda.is_available() will be False and jobs run on the CPU",
                                 f"upgrade the NVIDIA driver to >= {need}, or install a torch built for CUDA {have}"))
    return found


def gpu_findings(gpu: GpuFacts) -> list[Finding]:
    who = f"GPU {gpu.nvml_index} ({gpu.uuid or gpu.name})"
    # Lost GPUs, uncorrected ECC and row remapping: the faults DCGM treats as "device needs
    # attention" (XID 79, 48/95: docs/sources.md#gpu-faults).
    if gpu.lost:
        return [Finding("gpu_lost", ERROR, f"{who} is lost (fell off the bus)", "drain the node and reset or reboot it")]
    found = []
    if gpu.mig_mode_pending is not None and gpu.mig_mode_pending != gpu.mig_mode_current:
        found.append(Finding("mig_change_pending", WARNING, f"{who}: MIG mode changes to "
                             f"{'on' if gpu.mig_mode_pending else 'off'} at the next GPU reset",
                             f"nvidia-smi -i {gpu.nvml_index} -r (with no jobs running)"))
    if gpu.ecc_uncorrected_volatile:
        found.append(Finding("ecc_uncorrected", ERROR, f"{who}: {gpu.ecc_uncorrected_volatile} uncorrected "
                             "ECC errors since the last driver load", f"drain the GPU; nvidia-smi -q -d ECC,ROW_REMAPPER -i {gpu.nvml_index}"))
    if gpu.remapped_rows_failed:
        found.append(Finding("row_remap_failed", ERROR, f"{who}: a memory row remap failed",
                             "drain the node and have the GPU replaced"))
    elif gpu.remapped_rows_pending:
        found.append(Finding("row_remap_pending", WARNING, f"{who}: memory rows wait for a remap",
                             f"reset the GPU when idle: nvidia-smi -i {gpu.nvml_index} -r"))
    found += _clock_findings(gpu, who) + _pcie_findings(gpu, who)
    if gpu.fabric_state not in (None, "not_supported", "completed"):  # NVSwitch: docs/sources.md#nvml-failures-are-facts
        found.append(Finding("fabric_manager_not_ready", ERROR, f"{who}: NVSwitch fabric state is {gpu.fabric_state}; "
                             "CUDA fails with error 802 (system not yet initialized)",
                             "systemctl status nvidia-fabricmanager; start it and wait for it to complete"))
    # Compute and persistence modes: nvidia-smi(1), "-c" and "-pm".
    if gpu.compute_mode in ("exclusive_process", "exclusive_thread", "prohibited"):
        found.append(Finding("compute_mode", WARNING, f"{who}: compute mode is {gpu.compute_mode}, so a second "
                             "process (such as a smoke kernel) cannot use it while a job runs",
                             f"nvidia-smi -i {gpu.nvml_index} -c DEFAULT, if that is not intended"))
    if gpu.persistence_mode is False:
        found.append(Finding("persistence_off", INFO, f"{who}: persistence mode is off (slower CUDA start-up)",
                             f"nvidia-smi -i {gpu.nvml_index} -pm 1 (or run nvidia-persistenced)"))
    return found


def _clock_findings(gpu: GpuFacts, who: str) -> list[Finding]:
    active = [text for bit, text in SLOWDOWN_REASONS.items() if (gpu.clock_event_reasons or 0) & bit]
    if not active:
        return []
    return [Finding("clocks_throttled", WARNING, f"{who}: clocks held down by {', '.join(active)} "
                    f"(reasons 0x{gpu.clock_event_reasons:x})",
                    f"check cooling and power: nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER -i {gpu.nvml_index}")]


def _pcie_findings(gpu: GpuFacts, who: str) -> list[Finding]:
    # Width below max is a link that trained down (a reseat or retimer fault); the generation also
    # drops at idle to save power, so a lower generation alone is only information (NVSentinel #890).
    if gpu.pcie_width_current and gpu.pcie_width_max and gpu.pcie_width_current < gpu.pcie_width_max:
        return [Finding("pcie_downtrained", WARNING, f"{who}: PCIe link is x{gpu.pcie_width_current} of "
                        f"x{gpu.pcie_width_max} (Gen{gpu.pcie_gen_current} of Gen{gpu.pcie_gen_max})",
                        "reseat the card or check the riser/retimer; nvidia-smi -q -d PCIE")]
    if gpu.pcie_gen_current and gpu.pcie_gen_max and gpu.pcie_gen_current < gpu.pcie_gen_max:
        return [Finding("pcie_gen_below_max", INFO, f"{who}: PCIe Gen{gpu.pcie_gen_current} of Gen{gpu.pcie_gen_max} "
                        "(normal while idle; a problem if it stays low under load)", "nvidia-smi -q -d PCIE under load")]
    return []


def visibility_findings(gpus: tuple[GpuFacts, ...], environ: Mapping[str, str]) -> list[Finding]:
    found = []
    if gpus and order_is_ambiguous(gpus, environ):
        found.append(Finding("cuda_order_ambiguous", WARNING, "GPU models differ and CUDA_DEVICE_ORDER is not "
                             "PCI_BUS_ID: cuda:N may not be NVML index N (CUDA orders fastest first)",
                             "export CUDA_DEVICE_ORDER=PCI_BUS_ID (and join metrics on UUID)"))
    entries = visible_entries(environ) or []
    if sum(e.startswith("MIG-") for e in entries) > 1:  # a process uses one MIG instance (pytorch#102715)
        found.append(Finding("multiple_mig_visible", WARNING, "CUDA_VISIBLE_DEVICES lists several MIG instances; "
                             "a CUDA process can use only one of them", "give each process one MIG UUID"))
    # Visibility that hides every GPU (a stale UUID, a typo) leaves the job on the CPU
    if gpus and environ.get("CUDA_VISIBLE_DEVICES") is not None and \
            not any(g.cuda_index is not None for g in gpus):
        found.append(Finding("no_visible_gpu", ERROR, f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r} "
                             "matches none of this node's GPUs", "fix CUDA_VISIBLE_DEVICES (nvidia-smi -L lists UUIDs)"))
    return found


def _reinstall_fa4(facts: PackageFacts) -> str:
    fa4 = next((b for b in facts.backends if b.backend.value == "fa4" and b.distribution), None)
    pin = f"=={fa4.version}" if fa4 and fa4.distribution == "flash-attn-4" else ""
    return f"pip install --pre --force-reinstall --no-deps 'flash-attn-4{pin}'"


def package_findings(facts: PackageFacts) -> list[Finding]:
    names = {p.name: p.version for p in facts.packages}
    found = [Finding("fa4_dependency_" + ("missing" if r.installed is None else "mismatch"), ERROR,
                     f"flash-attn-4 requires {r.requirement}, installed: {r.installed or 'nothing'}",
                     f"pip install '{r.requirement}'") for r in facts.fa4_requirements if not r.satisfied]
    for name in OBSOLETE_FA4_NAMES:
        if name in names:
            found.append(Finding("obsolete_fa4_distribution", ERROR, f"{name} {names[name]} is an old name of the "
                                 "FA4 package and owns flash_attn/cute", f"pip uninstall -y {name} && pip install --pre flash-attn-4"))
    found += cute_findings(facts)
    for name, versions in facts.duplicates:
        found.append(Finding("duplicate_distribution", WARNING, f"{name} is installed {len(versions)} times on the "
                             f"search path ({', '.join(versions)}); Python uses the first",
                             f"pip uninstall {name} until one copy is left"))
    if "pynvml" in names:
        found.append(Finding("deprecated_pynvml", WARNING, f"the deprecated pynvml {names['pynvml']} distribution is "
                             "installed: torch prints a FutureWarning in every job",
                             "pip uninstall -y pynvml && pip install nvidia-ml-py"))
    if "torch" not in names:
        found.append(Finding("torch_missing", WARNING, "torch is not installed: no attention backend can run",
                             "pip install torch"))
    return found


def cute_findings(facts: PackageFacts) -> list[Finding]:
    """Ownership of flash_attn/cute from RECORD files (docs/sources.md#fa4-file-ownership; SkyRL PR #2132)."""
    fix, found = _reinstall_fa4(facts), []
    if any("flash-attn" in f.owners for f in facts.cute_files):
        version = next((p.version for p in facts.packages if p.name == "flash-attn"), "?")
        found.append(Finding("stale_cute_copy", ERROR, f"flash-attn {version} (FA2) ships its own stale "
                             "flash_attn/cute copy; it shadows or overwrites FA4's files",
                             f"{fix}  (reinstall FA4 after any flash-attn install)"))
    shared = [f for f in facts.cute_files if len(f.owners) > 1]
    if shared:
        owners = sorted({o for f in shared for o in f.owners})
        found.append(Finding("cute_files_shared", ERROR, f"{len(shared)} files under flash_attn/cute are owned by "
                             f"{' and '.join(owners)}: uninstalling one breaks the other", fix))
    orphans = [f for f in facts.cute_files if not f.owners]
    if orphans:
        found.append(Finding("cute_files_unowned", WARNING, f"{len(orphans)} files under flash_attn/cute belong to no "
                             f"installed distribution (e.g. {orphans[0].path})",
                             f"remove them (rm -r {orphans[0].path.split('flash_attn')[0]}flash_attn/cute) and {fix}"))
    return found


IMPORT_FIXES = {
    ImportStatus.MISSING_DEPENDENCY: "pip install the missing module's distribution (see the error)",
    ImportStatus.ABI_MISMATCH: "reinstall {dist} built for the installed torch: pip install --force-reinstall "
                               "--no-build-isolation {dist}=={version}",
    ImportStatus.DRIVER_TOO_OLD: "upgrade the NVIDIA driver, or install a build for the driver's CUDA",
    ImportStatus.BLOCKED: "pip uninstall -y flash-attn (or reinstall a flash-attn that imports), then "
                          "pip install --pre --force-reinstall --no-deps flash-attn-4",
    ImportStatus.CRASH: "run python -X faulthandler -c 'import {module}' to see where it crashes",
    ImportStatus.TIMEOUT: "run python -c 'import {module}' to see what it waits for",
    ImportStatus.ERROR: "run python -c 'import {module}' for the full traceback",
}


def import_findings(backends: tuple[BackendInstall, ...], torch: TorchInfo, modules: Mapping) -> list[Finding]:
    found = []
    for install in backends:
        if install.import_status in (ImportStatus.OK, ImportStatus.NOT_CHECKED, ImportStatus.NOT_INSTALLED):
            continue
        detail = install.import_error or ""
        if install.import_status is ImportStatus.ABI_MISMATCH:
            # The build tag says which torch the wheel was built for (flash-attention#723).
            detail += (f"; {install.distribution} {install.version} next to torch {torch.version} "
                       f"(C++11 ABI {torch.cxx11_abi})")
        fix = IMPORT_FIXES[install.import_status].format(dist=install.distribution, version=install.version,
                                                         module=modules[install.backend][0])
        found.append(Finding(f"import_{install.import_status.value}", ERROR,
                             f"{install.backend.value} ({install.distribution} {install.version}) does not import: "
                             f"{detail}", fix))
    return found


def jit_cache_findings(cache: JitCache, fa4_version: str | None) -> list[Finding]:
    """`fa4_version`: the installed FA4's version, None when FA4 is not installed."""
    if fa4_version is None:
        return []
    if not cache.enabled:
        # Off by default in every beta; without it each new process recompiles (FA #2635).
        return [Finding("jit_cache_disabled", INFO, "FA4's disk compile cache is off: every new process "
                        "compiles its kernels again (seconds each)",
                        "export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=<shared dir>")]
    if not cache.writable:
        fix = "point FLASH_ATTENTION_CUTE_DSL_CACHE_DIR at a writable directory"
        if _cache_falls_back_to_memory(fa4_version):
            # From b40 an unusable cache warns once and compiles in memory, unsaved
            # (flash_attn/cute/cache_utils.py 4.0.0b40 L46-53, L334-342).
            return [Finding("jit_cache_not_writable", WARNING, f"FA4's compile cache directory {cache.directory} "
                            "is not writable: every process compiles in memory and saves nothing", fix)]
        # Before b40 the cache is opened at import and its OSError propagates, so `import flash_attn.cute`
        # itself fails (flash_attn/cute/cache_utils.py 4.0.0b36 L302-307).
        return [Finding("jit_cache_not_writable", ERROR, f"FA4's compile cache directory {cache.directory} is not "
                        f"writable, and flash-attn-4 {fa4_version} fails on it instead of compiling in memory", fix)]
    return []


def _cache_falls_back_to_memory(version: str) -> bool:
    from packaging.version import InvalidVersion, Version  # only on this rare path: check stays fast

    try:
        return Version(version) >= Version("4.0.0b40")
    except InvalidVersion:
        return False


def knob_findings(knobs: tuple[Knob, ...], fa4_installed: bool) -> list[Finding]:
    """One finding per FA4 environment variable that is set, at the table's severity (`knobs.KNOBS`)."""
    if not fa4_installed:
        return []
    found = []
    for knob in knobs:
        fix = (f"unset {knob.name} unless intended; smoke results proven under one setting say nothing about "
               "another (FA4's vetting fingerprint includes it)" if knob.changes_kernels else
               f"nothing, if intended: {knob.name} moves the compile cache, not the kernels")
        spec = KNOB_TABLE[knob.name]
        found.append(Finding("fa4_knob_set", spec.severity, f"{knob.name}={knob.value!r} is set: {spec.changes}", fix))
    return found


def bytecode_findings(missing: tuple[str, ...], environ: Mapping[str, str]) -> list[Finding]:
    """Sources (torch's, a backend's) with no bytecode that Python will not write either."""
    stuck = bytecode.stuck(missing, environ)
    if not stuck:
        return []
    # Measured on the lent H100's image: import torch 5.7-7.5 s, and 3.65 s of compile() inside
    # FA4's import (docs/validation/h100-import-profile.txt).
    folders = " ".join(sorted({os.path.dirname(s) for s in stuck}))
    return [Finding("no_bytecode", WARNING, "no bytecode for " + ", ".join(stuck) + " and Python may not write "
                    "it (PYTHONDONTWRITEBYTECODE or a read-only install): every process compiles these imports "
                    "from source, seconds at each start", f"python -m compileall -q -j 0 {folders}, or keep "
                    "__pycache__ in the image")]


def native_findings(built: bool | None) -> list[Finding]:
    """`attention()` would run its Python hit path here (None: no torch, or FA4DOCTOR_NATIVE=0)."""
    if built is None or built:
        return []
    # Measured on the lent H100: +4.7% to +6.6% of a tiny FA4 call through the Python path, -0.0% to
    # +1.5% through the compiled one (docs/validation/h100-native/4-final).
    return [Finding("native_not_built", INFO, "the compiled hit path of fa4doctor.dispatch.attention() is not "
                    "built for this torch: each repeated call costs about 6% of a tiny FA4 call instead of "
                    "about 1%", "fa4doctor native build (once per torch; needs a C++20 compiler and Python's "
                    "headers)")]
