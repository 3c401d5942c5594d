"""Import the installed backends in one child process, with a timeout.

Never in the parent: an undefined symbol, a CUDA initialisation or a segfault must not take down
the caller (docs/check.md). One child imports torch (SDPA) first and then each other backend,
reporting each as it finishes: every backend's import starts with torch's, so one child for all
imports torch once instead of once per backend (issue 14: the cold `check`). A child that crashes
or hangs costs only the import it was in: the backends it had not reached are imported again one
child each, in parallel (the old way), so a segfault or a hang never hides another backend's result;
only then can `check` take up to twice `timeout`. Failures are classified (docs/sources.md: #fa2-built-for-another-torch,
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

# Runs in the child: for each [backend, [modules]] of the JSON plan in argv[1], a line saying it
# begins, the imports, then a line with its result (torch's facts as the process has them then:
# SDPA goes first, so its are a fresh process's). Lines start with MARK, after a newline, so
# whatever an imported module prints never joins them.
MARK = "@fa4doctor-import "
_CHILD = r"""
import importlib, json, sys, traceback
def say(*fields):
    sys.stdout.write("\n@fa4doctor-import " + json.dumps(fields) + "\n")
    sys.stdout.flush()
for backend, modules in json.loads(sys.argv[1]):
    say(backend)
    out = {"ok": True}
    try:
        for name in modules:
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
        try:  # torch >= 2.12's flash registry (torch/nn/attention/_registry.py)
            import torch.nn.attention as attention
            current = getattr(attention, "current_flash_attention_impl", None)
            out["torch_flash_registry"] = current is not None
            if current is not None:
                out["torch_flash_impls"] = list(attention.list_flash_attention_impls())
                out["torch_flash_impl"] = current()
        except Exception:
            pass
    say(backend, out)
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


def _reports(stdout: str) -> tuple[dict[str, dict], str | None]:
    """The child's results by backend, and the backend it had begun and not finished, if any."""
    results, begun = {}, None
    for line in stdout.splitlines():
        if not line.startswith(MARK):
            continue
        try:
            fields = json.loads(line[len(MARK):])
        except ValueError:
            continue
        if isinstance(fields, list) and len(fields) == 1:
            begun = fields[0]
        elif isinstance(fields, list) and len(fields) == 2 and isinstance(fields[1], dict) and "ok" in fields[1]:
            results[fields[0]] = fields[1]
            begun = None
    return results, begun


def _result(found: dict | None, returncode: int, timed_out: bool, stderr: str, timeout: float,
            modules: tuple[str, ...]) -> ImportResult:
    status, error = classify(found, returncode, timed_out, stderr, timeout, modules)
    found = found or {}
    return ImportResult(status, error, found.get("torch_cxx11_abi"), found.get("torch_flash_registry"),
                        tuple(found.get("torch_flash_impls", ())), found.get("torch_flash_impl"))


def _start(plan: list[BackendName], modules: Mapping[BackendName, tuple[str, ...]], python: str,
           env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([python, "-c", _CHILD, json.dumps([[b.value, list(modules[b])] for b in plan])],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(child: subprocess.Popen, timeout: float) -> tuple[str, str, bool]:
    """stdout, stderr and whether it was killed at `timeout` (with its whole session)."""
    try:
        stdout, stderr = child.communicate(timeout=max(0.0, timeout))
        return stdout or "", stderr or "", False
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child's own session: nothing of ours
        stdout, stderr = child.communicate()
        return stdout or "", stderr or "", True


def run_imports(backends: tuple[BackendName, ...], *, modules: Mapping[BackendName, tuple[str, ...]] = MODULES,
                timeout: float = DEFAULT_TIMEOUT, python: str = sys.executable,
                environ: Mapping[str, str] | None = None) -> dict[BackendName, ImportResult]:
    """Import every backend's modules in one fresh interpreter, SDPA (torch) first; the backends a
    crash or a hang kept it from reaching, one child each. Never raises for a failure."""
    env = dict(os.environ if environ is None else environ)
    plan = sorted(backends, key=lambda b: b is not BackendName.SDPA)
    results: dict[BackendName, ImportResult] = {}
    if len(plan) > 1:
        child = _start(plan, modules, python, env)
        stdout, stderr, timed_out = _finish(child, timeout)
        reports, begun = _reports(stdout)
        for backend in plan:
            if backend.value in reports:
                results[backend] = _result(reports[backend.value], 0, False, "", timeout, modules[backend])
            elif backend.value == begun:  # the import it died or hung in: what its own child would say
                results[backend] = _result(None, child.returncode, timed_out, stderr, timeout, modules[backend])
        plan = [b for b in plan if b not in results]
    return results | _each(plan, modules, timeout, python, env)


def _each(backends: list[BackendName], modules: Mapping[BackendName, tuple[str, ...]], timeout: float,
          python: str, env: dict[str, str]) -> dict[BackendName, ImportResult]:
    """One child per backend, all at once, under one deadline."""
    started = time.monotonic()
    children = {backend: _start([backend], modules, python, env) for backend in backends}
    results = {}
    for backend, child in children.items():
        stdout, stderr, timed_out = _finish(child, timeout - (time.monotonic() - started))
        found = _reports(stdout)[0].get(backend.value)
        results[backend] = _result(found, child.returncode, timed_out, stderr, timeout, modules[backend])
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
