"""Import each installed backend in its own child process, in parallel, with a timeout.

Never in the parent: an undefined symbol, a CUDA initialisation or a segfault must not take down
the caller (docs/check.md). Failures are classified (docs/sources.md: #fa2-built-for-another-torch,
#minimum-driver-for-a-cuda-version, #fa2-breaks-the-fa4-import, #fa4-dependencies), and results are cached by a fingerprint of the installed software, so a
repeated `check` imports nothing until something changed.

>>> classify({"ok": False, "type": "ImportError",
...           "message": "flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"}, 1, False)[0].value
'abi_mismatch'
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fa4doctor.names import BackendName
from fa4doctor.environment import ImportStatus
from fa4doctor.probe import cache
from fa4doctor.records import digest, from_plain, to_plain

# What "importing a backend" means: the module a caller imports first, then its native part.
MODULES: dict[BackendName, tuple[str, ...]] = {
    BackendName.FA4: ("flash_attn.cute",),
    BackendName.FA3: ("flash_attn_interface",),
    BackendName.FA2: ("flash_attn", "flash_attn_2_cuda"),
    BackendName.SDPA: ("torch",),
}
CACHE_FORMAT = 3  # 2: ImportResult lost its unused `seconds`; 3: it reports torch's flash registry
DEFAULT_TIMEOUT = 60.0

# Runs in the child: import the modules named on the command line, print one JSON line.
_CHILD = r"""
import importlib, json, sys, traceback
out = {"ok": True}
try:
    for name in sys.argv[1:]:
        importlib.import_module(name)
except BaseException as exc:
    out = {"ok": False, "type": type(exc).__name__, "message": str(exc),
           "missing": getattr(exc, "name", None), "traceback": traceback.format_exc()[-6000:]}
torch = sys.modules.get("torch")
if torch is not None:
    try:
        out["torch_cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    except Exception:
        pass
    try:  # torch >= 2.12's flash registry, as a fresh process has it (torch/nn/attention/_registry.py)
        import torch.nn.attention as attention
        current = getattr(attention, "current_flash_attention_impl", None)
        out["torch_flash_registry"] = current is not None
        if current is not None:
            out["torch_flash_impls"] = list(attention.list_flash_attention_impls())
            out["torch_flash_impl"] = current()
    except Exception:
        pass
sys.stdout.write("\n" + json.dumps(out) + "\n")
"""

# How an import says the driver is older than the CUDA it was built for (sglang#11395;
# docs/sources.md#minimum-driver-for-a-cuda-version).
_DRIVER_TOO_OLD = ("driver version is insufficient", "driver on your system is too old",
                   "cuda_error_insufficient_driver", "found version")


@dataclass(frozen=True, slots=True)
class ImportResult:
    status: ImportStatus
    error: str | None = None
    torch_cxx11_abi: bool | None = None
    torch_flash_registry: bool | None = None  # None: torch did not import, or this is not its child
    torch_flash_impls: tuple[str, ...] = ()
    torch_flash_impl: str | None = None


def classify(result: dict | None, returncode: int, timed_out: bool, stderr: str = "",
             timeout: float = DEFAULT_TIMEOUT, modules: tuple[str, ...] = ()) -> tuple[ImportStatus, str | None]:
    """An import outcome as an `ImportStatus` and one line of detail."""
    if timed_out:
        return ImportStatus.TIMEOUT, f"import did not finish in {timeout:g} s"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return ImportStatus.CRASH, f"the importing process was killed by {name}"
    if result is None:
        tail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}, no result"]
        return ImportStatus.ERROR, tail[0]
    if result.get("ok"):
        return ImportStatus.OK, None
    kind, message = result.get("type", "Exception"), result.get("message", "")
    text, trace = f"{kind}: {message}", result.get("traceback", "")
    lowered = message.lower()
    # FA2's flash_attn/__init__.py runs before flash_attn.cute (docs/sources.md#fa2-breaks-the-fa4-import), so
    # whatever breaks it, FA4 is only its victim.
    if "flash_attn.cute" in modules and f"flash_attn{os.sep}__init__.py" in trace:
        return ImportStatus.BLOCKED, f"flash-attn (FA2) breaks the import of flash_attn.cute: {text}"
    if "undefined symbol" in lowered:
        return ImportStatus.ABI_MISMATCH, text
    if any(phrase in lowered for phrase in _DRIVER_TOO_OLD) and "driver" in lowered:
        return ImportStatus.DRIVER_TOO_OLD, text
    missing = result.get("missing")
    if kind == "ModuleNotFoundError" and missing and not any(m == missing or m.startswith(missing + ".")
                                                             for m in modules):
        return ImportStatus.MISSING_DEPENDENCY, f"missing module {missing!r} ({text})"
    return ImportStatus.ERROR, text


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "ok" in value:
            return value
    return None


def run_imports(backends: tuple[BackendName, ...], *, modules: Mapping[BackendName, tuple[str, ...]] = MODULES,
                timeout: float = DEFAULT_TIMEOUT, python: str = sys.executable,
                environ: Mapping[str, str] | None = None) -> dict[BackendName, ImportResult]:
    """Import each backend's modules in a fresh interpreter, all at once; never raises for a failure."""
    env = dict(os.environ if environ is None else environ)
    started, children = time.monotonic(), {}
    for backend in backends:
        children[backend] = subprocess.Popen([python, "-c", _CHILD, *modules[backend]], env=env,
                                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    results = {}
    for backend, child in children.items():
        left = max(0.0, timeout - (time.monotonic() - started))
        try:
            stdout, stderr = child.communicate(timeout=left)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child's own session: nothing of ours
            stdout, stderr = child.communicate()
            timed_out = True
        result = _last_json(stdout or "")
        status, error = classify(result, child.returncode, timed_out, stderr or "", timeout, modules[backend])
        found = result or {}
        results[backend] = ImportResult(status, error, found.get("torch_cxx11_abi"),
                                        found.get("torch_flash_registry"), tuple(found.get("torch_flash_impls", ())),
                                        found.get("torch_flash_impl"))
    return results


def fingerprint(software_key: object, environ: Mapping[str, str], extra: object = None) -> str:
    """What an import outcome depends on: the installed files, the interpreter, the loader's
    search paths, and `extra` (the driver version: it decides `driver_too_old`)."""
    return digest({"software": software_key, "python": sys.executable, "version": sys.version,
                         "env": {k: environ.get(k) for k in ("PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD",
                                                             "CUDA_VISIBLE_DEVICES", "CUDA_HOME")},
                         "extra": extra, "format": CACHE_FORMAT})


# One file per fingerprint (`imports-<key>.json`), so two environments sharing a home (a venv and
# the system Python, a daemon and a user) do not evict each other's results.
def read_cache(cache_dir: Path, key: str) -> dict[BackendName, ImportResult] | None:
    found = cache.read_json(cache_dir, "imports", key)
    try:
        return {BackendName(name): from_plain(ImportResult, r) for name, r in found.items()}
    except (ValueError, AttributeError):  # RecordError is a ValueError
        return None  # a missing or foreign cache is simply a miss


def write_cache(cache_dir: Path, key: str, results: dict[BackendName, ImportResult]) -> None:
    cache.write_json(cache_dir, "imports", key, to_plain(results))


def check_imports(backends: tuple[BackendName, ...], key: str, *, cache_dir: Path | None = None,
                  refresh: bool = False, **run_options) -> tuple[dict[BackendName, ImportResult], bool]:
    """Cached `run_imports`: returns the results and whether they came from the cache."""
    cache_dir = cache.default_cache_dir(run_options.get("environ")) if cache_dir is None else cache_dir
    cached = None if refresh else read_cache(cache_dir, key)
    if cached is not None and set(backends) <= set(cached):
        return {b: cached[b] for b in backends}, True
    results = run_imports(backends, **run_options)
    write_cache(cache_dir, key, results)
    return results, False
